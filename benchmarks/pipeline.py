"""End-to-end pipeline latency: 4-image studies arrive every 2 s for 2 minutes; how long until the
PACS (a real Orthanc) holds each study's SC series and SR?

Latency = first instance received by sonopacs (Study.first_received_at) -> the last of the study's
result objects seen in Orthanc (polled through its /changes feed every 0.2 s). Reported with and
without the stability wait (study.stable_seconds), plus per-stage times and queue waits from the
Job table. Runs `sonopacs serve` (listener + worker + stability monitor) as a child process.

    python benchmarks/pipeline.py [--duration 120] [--interval 2] [--images 4] [--device auto]
                                  [--stable-seconds 10] [--out FILE.json]
                                  [--inference-concurrency N] [--light-concurrency N]

The worker pools default to config/default.yaml's `worker` section; the two options override it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import select  # noqa: E402

from sonopacs.config import Settings, load_settings  # noqa: E402
from sonopacs.db import Database, Job, Study  # noqa: E402
from sonopacs.dicom_node.scu import Peer, send_files  # noqa: E402
from tests.support.net import free_port  # noqa: E402
from tests.support.orthanc import Orthanc  # noqa: E402
from tests.support.sonopacs_proc import sonopacs_serve  # noqa: E402
from tests.support.us_realistic import write_realistic_study  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": round(percentile(values, 0.5), 3),
        "p95": round(percentile(values, 0.95), 3),
        "mean": round(statistics.fmean(values), 3) if values else float("nan"),
        "max": round(max(values), 3) if values else float("nan"),
    }


class ResultWatcher(threading.Thread):
    """Follows Orthanc's change feed; records when each study holds n SC + 1 SR of ours."""

    def __init__(self, pacs: Orthanc, n_images: int) -> None:
        super().__init__(daemon=True)
        self.pacs, self.n_images = pacs, n_images
        self.counts: dict[str, dict[str, int]] = {}
        self.complete: dict[str, datetime] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        since = 0
        while not self.stop.is_set():
            out = self.pacs.get(f"/changes?since={since}&limit=1000")
            now = datetime.now(UTC)
            for change in out["Changes"]:
                if change["ChangeType"] != "NewInstance":
                    continue
                tags = self.pacs.get(f"/instances/{change['ID']}/simplified-tags")
                if not str(tags.get("SeriesDescription", "")).startswith("sonopacs"):
                    continue
                study = tags["StudyInstanceUID"]
                counts = self.counts.setdefault(study, {"OT": 0, "SR": 0})
                counts[tags["Modality"]] = counts.get(tags["Modality"], 0) + 1
                if counts["OT"] >= self.n_images and counts["SR"] >= 1 and study not in self.complete:
                    self.complete[study] = now
            since = out["Last"]
            if out["Done"]:
                self.stop.wait(0.2)


def make_settings(
    work: Path, pacs: Orthanc, stable: float, device: str, worker: dict[str, int] | None = None
) -> Settings:
    return load_settings(
        storage={"root": work / "var" / "storage"},
        database={"url": f"sqlite:///{work / 'var' / 'sonopacs.db'}"},
        broker={"url": None},
        dicom={"port": free_port(), "host": "127.0.0.1"},
        export={
            "host": "127.0.0.1",
            "port": pacs.dicom_port,
            "ae_title": pacs.ae_title,
            "backoff_base_seconds": 2,
        },
        study={"stable_seconds": stable, "poll_seconds": 0.5},
        dashboard={"port": free_port()},
        model={"device": device},
        worker=worker or {},
    )


def stage_times(db: Database) -> dict[str, Any]:
    with db.session() as session:
        jobs = session.scalars(select(Job).where(Job.finished_at.is_not(None))).all()
    out: dict[str, Any] = {}
    for stage in ("pipeline", "clean", "analyze", "publish", "export"):
        rows = [j for j in jobs if j.stage == stage]
        if not rows:
            continue
        waits = [(j.started_at - j.queued_at).total_seconds() for j in rows if j.started_at and j.queued_at]
        out[stage] = {"run_s": summary([j.seconds or 0.0 for j in rows]), "queue_wait_s": summary(waits)}
        if stage == "analyze":
            inference = [float((j.detail or {}).get("inference_s", 0.0)) for j in rows]
            out[stage]["inference_s"] = summary(inference)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=120)
    parser.add_argument("--interval", type=float, default=2)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--stable-seconds", type=float, default=10)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--inference-concurrency", type=int)
    parser.add_argument("--light-concurrency", type=int)
    parser.add_argument("--drain-timeout", type=float, default=300)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="sonopacs-bench-"))
    n_studies = max(1, int(args.duration / args.interval))
    print(f"writing {n_studies} studies of {args.images} images under {work}", flush=True)
    studies = [
        write_realistic_study(work / "in" / f"s{i:03d}", n_images=args.images) for i in range(n_studies)
    ]
    pacs = Orthanc(workdir=work / "orthanc").start()
    try:
        pools = {
            "inference_concurrency": args.inference_concurrency,
            "light_concurrency": args.light_concurrency,
        }
        worker = {k: v for k, v in pools.items() if v is not None}
        settings = make_settings(work, pacs, args.stable_seconds, args.device, worker)
        watcher = ResultWatcher(pacs, args.images)
        watcher.start()
        peer = Peer("127.0.0.1", settings.dicom.port, settings.dicom.ae_title)
        with sonopacs_serve(settings, work / "serve"):
            time.sleep(3)  # let the worker finish booting (model load happens on the first study)
            load_start = os.getloadavg()  # the machine is shared: the figures depend on it
            t0 = time.monotonic()
            for i, files in enumerate(studies):
                delay = t0 + i * args.interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                report = send_files(files, peer, calling_ae="BENCH")
                if not report.ok:
                    print(f"study {i}: send failed {report.failed}", flush=True)
            deadline = time.monotonic() + args.drain_timeout
            while len(watcher.complete) < n_studies and time.monotonic() < deadline:
                time.sleep(0.5)
            watcher.stop.set()
            db = Database(settings.database_url)
            with db.session() as session:
                first = {s.study_instance_uid: s.first_received_at for s in session.scalars(select(Study))}
            stages = stage_times(db)
    finally:
        pacs.stop()

    latencies = []
    for uid, done in watcher.complete.items():
        start = first.get(uid)
        if start is not None:
            start = start if start.tzinfo else start.replace(tzinfo=UTC)
            latencies.append((done - start).total_seconds())
    result = {
        "config": {
            "studies": n_studies,
            "images_per_study": args.images,
            "interval_s": args.interval,
            "stable_seconds": args.stable_seconds,
            "device": args.device,
            "worker": settings.worker.model_dump(),
            "load_average_at_start": [round(v, 2) for v in load_start],
            "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        },
        "completed": len(latencies),
        "latency_s": summary(latencies),
        "latency_minus_stability_wait_s": summary([v - args.stable_seconds for v in latencies]),
        "stages": stages,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if len(latencies) == n_studies else 1


if __name__ == "__main__":
    sys.exit(main())
