"""Run a config's jobs as parallel processes on one accelerator, then finalize.

A 12M-parameter net at 256 px leaves most of a large GPU idle; several independent jobs (folds,
final, cross-dataset) in separate processes use it better. Each job is the very ``train_job`` that
``sonopacs train`` runs sequentially, with the same per-job seed, so results do not depend on the
launcher (up to non-deterministic GPU kernels).

``--minutes M`` fits the schedule to a lent machine's time: every job first trains one epoch, with
the same concurrency, and ``train.epochs`` becomes the number of such epochs that fit in M minutes
(recorded in ``budget.json`` and as an override in the manifest, so the run can be repeated with
``--set train.epochs=N``). A wall-clock guard (``train.max_minutes``) stops a job that still
overruns; its ``info.json`` then says ``stopped_by_clock``.

    python -m models.parallel --config models/configs/NAME.yaml --device cuda --procs 4 [--out DIR]
        [--minutes M]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

from models.finalize import finalize
from models.training import load_config, load_data, make_jobs

log = logging.getLogger(__name__)


def run_parallel(config: str, names: list[str], out: Path, device: str, procs: int,
                 sets: list[str]) -> dict[str, int]:
    """Train ``names`` as up to ``procs`` concurrent ``models.training`` processes; exit codes by job."""
    # longest jobs first: final and cv folds train on the most data
    queue = sorted(names, key=lambda n: (not n.startswith("final"), n))
    running: list[tuple[str, subprocess.Popen[bytes], float]] = []
    codes: dict[str, int] = {}
    (out / "logs").mkdir(parents=True, exist_ok=True)
    while queue or running:
        while queue and len(running) < procs:
            n = queue.pop(0)
            logf = (out / "logs" / f"{n}.log").open("w")
            cmd = [sys.executable, "-m", "models.training", "--config", config, "--out", str(out),
                   "--device", device, "--jobs", n, *[f"--set={x}" for x in sets]]
            running.append((n, subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT), time.time()))
        time.sleep(2)
        for item in list(running):
            n, p, t0 = item
            if p.poll() is not None:
                log.info("job %s finished rc=%s in %.0f s", n, p.returncode, time.time() - t0)
                codes[n] = int(p.returncode)
                running.remove(item)
    return codes


def epochs_for_budget(config: str, names: list[str], out: Path, device: str, procs: int,
                      sets: list[str], minutes: float) -> tuple[int, dict[str, float]]:
    """How many epochs of every job fit in ``minutes``, timed by one real epoch of each job."""
    probe = out / "probe"
    codes = run_parallel(config, names, probe, device, procs,
                         [*sets, "train.epochs=1", "train.min_epochs=0"])
    if any(codes.values()):
        raise RuntimeError(f"budget probe failed: {codes}; logs in {probe / 'logs'}")
    per_job = {n: json.loads((probe / "jobs" / n / "info.json").read_text())["minutes"] for n in names}
    order = sorted(names, key=lambda n: (not n.startswith("final"), n))
    # jobs run in rounds of `procs`; each round lasts as long as its slowest job
    per_epoch = sum(max(per_job[n] for n in order[i : i + procs]) for i in range(0, len(order), procs))
    return max(1, math.floor(minutes / per_epoch)), per_job


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--out")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--jobs", help="subset of job names, comma-separated")
    ap.add_argument("--minutes", type=float, help="fit train.epochs to this much training time")
    ap.add_argument("--set", action="append", default=[], help="override, e.g. train.epochs=3")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(Path(a.config), a.set)
    out = Path(a.out or cfg.get("out_dir") or "runs/" + Path(a.config).stem)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(a.config, out / "config.yaml")
    names = list(make_jobs(load_data(cfg), cfg))
    if a.jobs:
        names = [n for n in names if n in a.jobs.split(",")]
    sets = list(a.set)
    if a.minutes:
        t0 = time.time()
        epochs, per_job = epochs_for_budget(a.config, names, out, a.device, a.procs, sets, a.minutes)
        # the guard lets a job overrun the estimate by a quarter before it is stopped
        sets += [f"train.epochs={epochs}", f"train.max_minutes={1.25 * a.minutes:.2f}"]
        (out / "budget.json").write_text(json.dumps(
            {"minutes": a.minutes, "procs": a.procs, "probe_epoch_minutes": per_job, "epochs": epochs,
             "probe_wall_minutes": (time.time() - t0) / 60, "overrides": sets}, indent=2))
        log.info("budget %.1f min: %d epochs (probe: %s)", a.minutes, epochs, per_job)
        cfg = load_config(Path(a.config), sets)
    run_parallel(a.config, names, out, a.device, a.procs, sets)
    finalize(cfg, out)


if __name__ == "__main__":
    main()
