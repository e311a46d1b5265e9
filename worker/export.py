"""Export: C-STORE a study's current results to the configured PACS, retried with backoff.

One ExportAttempt row per try. A failed try schedules the next one in the database (the study's
`export_next_at`, `export_next_try`, `export_pending`: only the files that failed) and also asks
Celery for it with a countdown. Whichever comes first takes the schedule with one conditional
UPDATE and the other stops, so a try runs once: normally Celery's countdown message, and when that
message died with a killed worker (the embedded broker loses held countdown messages on kill -9)
the stability monitor sends the try once it is overdue (`worker.reconciler`). After
`export.max_retries` retries the study is `export_failed` with the reason and stays visible until
someone resends it (a fresh message, so a fresh budget).

Only current generations reach the PACS: right before sending, the try checks that the study is
still at the generation it exports and not reopened or reprocessed; a superseded generation is
skipped (never sent, nothing to replace), and the newer generation's own run exports the complete
study. The send itself is one function, `send`, so other destination kinds plug in there.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from celery import Task
from celery.exceptions import Ignore, Retry
from sqlalchemy import select, update

from sonopacs.config import Settings
from sonopacs.db import Database, ExportAttempt, JobState, ResultObject, Study, StudyState
from sonopacs.db.audit import record
from sonopacs.db.models import utcnow
from sonopacs.dicom_node.scu import Peer, SendReport, echo, send_files
from sonopacs.dicom_node.storage import stored_file
from sonopacs.dicom_node.stow import StowTarget, stow_files, target_from_settings
from sonopacs.dicom_node.stow import check as check_stow
from sonopacs.worker import liveness, state

log = logging.getLogger(__name__)

ACTOR = "export"
# States an export may move a study between; anything else (a newer run processing) is left alone.
EXPORT_STATES = (
    StudyState.RESULTS_READY,
    StudyState.EXPORTING,
    StudyState.EXPORTED,
    StudyState.EXPORT_FAILED,
)


def backoff_seconds(settings: Settings, retries: int) -> float:
    """Countdown before retry number `retries + 1`: base * 2**retries, at most backoff_max_seconds.

    Not Celery's retry_backoff: the same delay is also written to the database (the kill -9-safe
    schedule), so it is computed here once for both."""
    base = settings.export.backoff_base_seconds
    return float(min(settings.export.backoff_max_seconds, base * (2**retries)))


def destination(settings: Settings) -> Peer | StowTarget | None:
    if not settings.export.enabled:
        return None
    if settings.export.kind == "dicomweb":
        return target_from_settings(settings.export)
    if settings.export.host is None:
        return None
    return Peer(settings.export.host, settings.export.port, settings.export.ae_title)


def result_files(
    settings: Settings, db: Database, study_id: int, only: list[int] | None = None
) -> dict[int, Path]:
    """The study's non-superseded result objects (optionally only some ids) as id -> file path."""
    with db.session() as session:
        query = select(ResultObject.id, ResultObject.path).where(
            ResultObject.study_id == study_id, ResultObject.superseded.is_(False)
        )
        if only is not None:
            query = query.where(ResultObject.id.in_(only))
        rows = session.execute(query.order_by(ResultObject.id)).all()
    files: dict[int, Path] = {}
    for result_id, raw in rows:
        files[int(result_id)] = stored_file(settings.storage.root, raw)
    return files


def _audit(db: Database, study_id: int, event: str, detail: str) -> None:
    with db.session() as session:
        record(session, event, ACTOR, study_id=study_id, detail=detail)


def send(files: dict[int, Path], peer: Peer | StowTarget, settings: Settings) -> tuple[list[int], dict[int, str]]:
    """Send to the destination (C-STORE or STOW-RS) and map the per-file outcome back to result ids."""
    by_path = {path: rid for rid, path in files.items()}
    try:
        if isinstance(peer, StowTarget):
            report = stow_files(list(files.values()), peer, timeout=settings.export.timeout)
        else:
            report = send_files(
                list(files.values()), peer, calling_ae=settings.dicom.ae_title, timeout=settings.export.timeout
            )
    except Exception as exc:  # noqa: BLE001 - any SCU error is a failed try for every file
        reason = state.describe(exc)
        report = SendReport(failed={path: reason for path in files.values()})
    sent = [by_path[p] for p in report.sent if p in by_path]
    failed = {by_path[p]: why for p, why in report.failed.items() if p in by_path}
    return sent, failed


def schedule_retry(
    db: Database, study_id: int, next_try: int, due: datetime, pending: list[int], reason: str | None
) -> None:
    """Write the next try into the study row, where a restarted monitor finds it."""
    with db.session() as session:
        session.execute(
            update(Study)
            .where(Study.id == study_id)
            .values(export_next_at=due, export_next_try=next_try, export_pending=pending, export_reason=reason)
            .execution_options(synchronize_session=False)
        )


def take_retry(db: Database, study_id: int, attempt: int) -> bool:
    """Claim scheduled try `attempt` (True once, for whoever asks first: Celery's message or the monitor)."""
    with db.session() as session:
        result = session.execute(
            update(Study)
            .where(Study.id == study_id, Study.export_next_try == attempt, Study.export_next_at.is_not(None))
            .values(export_next_at=None)
            .execution_options(synchronize_session=False)
        )
        return getattr(result, "rowcount", 0) == 1


def clear_schedule(db: Database, study_id: int) -> None:
    """A fresh export (try 1) replaces whatever retry an earlier export had scheduled."""
    with db.session() as session:
        session.execute(
            update(Study)
            .where(Study.id == study_id, Study.export_next_at.is_not(None))
            .values(export_next_at=None, export_pending=None)
            .execution_options(synchronize_session=False)
        )


