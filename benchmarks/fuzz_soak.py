"""Fuzz soak, on demand: the test suite's malformed-data-set generator for many more cases and seeds.

    python -m benchmarks.fuzz_soak --cases 5000 --seeds 1,2,3 [--keep DIR]     # from the repository root

Runs a real listener on SQLite in a temporary folder, C-STOREs every case, and prints the outcome
counts per status, refusals at negotiation, audit rows, and every acknowledged instance the worker's
pixel reader cannot decode (the figure that must stay 0). Exit status 1 when that figure is not 0 or
the listener stopped answering.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

import pydicom
from sqlalchemy import select

from sonopacs.config import load_settings
from sonopacs.db.models import Instance
from sonopacs.db.session import Database
from sonopacs.dicom_node.eligibility import skip_reason
from sonopacs.dicom_node.pixels import read_frames
from tests.support.fuzz import fuzz_cases
from tests.support.listener import audit_rows, raw_c_store, running_listener


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=2000, help="cases per seed")
    ap.add_argument("--seeds", default="1", help="comma-separated seeds")
    ap.add_argument("--keep", type=Path, help="keep the cases and the storage here")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="sonopacs-fuzz-"))
    settings = load_settings(
        storage={"root": work / "var" / "storage"},
        database={"url": f"sqlite:///{work / 'var' / 'sonopacs.db'}"},
        dicom={"port": 0},
    )
    counts: collections.Counter[str] = collections.Counter()
    t0 = time.perf_counter()
    with running_listener(settings) as listener:
        for seed in (int(s) for s in args.seeds.split(",")):
            for case in fuzz_cases(work / f"seed{seed}", seed, args.cases):
                try:
                    result = raw_c_store(listener.port, case.path)
                    counts["no response" if result.status is None else f"0x{result.status:04X}"] += 1
                except (ConnectionError, ValueError, RuntimeError):
                    counts["refused at negotiation"] += 1
        alive = raw_c_store(listener.port, case.source).status == 0
    seconds = time.perf_counter() - t0
    db = Database(settings.database_url)
    with db.session() as session:
        paths = list(session.scalars(select(Instance.path)))
    undecodable = 0
    for path in paths:
        ds = pydicom.dcmread(path)
        if skip_reason(ds, settings.pipeline.uid_root) is None:
            try:
                read_frames(ds, settings.pipeline.max_frames)
            except Exception as exc:  # noqa: BLE001 - counted and named
                undecodable += 1
                print(f"UNDECODABLE {Path(path).name}: {type(exc).__name__}: {exc}")
    print(f"{sum(counts.values())} cases in {seconds:.0f} s; outcomes: {dict(sorted(counts.items()))}")
    print(f"audit rows instance_refused: {len(audit_rows(settings, 'instance_refused'))}; stored: {len(paths)}")
    print(f"acknowledged but undecodable: {undecodable}; listener alive at the end: {alive}")
    return 0 if alive and undecodable == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
