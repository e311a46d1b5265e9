"""Job and study-state bookkeeping shared by the tasks, the monitor and the actions.

Study transitions are compare-and-set UPDATEs (state and generation in the WHERE clause), so a
stale run of an older generation, a second worker or the listener reopening the study can never be
overwritten by a read-modify-write race; each successful transition writes its audit row in the
same transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select, update

from sonopacs.db import Database, Job, JobState, Study, StudyState
from sonopacs.db.audit import record
from sonopacs.db.models import utcnow
from sonopacs.worker.liveness import working_on as working_on  # stages call it through here

_REASON_STATES = (StudyState.FAILED, StudyState.EXPORT_FAILED)


def transition(
    db: Database,
    study_id: int,
    to: StudyState,
    actor: str,
    *,
    detail: str | None = None,
    generation: int | None = None,
    allowed_from: Iterable[StudyState] | None = None,
    attempts: int = 5,
) -> bool:
    """Move a study to `to` if it is still at `generation` and in one of `allowed_from`.

    Returns False (and changes nothing) when the study moved on: reopened by a new instance,
    reprocessed, or already in a state this transition must not leave.
    """
    allowed = set(allowed_from) if allowed_from is not None else None
    for _ in range(attempts):
        with db.session() as session:
            row = session.execute(
                select(Study.state, Study.generation).where(Study.id == study_id)
            ).one_or_none()
            if row is None:
                return False
            current, current_gen = row
            if generation is not None and current_gen != generation:
                return False
            if allowed is not None and current not in allowed:
                return False
            if current == to and detail is None:
                return True
            result = session.execute(
                update(Study)
                .where(Study.id == study_id, Study.state == current, Study.generation == current_gen)
                .values(
                    state=to,
                    state_reason=detail if to in _REASON_STATES else None,
                    updated_at=utcnow(),
                )
                .execution_options(synchronize_session=False)
            )
            if getattr(result, "rowcount", 0) != 1:
                continue  # somebody changed it between our read and write: look again
            record(
                session,
                "study_state",
                actor,
                study_id=study_id,
                study_instance_uid=_uid(session, study_id),
                from_state=current.value,
                to_state=to.value,
                detail=detail,
            )
            return True
    return False


def _uid(session: Any, study_id: int) -> str | None:
    return session.execute(select(Study.study_instance_uid).where(Study.id == study_id)).scalar_one_or_none()


def study_generation(db: Database, study_id: int) -> int | None:
    with db.session() as session:
        return session.execute(select(Study.generation).where(Study.id == study_id)).scalar_one_or_none()


def queue_job(
    db: Database, study_id: int, stage: str, generation: int, task_id: str | None, attempt: int = 1
) -> int:
    """A Job row in state queued for a message that was (or is about to be) sent."""
    with db.session() as session:
        job = Job(
            study_id=study_id,
            stage=stage,
            state=JobState.QUEUED,
            generation=generation,
            celery_task_id=task_id,
            attempt=attempt,
            queued_at=utcnow(),
        )
        session.add(job)
        session.flush()
        return int(job.id)


def publish_with_job(
    db: Database, study_id: int, stage: str, generation: int, task_id: str, signature: Any
) -> None:
    """Record the queued Job and publish its message; a broker failure closes the Job as failed."""
    job_id = queue_job(db, study_id, stage, generation, task_id)
    try:
        signature.apply_async()
    except Exception:
        finish_job(db, job_id, JobState.FAILED, error="could not publish to the broker")
        raise


def finish_job(
    db: Database,
    job_id: int,
    state: JobState,
    *,
    error: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    now = utcnow()
    with db.session() as session:
        job = session.get(Job, job_id)
        if job is None:
            return
        job.state = state
        job.finished_at = now
        job.error = error
        if detail is not None:
            job.detail = {**(job.detail or {}), **detail}
        if job.started_at is not None:
            job.seconds = (now - job.started_at).total_seconds()


def describe(exc: BaseException) -> str:
    """A one-line reason for the dashboard and the audit trail."""
    text = str(exc).strip() or "no message"
    return f"{type(exc).__name__}: {text}"[:2000]