def still_current(db: Database, study_id: int, generation: int) -> bool:
    """The study still holds this generation's results and is not being received or processed again."""
    with db.session() as session:
        row = session.execute(select(Study.generation, Study.state).where(Study.id == study_id)).one_or_none()
    return row is not None and row[0] == generation and row[1] in EXPORT_STATES


def _skip(db: Database, job_id: int, note: str) -> None:
    state.finish_job(db, job_id, JobState.SUCCEEDED, detail={"skipped": note})
    raise Ignore()


def run_export(
    task: Task,
    settings: Settings,
    db: Database,
    study_id: int,
    *,
    job_id: int,
    generation: int,
    pending: list[int] | None,
    reason: str | None,
    attempt: int,
    claimed: bool,
) -> dict[str, Any]:
    """One try of export_study for `generation`; schedules the next try while the budget lasts."""
    if attempt > 1 and not claimed and not take_retry(db, study_id, attempt):
        _skip(db, job_id, f"try {attempt} was already taken (sent again by the monitor)")

    peer = destination(settings)
    if peer is None:
        state.transition(db, study_id, StudyState.RESULTS_READY, ACTOR, allowed_from=EXPORT_STATES)
        _audit(db, study_id, "export_skipped", "no export destination configured: results kept, nothing sent")
        state.finish_job(db, job_id, JobState.SUCCEEDED, detail={"skipped": "no destination"})
        return {"sent": 0, "skipped": "no destination"}

    files = result_files(settings, db, study_id, only=pending)
    if not files:
        _audit(db, study_id, "export_skipped", "no result objects to send")
        state.transition(db, study_id, StudyState.RESULTS_READY, ACTOR, allowed_from=EXPORT_STATES)
        state.finish_job(db, job_id, JobState.SUCCEEDED, detail={"skipped": "no result objects"})
        return {"sent": 0, "skipped": "no result objects"}

    if attempt == 1:
        clear_schedule(db, study_id)
        detail = f"to {peer}" + (f" ({reason})" if reason else "")
        state.transition(db, study_id, StudyState.EXPORTING, ACTOR, detail=detail, allowed_from=EXPORT_STATES)

    started = utcnow()
    with liveness.heartbeat(db, job_id, settings.recovery.heartbeat_seconds):
        # The last moment before anything leaves: a generation superseded while this try waited
        # (an outage, a backoff, a backlog) is never sent.
        if not still_current(db, study_id, generation):
            _audit(db, study_id, "export_skipped", f"generation {generation} was superseded; not sent")
            _skip(db, job_id, f"generation {generation} superseded before sending")
        sent, failed = send(files, peer, settings)
    first_error = next(iter(failed.values()), None)
    error = f"{len(failed)} of {len(files)} not delivered: {first_error}" if failed else None
    with db.session() as session:
        session.add(
            ExportAttempt(
                study_id=study_id,
                destination=str(peer),
                attempt=attempt,
                started_at=started,
                finished_at=utcnow(),
                success=not failed,
                n_sent=len(sent),
                n_failed=len(failed),
                error=error,
            )
        )
    outcome = {"attempt": attempt, "sent": sent, "failed": sorted(failed)}

    if not failed:
        state.transition(
            db,
            study_id,
            StudyState.EXPORTED,
            ACTOR,
            detail=f"{len(sent)} object(s) to {peer} on try {attempt}",
            allowed_from=EXPORT_STATES,
        )
        state.finish_job(db, job_id, JobState.SUCCEEDED, detail=outcome)
        return outcome

    max_retries = settings.export.max_retries
    if attempt <= max_retries:
        countdown = backoff_seconds(settings, attempt - 1)
        log.warning(
            "export of study %s to %s, try %s of %s failed (%s); retrying in %.0fs",
            study_id,
            peer,
            attempt,
            max_retries + 1,
            error,
            countdown,
        )
        schedule_retry(
            db, study_id, attempt + 1, utcnow() + timedelta(seconds=countdown), sorted(failed), reason
        )
        state.finish_job(db, job_id, JobState.RETRYING, error=error, detail=outcome)
        _audit(db, study_id, "export_retry", f"try {attempt} failed: {error}; next try in {countdown:.0f}s")
        kwargs = {"generation": generation, "pending": sorted(failed), "reason": reason, "attempt": attempt + 1}
        try:
            raise task.retry(args=(study_id,), kwargs=kwargs, countdown=countdown, max_retries=None)
        except Retry:
            raise
        except Exception as exc:  # noqa: BLE001 - broker down: the schedule row still holds the try
            log.warning("export of study %s: retry not queued (%s); the monitor sends it", study_id,
                        state.describe(exc))
            raise Ignore() from exc

    final = f"export to {peer} failed after {attempt} tries: {error}"
    log.error("study %s: %s", study_id, final)
    state.finish_job(db, job_id, JobState.FAILED, error=error, detail=outcome)
    state.transition(db, study_id, StudyState.EXPORT_FAILED, ACTOR, detail=final, allowed_from=EXPORT_STATES)
    return outcome


def echo_destination(settings: Settings, timeout: float = 3.0) -> str:
    """C-ECHO the configured export destination; raises when it does not answer Success."""
    if settings.export.kind == "dicomweb":
        return check_stow(target_from_settings(settings.export), timeout=timeout)
    peer = Peer(str(settings.export.host), settings.export.port, settings.export.ae_title)
    status = echo(peer, calling_ae=settings.dicom.ae_title, timeout=timeout)
    if status != 0:
        raise RuntimeError(f"C-ECHO status 0x{status:04X}")
    return f"C-ECHO {peer} ok"
