"""Is a task's process still alive? Job heartbeats, lost-run detection and the worker-death count.

A running task writes `Job.heartbeat_at` every `recovery.heartbeat_seconds` from a thread beside
its body, and its row names the process (`pid@host#pid-namespace`). When a message is delivered again with the
same task id (a pool process killed by a crash or the OOM killer, a Redis visibility timeout), the
earlier running row is either

* lost: its process is gone on this host, or its heartbeat stopped on another host; the row is
  closed as lost and counts as one worker death for this stage and generation, or
* alive: another process still runs this very message (Redis handed it out twice); this copy
  stops without touching anything.

The number of deaths for (study, stage, generation) is how poison inputs end. A stage tells which
instance it is working on (`working_on`, written on its Job before the instance is touched), so a
death is charged to that instance: one that was in progress at `recovery.max_worker_deaths` deaths
is failed on its own ("worker died N times while processing this instance") and the stage goes on
with the rest of the study. Deaths charged to no instance fail the study instead. Either way the
message is not redelivered forever.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from sonopacs.config import Settings
from sonopacs.db import Database, Job, JobState
from sonopacs.db.models import utcnow

log = logging.getLogger(__name__)

LOST = "worker lost while running"
# A heartbeat older than this many intervals means the process on another host is gone.
STALE_INTERVALS = 3


def _machine() -> str:
    """This host and PID namespace: containers sharing a host name still tell their processes apart."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = "?"
    return f"{socket.gethostname()}#{namespace}"


def identity() -> str:
    """This process as `pid@host#pid-namespace`, written on the Job it runs."""
    return f"{os.getpid()}@{_machine()}"


def process_gone(worker: str | None) -> bool | None:
    """True/False for a process on this machine (a zombie counts as gone); None for another one."""
    if not worker or "@" not in worker:
        return None
    pid_text, machine = worker.split("@", 1)
    if machine != _machine() or not pid_text.isdigit():
        return None
    pid = int(pid_text)
    if pid == os.getpid():
        return True  # this very process is starting the message again: the earlier run is over
    try:
        stat = open(f"/proc/{pid}/stat").read()  # noqa: SIM115 - one short read
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")


def last_sign_of_life(job: Job) -> datetime | None:
    return job.heartbeat_at or job.started_at


def running_elsewhere(job: Job, settings: Settings, now: datetime) -> bool:
    """Whether the process named on a running Job still runs it."""
    gone = process_gone(job.worker)
    if gone is not None:
        return not gone
    seen = last_sign_of_life(job)
    stale = timedelta(seconds=settings.recovery.heartbeat_seconds * STALE_INTERVALS)
    return seen is not None and seen > now - stale


INSTANCE_KEY = "working_on_instance"
RETRIES_KEY = "celery_retries"


class PoisonInstance(RuntimeError):
    """Raised by `working_on` for an instance that killed its worker process too often."""


@dataclass(frozen=True)
class Delivery:
    """What start-up of a delivered message found: its Job (None when another process runs it),
    the worker deaths charged to no instance, and per instance id the deaths charged to it."""

    job_id: int | None
    deaths: int
    instance_deaths: dict[int, int] = field(default_factory=dict)


def begin(
    db: Database,
    settings: Settings,
    study_id: int,
    stage: str,
    generation: int,
    task_id: str | None,
    attempt: int = 1,
    retries: int = 0,
) -> Delivery:
    """Mark this delivery's Job running (closing lost earlier runs) and count worker deaths.

    `retries` is Celery's retry count of this message: a running row left by an earlier retry
    round of the same task id ended when it raised (database trouble in the bookkeeping), so it is
    closed as interrupted, neither a duplicate nor a worker death.
    """
    now = utcnow()
    me = identity()
    with db.session() as session:
        job = None
        if task_id:
            for earlier in session.scalars(
                select(Job).where(
                    Job.celery_task_id == task_id, Job.stage == stage, Job.state == JobState.RUNNING
                )
            ):
                if int((earlier.detail or {}).get(RETRIES_KEY, 0)) < retries:
                    earlier.state = JobState.FAILED
                    earlier.finished_at = now
                    earlier.error = earlier.error or "interrupted; the task was retried"
                    continue
                if running_elsewhere(earlier, settings, now):
                    log.warning("study %s %s: task %s already runs in %s; this copy stops",
                                study_id, stage, task_id, earlier.worker)
                    return Delivery(None, 0)
                close_lost(earlier, now, "the task was handed back and runs again")
            job = session.execute(
                select(Job)
                .where(Job.celery_task_id == task_id, Job.stage == stage, Job.state == JobState.QUEUED)
                .order_by(Job.id.desc())
                .limit(1)
            ).scalar_one_or_none()
        if job is None:
            job = Job(study_id=study_id, stage=stage, generation=generation, celery_task_id=task_id, queued_at=now)
            session.add(job)
        job.state = JobState.RUNNING
        job.attempt = attempt
        job.started_at = now
        job.heartbeat_at = now
        job.worker = me
        job.detail = {**(job.detail or {}), RETRIES_KEY: retries}
        session.flush()
        lost = session.scalars(
            select(Job.detail).where(
                Job.study_id == study_id,
                Job.stage == stage,
                Job.generation == generation,
                Job.state == JobState.FAILED,
                Job.error.like(f"{LOST}%"),
            )
        ).all()
        unattributed = 0
        per_instance: dict[int, int] = {}
        for detail in lost:
            instance = (detail or {}).get(INSTANCE_KEY)
            if isinstance(instance, int):
                per_instance[instance] = per_instance.get(instance, 0) + 1
            else:
                unattributed += 1
        return Delivery(int(job.id), unattributed, per_instance)


def close_lost(job: Job, now: datetime, why: str) -> None:
    """Close a running row whose process died (counted as a worker death)."""
    job.state = JobState.FAILED
    job.finished_at = now
    job.error = f"{LOST}: {why}"


@contextmanager
def heartbeat(db: Database, job_id: int, interval: float) -> Iterator[None]:
    """Stamp the Job's heartbeat every `interval` seconds while the block runs."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                with db.session() as session:
                    session.execute(
                        update(Job)
                        .where(Job.id == job_id, Job.state == JobState.RUNNING)
                        .values(heartbeat_at=utcnow())
                        .execution_options(synchronize_session=False)
                    )
            except Exception as exc:  # noqa: BLE001 - a missed beat is not the task's failure
                log.warning("heartbeat of job %s: %s", job_id, type(exc).__name__)

    thread = threading.Thread(target=beat, name=f"heartbeat-{job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=interval + 5)


_tracked: dict[str, Any] = {}


@contextmanager
def tracking(db: Database, job_id: int, poisoned: dict[int, int]) -> Iterator[None]:
    """While a stage body runs in this process: where `working_on` writes, and what it refuses."""
    _tracked.update(db=db, job_id=job_id, poisoned=dict(poisoned))
    try:
        yield
    finally:
        _tracked.clear()


def working_on(instance_id: int) -> None:
    """A stage is about to read/decode this instance: note it on the running Job (so a death is
    charged to it), or raise PoisonInstance when it already killed the worker too often.
    Outside a task (direct calls, `sonopacs analyze`) it does nothing."""
    if not _tracked:
        return
    deaths = _tracked["poisoned"].get(instance_id)
    if deaths:
        raise PoisonInstance(
            f"worker died {deaths} times while processing this instance (a crash or an out-of-memory kill)"
        )
    db: Database = _tracked["db"]
    with db.session() as session:
        job = session.get(Job, _tracked["job_id"])
        if job is not None:
            job.detail = {**(job.detail or {}), INSTANCE_KEY: instance_id}
