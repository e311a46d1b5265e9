"""Run a config's jobs as parallel processes on one accelerator, then finalize.

A 12M-parameter net at 256 px leaves most of a large GPU idle; several independent jobs (folds,
final, cross-dataset) in separate processes use it better. Each job is the very ``train_job`` that
``sonopacs train`` runs sequentially, with the same per-job seed, so results do not depend on the
launcher (up to non-deterministic GPU kernels).

``--minutes M`` fits the schedule to a lent machine's time: every job first trains one epoch, with
the same concurrency, and ``train.epochs`` becomes the number of such epochs that fit in what is
left of M minutes, each job's start-up and test predictions counted (recorded in ``budget.json``
and as an override in the manifest, so the run can be repeated with ``--set train.epochs=N``). A
wall-clock guard (``train.max_minutes``) stops a job that still overruns; its ``info.json`` then
says ``stopped_by_clock``. A failed job stops the run before ``finalize``.

    python -m sonopacs.training.parallel --config models/configs/NAME.yaml --device cuda --procs 4 [--out DIR]
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
from dataclasses import asdict, dataclass
from pathlib import Path

from sonopacs.training.finalize import finalize
from sonopacs.training.train import load_config, load_data, make_jobs

log = logging.getLogger(__name__)


def run_parallel(config: str, names: list[str], out: Path, device: str, procs: int,
                 sets: list[str]) -> dict[str, tuple[int, float]]:
    """Train ``names`` as up to ``procs`` concurrent ``sonopacs.training.train`` processes.

    Returns each job's exit code and wall-clock minutes (process start to exit)."""
    queue = job_order(names)
    running: list[tuple[str, subprocess.Popen[bytes], float]] = []
    done: dict[str, tuple[int, float]] = {}
    (out / "logs").mkdir(parents=True, exist_ok=True)
    while queue or running:
        while queue and len(running) < procs:
            n = queue.pop(0)
            logf = (out / "logs" / f"{n}.log").open("w")
            cmd = [sys.executable, "-m", "sonopacs.training.train", "--config", config, "--out", str(out),
                   "--device", device, "--jobs", n, *[f"--set={x}" for x in sets]]
            running.append((n, subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT), time.time()))
        time.sleep(2)
        for item in list(running):
            n, p, t0 = item
            if p.poll() is not None:
                log.info("job %s finished rc=%s in %.0f s", n, p.returncode, time.time() - t0)
                done[n] = (int(p.returncode), (time.time() - t0) / 60)
                running.remove(item)
    return done


def job_order(names: list[str]) -> list[str]:
    """Longest jobs first: final and the cv folds train on the most data."""
    return sorted(names, key=lambda n: (not n.startswith("final"), n))


@dataclass
class Budget:
    """The schedule a time budget allows, and the probe figures it was derived from."""

    minutes: float
    epochs: int
    max_minutes: float  # each job's wall-clock guard (train.max_minutes)
    probe_wall_minutes: float
    epoch_minutes: dict[str, float]  # one epoch (training + inner validation), per job
    overhead_minutes: dict[str, float]  # the rest of a job's process: start, data, test predictions


def epochs_for_budget(config: str, names: list[str], out: Path, device: str, procs: int,
                      sets: list[str], minutes: float) -> Budget:
    """How many epochs of every job fit in what is left of ``minutes`` after a timed probe.

    The probe trains one real epoch of every job with the run's concurrency; jobs then run in
    rounds of ``procs``, each round as long as its slowest job (the launcher is greedy, so this
    errs short). The first epoch includes warm-up, which errs short too.
    """
    t0 = time.time()
    probe = out / "probe"
    done = run_parallel(config, names, probe, device, procs, [*sets, "train.epochs=1", "train.min_epochs=0"])
    failed = {n: rc for n, (rc, _) in done.items() if rc}
    if failed:
        raise RuntimeError(f"budget probe failed: {failed}; logs in {probe / 'logs'}")
    probe_wall = (time.time() - t0) / 60
    per_epoch = {n: float(json.loads((probe / "jobs" / n / "info.json").read_text())["minutes"]) for n in names}
    overhead = {n: max(0.0, done[n][1] - per_epoch[n]) for n in names}
    order = job_order(names)
    rounds = [order[i : i + procs] for i in range(0, len(order), procs)]
    left = minutes - probe_wall - sum(max(overhead[n] for n in r) for r in rounds)
    epoch_sum = sum(max(per_epoch[n] for n in r) for r in rounds)
    epochs = max(1, math.floor(left / epoch_sum))
    # a job may overrun its round's share of the estimate by 15 % before the guard stops it
    guard = 1.15 * max(epochs * epoch_sum, left) / len(rounds)
    return Budget(minutes, epochs, guard, probe_wall, per_epoch, overhead)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--out")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--jobs", help="subset of job names, comma-separated")
    ap.add_argument("--minutes", type=float, help="fit train.epochs so the probe and the training take this long")
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
        b = epochs_for_budget(a.config, names, out, a.device, a.procs, sets, a.minutes)
        sets += [f"train.epochs={b.epochs}", f"train.max_minutes={b.max_minutes:.2f}"]
        (out / "budget.json").write_text(json.dumps({**asdict(b), "procs": a.procs, "overrides": sets}, indent=2))
        log.info("budget %.1f min: %d epochs, guard %.1f min (probe %.1f min)", a.minutes, b.epochs,
                 b.max_minutes, b.probe_wall_minutes)
        cfg = load_config(Path(a.config), sets)
    failed = {n: rc for n, (rc, _) in run_parallel(a.config, names, out, a.device, a.procs, sets).items() if rc}
    if failed:  # finalizing over the folds that did finish would report a different model
        log.error("jobs failed: %s; logs in %s; not finalized", failed, out / "logs")
        sys.exit(1)
    if a.jobs:  # a subset cannot make the weights folder; `train --finalize-only` once all jobs are done
        log.info("trained %s; not finalized (a subset of the jobs)", ",".join(names))
        return
    finalize(cfg, out)


if __name__ == "__main__":
    main()
