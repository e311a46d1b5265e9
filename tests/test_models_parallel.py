"""``sonopacs.training.parallel --minutes``: the schedule is fitted to a time budget from a timed real epoch."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sonopacs.training import parallel
from tests.test_models_training import make_synthetic_index, write_smoke_config


def test_budget_arithmetic_counts_rounds_start_up_and_the_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    epoch = {"final": 0.5, "cv0": 0.4, "cv1": 0.3}  # minutes per epoch, as the probe measures them
    wall = {"final": 1.5, "cv0": 0.6, "cv1": 0.5}  # whole probe process: start-up + 1 epoch + predictions
    seen: dict[str, object] = {}

    def fake_run(config: str, names: list[str], out: Path, device: str, procs: int, sets: list[str]
                 ) -> dict[str, tuple[int, float]]:
        seen.update(sets=sets, procs=procs)
        for n in names:
            (out / "jobs" / n).mkdir(parents=True)
            (out / "jobs" / n / "info.json").write_text(json.dumps({"minutes": epoch[n]}))
        return {n: (0, wall[n]) for n in names}

    monkeypatch.setattr(parallel, "run_parallel", fake_run)
    b = parallel.epochs_for_budget("c.yaml", ["cv0", "cv1", "final"], tmp_path, "cpu", 2, ["x=1"], 20.0)
    assert seen == {"sets": ["x=1", "train.epochs=1", "train.min_epochs=0"], "procs": 2}
    # rounds: (final, cv0) then (cv1); overheads 1.0 and 0.2; an epoch of both rounds 0.5 + 0.3
    assert b.overhead_minutes == pytest.approx({"final": 1.0, "cv0": 0.2, "cv1": 0.2})
    left = 20.0 - b.probe_wall_minutes - 1.2
    assert b.epochs == int(left // 0.8) == 23
    assert b.max_minutes == pytest.approx(1.15 * left / 2)
    with_three = parallel.epochs_for_budget("c.yaml", ["cv0", "cv1", "final"], tmp_path / "b", "cpu", 3, [], 20.0)
    assert with_three.epochs == int((20.0 - with_three.probe_wall_minutes - 1.0) // 0.5) == 37


def test_failed_probe_is_an_error_not_a_guess(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel, "run_parallel", lambda *a: {"cv0": (1, 0.1)})
    with pytest.raises(RuntimeError, match="probe failed"):
        parallel.epochs_for_budget("c.yaml", ["cv0"], tmp_path, "cpu", 1, [], 5.0)


def test_budgeted_run_records_the_epochs_it_trained(tmp_path: Path) -> None:
    cfg = write_smoke_config(tmp_path, make_synthetic_index(tmp_path / "data"))
    out = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "sonopacs.training.parallel", "--config", str(cfg), "--out", str(out),
                    "--device", "cpu", "--procs", "2", "--minutes", "0.75", "--set", "train.patience=100"],
                   check=True, capture_output=True, timeout=600)
    budget = json.loads((out / "budget.json").read_text())
    assert sorted(budget["epoch_minutes"]) == ["cv0", "cv1", "final"]
    for job in budget["epoch_minutes"]:  # the probe trained exactly one epoch of every job
        assert len(list(csv.DictReader((out / "probe" / "jobs" / job / "log.csv").open()))) == 1
        rows = list(csv.DictReader((out / "jobs" / job / "log.csv").open()))
        info = json.loads((out / "jobs" / job / "info.json").read_text())
        assert len(rows) == budget["epochs"] or (info["stopped_by_clock"] and len(rows) < budget["epochs"])
    manifest = json.loads((out / "weights" / "model.json").read_text())
    assert f"train.epochs={budget['epochs']}" in manifest["overrides"]
