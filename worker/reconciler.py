"""The reconciler: no study is left in queued, processing or exporting because a worker died.

Run by the stability monitor every `recovery.check_seconds`. Two jobs:

* Due export tries (`send_due_exports`): a failed export schedules its next try in the study row
  (`worker.export`); when Celery's countdown message for it did not run (it died with a killed
  worker, the embedded broker never hands such messages back), the monitor sends the try once it
  is overdue. The schedule is taken with one conditional UPDATE, so the try runs once.
* Stuck studies (`reconcile`): a study in queued/processing (or results_ready/exporting with an
  unfinished export) whose state has not changed for `recovery.stuck_seconds` and none of whose
  current-generation Jobs is live. Live means: running in a process that still exists (same
  machine) or whose heartbeat is younger than the bound; queued recently or still waiting in the broker
  (embedded broker: its message is still visible; other brokers hand lost messages back
  themselves, so a queued task counts as lost only when a later one of the same stage has
  already started); retrying with a countdown still to come.

  A stuck study is recovered once per generation, with an audit row: a processing run is re-enqueued
  as a new generation (so whatever is left of the old run stops at its generation check and can
  never publish or export twice); an export is sent again. Stuck again in the same generation, the
  study ends `failed` (or `export_failed`) with the reason, on the dashboard's failure list.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from celery import Celery
from sqlalchemy import select, update

from sonopacs.config import Settings
from sonopacs.db import Database, Job, JobState, Study, StudyState
from sonopacs.db.audit import record
from sonopacs.db.models import utcnow
from sonopacs.worker import liveness, state
from sonopacs.worker.actions import send_export
from sonopacs.worker.celery_app import embedded_waiting, is_embedded_broker
from sonopacs.worker.enqueue import release_claim, send_pipeline

log = logging.getLogger(__name__)

ACTOR = "reconciler"
PROCESSING_STATES = (StudyState.QUEUED, StudyState.PROCESSING)
EXPORT_STATES = (StudyState.RESULTS_READY, StudyState.EXPORTING)
UNFINISHED = (JobState.QUEUED, JobState.RUNNING, JobState.RETRYING)


@dataclass(frozen=True)
class Stuck:
    study_id: int
    uid: str
    state: StudyState
    generation: int
    recovered_generation: int
    reason: str


def retry_grace(settings: Settings) -> timedelta:
    """How overdue a scheduled export try must be before the monitor sends it instead of Celery."""
    return timedelta(seconds=settings.recovery.heartbeat_seconds * liveness.STALE_INTERVALS)


def send_due_exports(settings: Settings, db: Database, now: datetime | None = None) -> list[int]:
    """Send every overdue scheduled export try whose Celery message never ran; returns study ids."""
    from sonopacs.worker.export import schedule_retry, take_retry

    now = now or utcnow()
    with db.session() as session:
        due = session.execute(
            select(
                Study.id, Study.generation, Study.export_next_try, Study.export_pending, Study.export_reason
            ).where(
                Study.state == StudyState.EXPORTING,
                Study.export_next_at.is_not(None),
                Study.export_next_at <= now - retry_grace(settings),
            )
        ).all()
    sent: list[int] = []
    for study_id, generation, attempt, pending, reason in due:
        if not take_retry(db, study_id, attempt):
            continue  # Celery's own message took it a moment ago
        try:
            send_export(
                settings, db, study_id, generation, reason or "scheduled retry",
                pinned=True, pending=pending, attempt=attempt, claimed=True,
            )
        except Exception as exc:  # noqa: BLE001 - broker down: put the try back, next tick again
            schedule_retry(db, study_id, attempt, now, list(pending or []), reason)
            log.warning("export try %s of study %s not sent: %s", attempt, study_id, state.describe(exc))
            continue
        with db.session() as session:
            record(session, "export_retry_resumed", ACTOR, study_id=study_id,
                   detail=f"try {attempt} was overdue (its message was lost with a worker); sent again")
        log.info("study %s: overdue export try %s sent again", study_id, attempt)
        sent.append(int(study_id))
    return sent


def _live(job: Job, settings: Settings, now: datetime, bound: datetime, waiting: set[str], db: Database) -> bool:
    if job.state == JobState.RUNNING:
        if liveness.process_gone(job.worker) is False:
            return True  # its process still exists here: a long stage, not a lost one
        # Gone, or on another machine: lost once its heartbeat is older than the bound.
        seen = liveness.last_sign_of_life(job)
        return seen is not None and seen > bound
    if job.state == JobState.QUEUED:
        if job.queued_at > bound:
            return True
        if is_embedded_broker(settings.broker_url):
            return bool(job.celery_task_id) and job.celery_task_id in waiting
        return not _overtaken(db, job)
    if job.state == JobState.RETRYING and job.stage != "export":
        wait = timedelta(seconds=settings.recovery.transient_backoff_max_seconds)
        return (job.finished_at or job.queued_at) > bound - wait
    return False


def _overtaken(db: Database, job: Job) -> bool:
    """Another study's task of the same stage, queued after this one, has already started."""
    with db.session() as session:
        later = session.scalar(
            select(Job.id)
            .where(
                Job.stage == job.stage,
                Job.study_id != job.study_id,
                Job.queued_at > job.queued_at,
                Job.started_at.is_not(None),
            )
            .limit(1)
        )
    return later is not None


