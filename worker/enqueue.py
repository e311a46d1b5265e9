"""Putting a study's pipeline on the broker, and undoing the claim when the broker refused it.

Shared by the stability monitor (quiet studies), the reconciler (stuck ones) and reprocess, so that
all three publish the same chain and release a claim the same way.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, chain
from kombu.utils.uuid import uuid
from sqlalchemy import update

from sonopacs.db import Database, Study, StudyState
from sonopacs.db.audit import record
from sonopacs.db.models import utcnow
from sonopacs.worker import state

ACTOR = "stability"


def pipeline_signature(app: Celery, study_id: int, generation: int, task_id: str | None = None) -> Any:
    """run_pipeline -> clean -> analyze -> publish -> export, each routed to its queue."""
    args = (study_id, generation)
    return chain(
        app.signature("sonopacs.run_pipeline", args=args, immutable=True, task_id=task_id or uuid()),
        app.signature("sonopacs.clean_study", args=args, immutable=True),
        app.signature("sonopacs.analyze_study", args=args, immutable=True),
        app.signature("sonopacs.publish_study", args=args, immutable=True),
        app.signature(
            "sonopacs.export_study", args=(study_id,), kwargs={"generation": generation}, immutable=True
        ),
    )


def send_pipeline(app: Celery, db: Database, study_id: int, generation: int) -> str:
    """Publish the chain for a claimed generation and record its queued pipeline Job."""
    first_id = uuid()
    sig = pipeline_signature(app, study_id, generation, first_id)
    state.publish_with_job(db, study_id, "pipeline", generation, first_id, sig)
    return first_id


def release_claim(db: Database, study_id: int, generation: int, uid: str, reason: str) -> None:
    """Undo a claim whose message never reached the broker, so the next tick enqueues it again."""
    with db.session() as session:
        result = session.execute(
            update(Study)
            .where(
                Study.id == study_id,
                Study.enqueued_generation == generation,
                Study.state == StudyState.QUEUED,
            )
            .values(enqueued_generation=generation - 1, state=StudyState.RECEIVING, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        if getattr(result, "rowcount", 0) == 1:
            record(
                session,
                "study_state",
                ACTOR,
                study_id=study_id,
                study_instance_uid=uid,
                from_state=StudyState.QUEUED.value,
                to_state=StudyState.RECEIVING.value,
                detail=f"enqueue failed, will retry: {reason}",
            )
