"""Celery tasks: the per-study chain run_pipeline -> clean -> analyze -> publish -> export.

Every task records a Job row (queued -> running -> succeeded/failed) and guards on the study's
generation: a run whose study was reopened or reprocessed meanwhile stops quietly instead of
overwriting the newer state. A failing stage marks its Job and the study `failed` with the reason
and stops the chain (`Ignore`), so the worker keeps serving and nothing stays in `processing`.

Crash safety (`sonopacs.worker.liveness`): a running task stamps a heartbeat on its Job; a message
delivered again after its process died counts one worker death, and a stage whose process died
`recovery.max_worker_deaths` times fails the study ("worker died N times while processing")
instead of being redelivered forever. Transient trouble inside a stage (disk full, database
unavailable) is retried with exponential backoff, up to `recovery.transient_retries`, before the
study fails. Messages lost with a killed worker are found by the reconciler (`worker.reconciler`).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from typing import Any

from celery import Task, shared_task
from celery.exceptions import Ignore
from sqlalchemy import update
from sqlalchemy.exc import DBAPIError, OperationalError

from sonopacs.config import Settings
from sonopacs.db import Database, JobState, Study, StudyState
from sonopacs.worker import liveness, stages, state
from sonopacs.worker.context import app_settings, database_for

log = logging.getLogger(__name__)

ACTOR = "worker"
StageBody = Callable[[Settings, Database, int, int], None]

# Infrastructure hiccups (database restarting, SQLite lock timeout) in our own bookkeeping are
# retried by Celery; failures of the stage itself are recorded and end the run.
_RETRY = {"autoretry_for": (OperationalError,), "retry_backoff": 2, "retry_backoff_max": 60, "max_retries": 8}


# errno values of a full or quota-bound disk: the space comes back, the input is not to blame.
_TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def transient(exc: BaseException) -> bool:
    """Trouble of the machine, not of the study: retried with backoff instead of failing it."""
    if isinstance(exc, OperationalError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated):
        return True
    return isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS


def transient_countdown(settings: Settings, retries: int) -> float:
    """1, 2, 4 ... seconds, at most `recovery.transient_backoff_max_seconds`."""
    return float(min(settings.recovery.transient_backoff_max_seconds, 2.0**retries))


def _context(task: Task) -> tuple[Settings, Database]:
    settings = app_settings(task.app)
    return settings, database_for(settings)


def _next_task_id(task: Task) -> str | None:
    """The task id Celery already gave the next step of this chain (steps are stored reversed)."""
    chain = getattr(task.request, "chain", None) or []
    if not chain:
        return None
    options = chain[-1].get("options", {}) if isinstance(chain[-1], dict) else {}
    task_id = options.get("task_id")
    return str(task_id) if task_id else None


def _queue_next(task: Task, db: Database, study_id: int, generation: int, stage: str) -> None:
    state.queue_job(db, study_id, stage, generation, _next_task_id(task))


def _superseded(db: Database, study_id: int, generation: int, job_id: int) -> bool:
    """True (and the Job closed) when the study has moved to a newer generation or is gone."""
    current = state.study_generation(db, study_id)
    if current == generation:
        return False
    note = "study no longer exists" if current is None else f"superseded by generation {current}"
    state.finish_job(db, job_id, JobState.SUCCEEDED, detail={"skipped": note})
    log.info("study %s generation %s: %s; stopping this run", study_id, generation, note)
    return True


def begin(task: Task, stage: str, study_id: int, generation: int, attempt: int | None = None) -> int:
    """Start this delivery's Job; Ignore for a duplicate, a superseded run or a poison input.

    Deaths charged to single instances do not stop the stage: those instances fail on their own
    when the stage reaches them (`_poisoned`); deaths charged to no instance fail the study.
    """
    settings, db = _context(task)
    retries = int(task.request.retries or 0)
    delivery = liveness.begin(
        db, settings, study_id, stage, generation, task.request.id,
        attempt if attempt is not None else retries + 1, retries,
    )
    if delivery.job_id is None:
        raise Ignore()
    job_id = delivery.job_id
    if _superseded(db, study_id, generation, job_id):
        raise Ignore()
    if delivery.deaths >= settings.recovery.max_worker_deaths:
        reason = f"worker died {delivery.deaths} times while processing ({stage})"
        log.error("study %s generation %s: %s; not trying again", study_id, generation, reason)
        state.finish_job(db, job_id, JobState.FAILED, error=reason)
        failed = StudyState.EXPORT_FAILED if stage == "export" else StudyState.FAILED
        state.transition(
            db,
            study_id,
            failed,
            ACTOR,
            detail=reason,
            generation=generation,
            allowed_from=(
                StudyState.QUEUED,
                StudyState.PROCESSING,
                StudyState.RESULTS_READY,
                StudyState.EXPORTING,
            ),
        )
        raise Ignore()
    limit = settings.recovery.max_worker_deaths
    poisoned = {i: n for i, n in delivery.instance_deaths.items() if n >= limit}
    if poisoned:
        _poisoned[job_id] = poisoned
    return job_id


# Per running Job (this process): instances that killed the worker `max_worker_deaths` times.
_poisoned: dict[int, dict[int, int]] = {}


def _fail(db: Database, job_id: int, study_id: int, generation: int, stage: str, exc: BaseException) -> None:
    reason = state.describe(exc)
    log.error("study %s generation %s: %s failed: %s", study_id, generation, stage, reason, exc_info=exc)
    state.finish_job(db, job_id, JobState.FAILED, error=reason)
    state.transition(
        db,
        study_id,
        StudyState.FAILED,
        ACTOR,
        detail=f"{stage}: {reason}",
        generation=generation,
        allowed_from=(StudyState.QUEUED, StudyState.PROCESSING),
    )


@shared_task(bind=True, name="sonopacs.run_pipeline", **_RETRY)
def run_pipeline(self: Task, study_id: int, generation: int) -> None:
    """Entry of the chain: the study goes queued -> processing and its run is counted."""
    _, db = _context(self)
    job_id = begin(self, "pipeline", study_id, generation)
    moved = state.transition(
        db,
        study_id,
        StudyState.PROCESSING,
        ACTOR,
        detail=f"generation {generation}",
        generation=generation,
        allowed_from=(StudyState.QUEUED, StudyState.PROCESSING),
    )
    if not moved:
        state.finish_job(db, job_id, JobState.SUCCEEDED, detail={"skipped": "study not queued"})
        raise Ignore()
    with db.session() as session:
        session.execute(
            update(Study)
            .where(Study.id == study_id)
            .values(run_count=Study.run_count + 1)
            .execution_options(synchronize_session=False)
        )
    state.finish_job(db, job_id, JobState.SUCCEEDED)
    _queue_next(self, db, study_id, generation, "clean")


def _run_stage(
    task: Task, stage: str, body: StageBody, study_id: int, generation: int, next_stage: str | None
) -> None:
    settings, db = _context(task)
    job_id = begin(task, stage, study_id, generation)
    try:
        with (
            liveness.heartbeat(db, job_id, settings.recovery.heartbeat_seconds),
            liveness.tracking(db, job_id, _poisoned.pop(job_id, {})),
        ):
            body(settings, db, study_id, generation)
    except Exception as exc:  # noqa: BLE001 - any stage error ends this run, recorded with its reason
        retries = int(task.request.retries)
        if transient(exc) and retries < settings.recovery.transient_retries:
            countdown = transient_countdown(settings, retries)
            reason = state.describe(exc)
            log.warning("study %s generation %s: %s hit %s; retrying in %.0fs",
                        study_id, generation, stage, reason, countdown)
            state.finish_job(db, job_id, JobState.RETRYING, error=reason)
            raise task.retry(exc=exc, countdown=countdown, max_retries=None) from exc
        _fail(db, job_id, study_id, generation, stage, exc)
        raise Ignore() from exc
    state.finish_job(db, job_id, JobState.SUCCEEDED)
    if next_stage is None:
        return
    if stage == "publish":
        state.transition(
            db,
            study_id,
            StudyState.RESULTS_READY,
            ACTOR,
            generation=generation,
            allowed_from=(StudyState.PROCESSING,),
        )
    _queue_next(task, db, study_id, generation, next_stage)


@shared_task(bind=True, name="sonopacs.clean_study", **_RETRY)
def clean_study(self: Task, study_id: int, generation: int) -> None:
    """Crop to the ultrasound region and remove burned-in annotations (queue clean)."""
    _run_stage(self, "clean", stages.clean_study, study_id, generation, "analyze")


@shared_task(bind=True, name="sonopacs.analyze_study", **_RETRY)
def analyze_study(self: Task, study_id: int, generation: int) -> None:
    """Classification, segmentation, size (queue inference)."""
    _run_stage(self, "analyze", stages.analyze_study, study_id, generation, "publish")


@shared_task(bind=True, name="sonopacs.publish_study", **_RETRY)
def publish_study(self: Task, study_id: int, generation: int) -> None:
    """Build the DICOM results (queue clean); the study becomes results_ready."""
    _run_stage(self, "publish", stages.publish_study, study_id, generation, "export")


@shared_task(bind=True, name="sonopacs.export_study", max_retries=None)
def export_study(
    self: Task,
    study_id: int,
    generation: int | None = None,
    pending: list[int] | None = None,
    reason: str | None = None,
    attempt: int | None = None,
    claimed: bool = False,
) -> dict[str, Any]:
    """C-STORE the study's results to the PACS (queue export); tries are scheduled in the database.

    `attempt` numbers the try (1 for a fresh export); `claimed` says the monitor already took this
    try's schedule row (a retry sent by Celery takes it itself, `worker.export`).
    """
    from sonopacs.worker.export import run_export

    settings, db = _context(self)
    try:
        gen = generation if generation is not None else state.study_generation(db, study_id) or 0
        job_id = begin(self, "export", study_id, gen, attempt or 1)
        return run_export(
            self, settings, db, study_id, job_id=job_id,
            generation=gen, pending=pending, reason=reason, attempt=attempt or 1, claimed=claimed,
        )
    except OperationalError as exc:
        # Our own bookkeeping hit the database (restarting, SQLite busy): try again later with the same
        # arguments instead of letting acks_late drop the export. A try that already holds its
        # schedule claim keeps it; the reconciler picks the study up should this message be lost.
        log.warning("export of study %s: database unavailable (%s); retrying", study_id, state.describe(exc))
        countdown = transient_countdown(settings, int(self.request.retries))
        raise self.retry(
            exc=exc,
            countdown=countdown,
            max_retries=None,
            kwargs={
                "generation": generation,
                "pending": pending,
                "reason": reason,
                "attempt": attempt or 1,
                "claimed": claimed or (attempt or 1) > 1,
            },
        ) from exc
