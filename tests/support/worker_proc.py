"""Helpers for worker/export/serve tests: a config file for subprocesses, a real `sonopacs worker`,
and study rows as the listener would leave them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from pydantic import SecretStr
from pydicom.uid import generate_uid

from sonopacs.config import Settings
from sonopacs.db import Database, ResultObject, Study, StudyState
from sonopacs.db.models import utcnow

REPO = Path(__file__).resolve().parents[2]


def _plain(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def write_config(settings: Settings, path: Path) -> Path:
    """The effective settings as a YAML file (secrets in clear) for `sonopacs --config`."""
    data = {name: _plain(dict(getattr(settings, name))) for name in type(settings).model_fields}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def clean_env() -> dict[str, str]:
    """The environment without SONOPACS_* overrides, so the config file alone decides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SONOPACS_")}
    env["PYTHONPATH"] = str(REPO)
    return env


def start_sonopacs(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """`python -m sonopacs.cli ARGS` (clean env, output to `log`), left running for the caller."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "sonopacs.cli", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=clean_env(),
            cwd=REPO,
        )


def stop_with_sigterm(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM, then the exit code; a process still running after `timeout` is killed and the
    timeout raised (a graceful stop that hangs is a failure, not something to wait out)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


@contextmanager
def sonopacs_process(args: list[str], log: Path, stop_timeout: float) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m sonopacs.cli ARGS` for the block (clean env, output to `log`); SIGTERM after, then kill."""
    proc = start_sonopacs(args, log)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with suppress(subprocess.TimeoutExpired):
                stop_with_sigterm(proc, stop_timeout)


def log_tail(path: Path, lines: int = 40) -> str:
    """The last lines of a subprocess's log, for a failure message (or a line saying there is none)."""
    if not path.exists():
        return f"({path.name} was never written)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def study_jobs(db: Database, study_id: int) -> str:
    """The study's state and its Job rows, one line each, for a failure message."""
    from sqlalchemy import select

    from sonopacs.db import Job

    with db.session() as session:
        study = session.get(Study, study_id)
        rows = [f"study: {study.state.value if study else '?'} ({study.state_reason if study else ''})"]
        for job in session.execute(select(Job).where(Job.study_id == study_id).order_by(Job.id)).scalars():
            rows.append(f"job {job.id}: {job.stage} {job.state.value} attempt {job.attempt} "
                        f"queued {job.queued_at:%H:%M:%S} started {job.started_at} error {job.error}")
    return "\n".join(rows)


def children_of(pid: int) -> list[int]:
    """Direct children of a process, from /proc (the prefork pool processes of a worker)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry))
    return out


@contextmanager
def worker_process(config: Path, log: Path, concurrency: int = 2) -> Iterator[subprocess.Popen[bytes]]:
    """A real `sonopacs worker` (prefork) for the duration of the block; warm-stopped after."""
    args = ["--config", str(config), "worker", "--concurrency", str(concurrency)]
    with sonopacs_process(args, log, stop_timeout=30) as proc:
        yield proc


def add_study(
    db: Database,
    *,
    uid: str | None = None,
    state: StudyState = StudyState.RECEIVING,
    generation: int = 1,
    quiet_for: float = 60,
) -> tuple[int, str]:
    """A study row as the listener leaves it after its last instance `quiet_for` seconds ago."""
    uid = uid or generate_uid()
    with db.session() as session:
        study = Study(
            study_instance_uid=uid,
            patient_id="TEST-0001",
            state=state,
            generation=generation,
            enqueued_generation=0,
            last_received_at=utcnow() - timedelta(seconds=quiet_for),
        )
        session.add(study)
        session.flush()
        return int(study.id), uid


def reopen(db: Database, study_id: int, at: datetime | None = None) -> None:
    """What the listener does when an instance arrives for a study: receiving, generation + 1."""
    with db.session() as session:
        study = session.get(Study, study_id)
        assert study is not None
        study.state = StudyState.RECEIVING
        study.generation += 1
        study.last_received_at = at or utcnow()


def add_results(db: Database, study_id: int, paths: list[Path]) -> list[int]:
    """Register DICOM files as the study's result objects (the pipeline lands separately)."""
    from pydicom import dcmread

    ids = []
    with db.session() as session:
        for path in paths:
            ds = dcmread(path, stop_before_pixels=True)
            row = ResultObject(
                study_id=study_id,
                generation=1,
                kind="sc",
                sop_class_uid=str(ds.SOPClassUID),
                sop_instance_uid=str(ds.SOPInstanceUID),
                series_instance_uid=str(ds.SeriesInstanceUID),
                path=str(path),
            )
            session.add(row)
            session.flush()
            ids.append(int(row.id))
    return ids


def add_instance(db: Database, study_id: int, path: Path) -> int:
    """An instance row as the listener records it (the file at `path` may be missing on purpose)."""
    from sonopacs.db import Instance, Series

    with db.session() as session:
        series = Series(study_id=study_id, series_instance_uid=generate_uid(), modality="US", series_number=1)
        session.add(series)
        session.flush()
        inst = Instance(
            series_id=series.id,
            study_id=study_id,
            sop_instance_uid=generate_uid(),
            sop_class_uid="1.2.840.10008.5.1.4.1.1.6.1",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            instance_number=1,
            path=str(path),
            size_bytes=0,
            sha256="0" * 64,
        )
        session.add(inst)
        session.flush()
        return int(inst.id)
