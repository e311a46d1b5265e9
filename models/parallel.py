"""Run a config's jobs as parallel processes on one accelerator, then finalize.

A 12M-parameter net at 256 px leaves most of a large GPU idle; several independent jobs (folds,
final, cross-dataset) in separate processes use it better. Each job is the very ``train_job`` that
``sonopacs train`` runs sequentially, with the same per-job seed, so results do not depend on the
launcher (up to non-deterministic GPU kernels).

    python -m models.parallel --config models/configs/NAME.yaml --device cuda --procs 4 [--out DIR]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

from models.finalize import finalize
from models.training import load_config, load_data, make_jobs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--out")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--jobs", help="subset of job names, comma-separated")
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
    # longest jobs first: final and cv folds train on the most data
    queue = sorted(names, key=lambda n: (not n.startswith("final"), n))
    running: list[tuple[str, subprocess.Popen[bytes], float]] = []
    (out / "logs").mkdir(exist_ok=True)
    while queue or running:
        while queue and len(running) < a.procs:
            n = queue.pop(0)
            logf = (out / "logs" / f"{n}.log").open("w")
            cmd = [sys.executable, "-m", "models.training", "--config", a.config, "--out", str(out),
                   "--device", a.device, "--jobs", n, *[f"--set={x}" for x in a.set]]
            running.append((n, subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT), time.time()))
        time.sleep(2)
        for item in list(running):
            n, p, t0 = item
            if p.poll() is not None:
                logging.info("job %s finished rc=%s in %.0f s", n, p.returncode, time.time() - t0)
                running.remove(item)
    finalize(cfg, out)


if __name__ == "__main__":
    main()
