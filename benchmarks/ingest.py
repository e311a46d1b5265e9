"""Ingest benchmark: instances/s that sonopacs receives *and durably stores* vs DCMTK storescp.

The same N synthetic ultrasound images (640x480, 8-bit, ~300 KB, explicit VR little endian) are sent
with DCMTK storescu, in one association, to each receiver in turn; the wall time of storescu is the
measure (so both sides pay the same client start-up). sonopacs runs as `sonopacs listener` (its own
process, default settings: SQLite, fsync'ed files and commits before each Success). storescp writes
plain files and does not fsync, so the comparison is conservative for sonopacs.

    python benchmarks/ingest.py [--images 200] [--repeats 3] [--database-url URL]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.dicom_factory import write_us_study  # noqa: E402


def _bin(name: str) -> str:
    path = f"/usr/bin/{name}"  # pynetdicom installs Python apps named storescu/storescp on PATH too
    return path if Path(path).exists() else shutil.which(name) or name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port}")


@contextmanager
def _process(cmd: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> Iterator[None]:
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log:
            out.close()  # type: ignore[union-attr]


def _send(files: list[Path], port: int, called_ae: str) -> float:
    """Seconds for storescu to send every file in one association; fails loudly on any failure."""
    start = time.perf_counter()
    done = subprocess.run(
        [_bin("storescu"), "-aet", "BENCH", "-aec", called_ae, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0 or "E:" in done.stderr:
        raise RuntimeError(f"storescu failed ({done.returncode}): {done.stderr[-2000:]}")
    return elapsed


def run_storescp(files: list[Path], work: Path, nodelay: bool) -> float:
    """storescp as shipped by Debian leaves Nagle's algorithm on unless TCP_NODELAY=1 is set in its
    environment; then each response waits for a delayed ACK (~40 ms). Both are measured."""
    out = work / "storescp"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    port = _free_port()
    env = {**os.environ, "TCP_NODELAY": "1" if nodelay else "0"}
    with _process([_bin("storescp"), "-aet", "STORESCP", "-od", str(out), str(port)], env=env):
        _wait_for_port(port)
        seconds = _send(files, port, "STORESCP")
    stored = sum(1 for _ in out.iterdir())
    if stored != len(files):
        raise RuntimeError(f"storescp stored {stored} of {len(files)}")
    return seconds


_NULL_SCP = """
import sys
from pynetdicom import AE, evt
from sonopacs.dicom_node.sop_classes import STORAGE_SOP_CLASSES, STORAGE_TRANSFER_SYNTAXES
ae = AE("NULLSCP")
ae.maximum_pdu_size = 65536
for uid in STORAGE_SOP_CLASSES:
    ae.add_supported_context(uid, STORAGE_TRANSFER_SYNTAXES)
ae.start_server(("127.0.0.1", int(sys.argv[1])), evt_handlers=[(evt.EVT_C_STORE, lambda e: 0x0000)])
"""


def run_null_scp(files: list[Path], work: Path) -> float:
    """The ceiling for any pynetdicom SCP: same library and PDU size, answers Success, stores nothing."""
    port = _free_port()
    with _process([sys.executable, "-c", _NULL_SCP, str(port)]):
        _wait_for_port(port)
        return _send(files, port, "NULLSCP")


def run_sonopacs(files: list[Path], work: Path, database_url: str | None) -> float:
    var = work / "sonopacs"
    shutil.rmtree(var, ignore_errors=True)
    var.mkdir(parents=True)
    port = _free_port()
    url = database_url or f"sqlite:///{var / 'sonopacs.db'}"
    env = {
        **os.environ,
        "SONOPACS_DICOM__PORT": str(port),
        "SONOPACS_STORAGE__ROOT": str(var / "storage"),
        "SONOPACS_DATABASE__URL": url,
    }
    cmd = [sys.executable, "-c", "import sys; from sonopacs import cli; sys.exit(cli.main(['listener']))"]
    with _process(cmd, env=env, log=var / "listener.log"):
        _wait_for_port(port)
        seconds = _send(files, port, "SONOPACS")
    if database_url is None:
        with sqlite3.connect(var / "sonopacs.db") as conn:
            rows = conn.execute("SELECT count(*) FROM instance").fetchone()[0]
        if rows != len(files):
            raise RuntimeError(f"sonopacs recorded {rows} of {len(files)}")
    stored = sum(1 for _ in (var / "storage").rglob("*.dcm"))
    if stored != len(files):
        raise RuntimeError(f"sonopacs stored {stored} of {len(files)} files")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--database-url", help="sonopacs database (default: a fresh SQLite file)")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix="sonopacs-bench-"))
    files = write_us_study(work / "study", n_images=args.images, rows=480, cols=640)
    size_mb = sum(f.stat().st_size for f in files) / 1e6
    if args.database_url:
        print("note: with --database-url the database is reused between runs; use a fresh one per run")
    times: dict[str, list[float]] = {"storescp": [], "storescp-nd": [], "pynetdicom0": [], "sonopacs": []}
    for _ in range(args.repeats):  # interleaved, so drift in the machine's load hits all alike
        times["storescp"].append(run_storescp(files, work, nodelay=False))
        times["storescp-nd"].append(run_storescp(files, work, nodelay=True))
        times["pynetdicom0"].append(run_null_scp(files, work))
        times["sonopacs"].append(run_sonopacs(files, work, args.database_url))

    rate = {name: args.images / statistics.median(ts) for name, ts in times.items()}
    print(
        f"{args.images} US images, {size_mb:.1f} MB, storescu -> receiver on 127.0.0.1, {args.repeats} runs each"
    )
    print(
        f"{'receiver':<12} {'median s':>9} {'min s':>7} {'max s':>7} {'inst/s':>8} {'MB/s':>7}  sonopacs/this"
    )
    for name, ts in times.items():
        med = statistics.median(ts)
        ratio = rate["sonopacs"] / rate[name]
        print(
            f"{name:<12} {med:>9.2f} {min(ts):>7.2f} {max(ts):>7.2f} {rate[name]:>8.1f} {size_mb / med:>7.1f}"
            f"  {ratio:.2f}x"
        )
    print("storescp: Debian DCMTK defaults (Nagle on); storescp-nd: TCP_NODELAY=1 (its fastest)")
    print("pynetdicom0: a pynetdicom SCP that stores nothing (the ceiling for a pynetdicom-based listener)")
    print("sonopacs: file fsync + folder fsync + database commit before every Success; storescp: no fsync")
    best = {name: min(ts) for name, ts in times.items()}
    for baseline in ("storescp", "storescp-nd"):
        print(
            f"goal >= 0.80x vs {baseline}: median {rate['sonopacs'] / rate[baseline]:.2f}x, "
            f"best run {best[baseline] / best['sonopacs']:.2f}x"
        )
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
