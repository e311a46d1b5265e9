"""Operator actions (CLI `resend` / `reprocess`, dashboard buttons): each writes an audit row."""

from __future__ import annotations

import logging
from typing import Any

from kombu.utils.uuid import uuid
from sqlalchemy import func, select, update

from sonopacs.config import Settings
from sonopacs.db import Database, ResultObject, Study, StudyState
from sonopacs.db.audit import record
from sonopacs.db.models import utcnow
from sonopacs.worker import state
from sonopacs.worker.celery_app import get_app
from sonopacs.worker.context import database_for
from sonopacs.worker.enqueue import release_claim, send_pipeline

log = logging.getLogger(__name__)


class ActionError(RuntimeError):
    """The action is refused (nothing to send, already queued); the message says why."""


class StudyNotFound(ActionError, LookupError):
    """No study with that Study Instance UID (the dashboard answers 404)."""


def _study(db: Database, study_uid: str) -> tuple[int, int, StudyState]:
    with db.session() as session:
        row = session.execute(
            select(Study.id, Study.generation, Study.state).where(Study.study_instance_uid == study_uid)
        ).one_or_none()
    if row is None:
        raise StudyNotFound(f"no study with Study Instance UID {study_uid}")
    return int(row[0]), int(row[1]), row[2]


def send_export(
    settings: Settings,
    db: Database,
    study_id: int,
    generation: int,
    reason: str,
    *,
    pinned: bool = False,
    **options: Any,
) -> str:
    """Publish an export_study message with its queued Job: a fresh one (retry budget at zero), or
    with `options` (attempt, pending, claimed) a try the reconciler sends again. `pinned`: export
    only while the study is still at `generation` (else whatever generation is current)."""
    task_id = uuid()
    kwargs: dict[str, Any] = {"reason": reason, **options}
    if pinned:
        kwargs["generation"] = generation
    sig = get_app(settings).signature("sonopacs.export_study", args=(study_id,), kwargs=kwargs, task_id=task_id)
    try:
        state.publish_with_job(db, study_id, "export", generation, task_id, sig)
    except Exception as exc:  # noqa: BLE001 - kombu's errors are not RuntimeErrors: say it plainly
        raise ActionError(f"broker unavailable, export not queued: {state.describe(exc)}") from exc
    return task_id


def _refuse_if_purged(db: Database, study_id: int, study_uid: str, part: str) -> None:
    """Retention deleted these files: say so instead of failing later on a missing file."""
    with db.session() as session:
        study = session.get(Study, study_id)
        when = getattr(study, f"{part}_purged_at", None) if study is not None else None
    if when is not None:
        raise ActionError(f"the {part} of study {study_uid} were deleted by retention on {when:%Y-%m-%d}")


def set_pinned(settings: Settings, study_uid: str, pinned: bool, actor: str) -> None:
    """Pin (retention keeps everything) or unpin a study; an audit row either way."""
    db = database_for(settings)
    study_id, _, _ = _study(db, study_uid)
    with db.session() as session:
        study = session.get(Study, study_id)
        assert study is not None
        study.pinned = pinned
        record(session, "pinned" if pinned else "unpinned", actor, study=study)


def resend_study(settings: Settings, study_uid: str, actor: str) -> str:
    """Queue the study's current results for export again; returns the Celery task id."""
    db = database_for(settings)
    study_id, generation, current = _study(db, study_uid)
    if current in (StudyState.QUEUED, StudyState.PROCESSING):
        raise ActionError(f"study {study_uid} is {current.value}: its run exports when it is done")
    _refuse_if_purged(db, study_id, study_uid, "results")
    with db.session() as session:
        n = session.execute(
            select(func.count(ResultObject.id)).where(
                ResultObject.study_id == study_id, ResultObject.superseded.is_(False)
            )
        ).scalar_one()
        if not n:
            raise ActionError(f"study {study_uid} has no results to send")
        record(
            session,
            "resend_requested",
            actor,
            study_id=study_id,
            study_instance_uid=study_uid,
            detail=f"{n} result object(s) queued for export",
        )
    return send_export(settings, db, study_id, generation, reason=f"resend by {actor}")


def reprocess_study(settings: Settings, study_uid: str, actor: str) -> int:
    """Run the whole pipeline again as a new generation; returns that generation."""
    db = database_for(settings)
    study_id, _, current = _study(db, study_uid)
    if current in (StudyState.RECEIVING, StudyState.QUEUED):
        raise ActionError(f"study {study_uid} is {current.value}: it will be processed anyway")
    _refuse_if_purged(db, study_id, study_uid, "originals")
    for _attempt in range(10):
        with db.session() as session:
            old_gen, previous_state = session.execute(
                select(Study.generation, Study.state).where(Study.id == study_id)
            ).one()
            new = int(old_gen) + 1
            result = session.execute(
                update(Study)
                .where(Study.id == study_id, Study.generation == old_gen)
                .values(
                    generation=new,
                    enqueued_generation=new,
                    state=StudyState.QUEUED,
                    state_reason=None,
                    updated_at=utcnow(),
                )
                .execution_options(synchronize_session=False)
            )
            if getattr(result, "rowcount", 0) != 1:
                continue  # an instance arrived at the same moment: read again
            record(
                session,
                "study_state",
                actor,
                study_id=study_id,
                study_instance_uid=study_uid,
                from_state=previous_state.value,
                to_state=StudyState.QUEUED.value,
                detail=f"reprocess requested: generation {new}",
            )
        break
    else:
        raise ActionError(f"study {study_uid} keeps changing; try again")
    try:
        send_pipeline(get_app(settings), db, study_id, new)
    except Exception as exc:
        # Hand it to the stability monitor: it enqueues generations above enqueued_generation.
        release_claim(db, study_id, new, study_uid, state.describe(exc))
        raise ActionError(f"broker unavailable, study {study_uid} will be enqueued later: {exc}") from exc
    log.info("study %s queued for reprocessing as generation %s", study_uid, new)
    return new