def find_stuck(settings: Settings, db: Database, now: datetime | None = None) -> list[Stuck]:
    """Studies in an active state for longer than the bound with no live task."""
    now = now or utcnow()
    bound = now - timedelta(seconds=settings.recovery.stuck_seconds)
    with db.session() as session:
        studies = session.execute(
            select(
                Study.id, Study.study_instance_uid, Study.state, Study.generation,
                Study.recovered_generation, Study.export_next_at,
            ).where(Study.state.in_(PROCESSING_STATES + EXPORT_STATES), Study.updated_at <= bound)
        ).all()
        jobs_by_study: dict[int, list[Job]] = {}
        for study_id, _uid, _state, generation, _rec, _next in studies:
            jobs_by_study[study_id] = list(
                session.scalars(
                    select(Job).where(Job.study_id == study_id, Job.generation == generation).order_by(Job.id)
                )
            )
    queued_ids = {
        j.celery_task_id for jobs in jobs_by_study.values() for j in jobs
        if j.state == JobState.QUEUED and j.celery_task_id
    }
    waiting = embedded_waiting(settings, queued_ids)
    stuck: list[Stuck] = []
    for study_id, uid, current, generation, recovered, export_next_at in studies:
        jobs = jobs_by_study[study_id]
        if current == StudyState.EXPORTING and export_next_at is not None:
            continue  # a try is scheduled: send_due_exports sends it when it is overdue
        if current == StudyState.RESULTS_READY and (not jobs or jobs[-1].state not in UNFINISHED):
            continue  # results kept (no destination, nothing to send): a final state
        if any(_live(j, settings, now, bound, waiting, db) for j in jobs):
            continue
        last = jobs[-1] if jobs else None
        what = f"{last.stage} task {last.state.value}" if last is not None else "no task"
        reason = (
            f"{current.value} for over {settings.recovery.stuck_seconds:.0f}s with no live task "
            f"(generation {generation}, {what})"
        )
        stuck.append(Stuck(int(study_id), uid, current, int(generation), int(recovered or 0), reason))
    return stuck


def _close_dead_jobs(db: Database, study_id: int, generation: int, now: datetime) -> None:
    """Close what the dead worker left: running rows count as worker deaths, queued ones as lost."""
    with db.session() as session:
        for job in session.scalars(
            select(Job).where(Job.study_id == study_id, Job.generation == generation, Job.state.in_(UNFINISHED))
        ):
            if job.state == JobState.RUNNING:
                liveness.close_lost(job, now, "no heartbeat; found by the reconciler")
            elif job.state == JobState.QUEUED:
                job.state = JobState.FAILED
                job.finished_at = now
                job.error = "message lost with a worker; found by the reconciler"


