"""``models.parallel --minutes``: the schedule is fitted to a time budget from a timed real epoch."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

from tests.test_models_training import make_synthetic_index, write_smoke_config


def test_budget_probe_sets_and_records_the_epochs(tmp_path: Path) -> None:
    cfg = write_smoke_config(tmp_path, make_synthetic_index(tmp_path / "data"))
    out = tmp_path / "run"
    minutes = 0.08
    subprocess.run([sys.executable, "-m", "models.parallel", "--config", str(cfg), "--out", str(out),
                    "--device", "cpu", "--procs", "2", "--minutes", str(minutes), "--set", "train.patience=100"],
                   check=True, capture_output=True, timeout=600)
    budget = json.loads((out / "budget.json").read_text())
    per_job = budget["probe_epoch_minutes"]
    assert sorted(per_job) == ["cv0", "cv1", "final"]
    # final first, then cv0 beside it; cv1 alone in the second round
    per_epoch = max(per_job["final"], per_job["cv0"]) + per_job["cv1"]
    epochs = max(1, math.floor(minutes / per_epoch))
    assert budget["epochs"] == epochs
    for job in per_job:  # the probe trained exactly one epoch of every job
        assert len(list(csv.DictReader((out / "probe" / "jobs" / job / "log.csv").open()))) == 1
    for job in per_job:
        rows = list(csv.DictReader((out / "jobs" / job / "log.csv").open()))
        info = json.loads((out / "jobs" / job / "info.json").read_text())
        assert len(rows) == epochs or info["stopped_by_clock"]
    manifest = json.loads((out / "weights" / "model.json").read_text())
    assert f"train.epochs={epochs}" in manifest["overrides"]