def recover(settings: Settings, db: Database, app: Celery, stuck: Stuck, now: datetime | None = None) -> str:
    """Re-enqueue a stuck study once for its generation, or fail it; returns what was done."""
    now = now or utcnow()
    _close_dead_jobs(db, stuck.study_id, stuck.generation, now)
    if stuck.recovered_generation >= stuck.generation:
        final = StudyState.EXPORT_FAILED if stuck.state in EXPORT_STATES else StudyState.FAILED
        detail = f"stuck again after one recovery: {stuck.reason}"
        state.transition(db, stuck.study_id, final, ACTOR, detail=detail, generation=stuck.generation,
                         allowed_from=(stuck.state,))
        log.error("study %s: %s; now %s", stuck.uid, detail, final.value)
        return final.value
    if stuck.state in PROCESSING_STATES:
        return _rerun(settings, db, app, stuck)
    return _resend(settings, db, stuck)


def _unchanged(stuck: Stuck) -> tuple[Any, ...]:
    """Still as the reconciler found it, and not yet recovered in this generation: the condition
    that makes a recovery happen once even with two monitors."""
    return (
        Study.id == stuck.study_id,
        Study.generation == stuck.generation,
        Study.state == stuck.state,
        Study.recovered_generation < stuck.generation,
    )


def _rerun(settings: Settings, db: Database, app: Celery, stuck: Stuck) -> str:
    new = stuck.generation + 1
    with db.session() as session:
        result = session.execute(
            update(Study)
            .where(*_unchanged(stuck))
            .values(
                generation=new, enqueued_generation=new, recovered_generation=new,
                state=StudyState.QUEUED, state_reason=None, updated_at=utcnow(),
            )
            .execution_options(synchronize_session=False)
        )
        if getattr(result, "rowcount", 0) != 1:
            return "moved on"
        record(session, "study_recovered", ACTOR, study_id=stuck.study_id, study_instance_uid=stuck.uid,
               from_state=stuck.state.value, to_state=StudyState.QUEUED.value,
               detail=f"{stuck.reason}; re-enqueued as generation {new}")
    try:
        send_pipeline(app, db, stuck.study_id, new)
    except Exception as exc:  # noqa: BLE001 - broker down: the stability monitor enqueues it later
        release_claim(db, stuck.study_id, new, stuck.uid, state.describe(exc))
    log.warning("study %s: %s; re-enqueued as generation %s", stuck.uid, stuck.reason, new)
    return "re-enqueued"


def _resend(settings: Settings, db: Database, stuck: Stuck) -> str:
    with db.session() as session:
        result = session.execute(
            update(Study)
            .where(*_unchanged(stuck))
            .values(recovered_generation=stuck.generation, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        if getattr(result, "rowcount", 0) != 1:
            return "moved on"
        record(session, "study_recovered", ACTOR, study_id=stuck.study_id, study_instance_uid=stuck.uid,
               from_state=stuck.state.value, to_state=stuck.state.value,
               detail=f"{stuck.reason}; export sent again")
    try:
        send_export(settings, db, stuck.study_id, stuck.generation, "recovered after a lost worker", pinned=True)
    except Exception as exc:  # noqa: BLE001 - broker down: allow the next tick to try again
        with db.session() as session:
            session.execute(
                update(Study)
                .where(Study.id == stuck.study_id, Study.recovered_generation == stuck.generation)
                .values(recovered_generation=stuck.generation - 1)
                .execution_options(synchronize_session=False)
            )
        log.warning("study %s: export not re-sent: %s", stuck.uid, state.describe(exc))
        return "broker unavailable"
    log.warning("study %s: %s; export sent again", stuck.uid, stuck.reason)
    return "export re-sent"


def reconcile(settings: Settings, db: Database, app: Celery, now: datetime | None = None) -> dict[int, str]:
    """One pass: overdue export tries, then stuck studies. Returns {study id: what was done}."""
    now = now or utcnow()
    done = {sid: "export try sent" for sid in send_due_exports(settings, db, now)}
    for stuck in find_stuck(settings, db, now):
        done[stuck.study_id] = recover(settings, db, app, stuck, now)
    return done
