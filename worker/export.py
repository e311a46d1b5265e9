"""Export: C-STORE a study's current results to the configured PACS, with Celery retries.

One ExportAttempt row per try. A failed try re-queues the same task through `Task.retry` with an
exponential countdown (base * 2**n, capped) and only the files that failed; after
`export.max_retries` retries the study is `export_failed` with the reason and stays visible until
someone resends it (a fresh message, so a fresh budget).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from celery import Task
from celery.exceptions import Ignore
from sqlalchemy import select

from sonopacs.config import Settings
from sonopacs.db import Database, ExportAttempt, JobState, ResultObject, StudyState
from sonopacs.db.audit import record
from sonopacs.db.models import utcnow
from sonopacs.dicom_node.scu import Peer, SendReport, echo, send_files
from sonopacs.worker import state

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
    """Countdown before retry number `retries + 1`: base * 2**retries, at most backoff_max_seconds."""
    base = settings.export.backoff_base_seconds
    return float(min(settings.export.backoff_max_seconds, base * (2**retries)))


def destination(settings: Settings) -> Peer | None:
    if not settings.export.enabled or settings.export.host is None:
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
        path = Path(raw)
        if not path.is_absolute():
            path = settings.storage.root / path
        files[int(result_id)] = path
    return files


def _audit(db: Database, study_id: int, event: str, detail: str) -> None:
    with db.session() as session:
        record(session, event, ACTOR, study_id=study_id, detail=detail)


def _send(files: dict[int, Path], peer: Peer, settings: Settings) -> tuple[list[int], dict[int, str]]:
    """Send and map the per-file outcome back to result ids."""
    by_path = {path: rid for rid, path in files.items()}
    try:
        report = send_files(
            list(files.values()), peer, calling_ae=settings.dicom.ae_title, timeout=settings.export.timeout
        )
    except Exception as exc:  # noqa: BLE001 - any SCU error is a failed try for every file
        reason = state.describe(exc)
        report = SendReport(failed={path: reason for path in files.values()})
    sent = [by_path[p] for p in report.sent if p in by_path]
    failed = {by_path[p]: why for p, why in report.failed.items() if p in by_path}
    return sent, failed


def run_export(
    task: Task,
    settings: Settings,
    db: Database,
    study_id: int,
    *,
    generation: int | None,
    pending: list[int] | None,
    reason: str | None,
) -> dict[str, Any]:
    """One try of export_study; raises Retry while the budget lasts."""
    retries = int(task.request.retries)
    attempt = retries + 1
    gen = generation if generation is not None else state.study_generation(db, study_id) or 0
    job_id = state.start_job(db, study_id, "export", gen, task.request.id, attempt)
    if generation is not None:
        current = state.study_generation(db, study_id)
        if current != generation:
            note = f"superseded by generation {current}" if current is not None else "study gone"
            state.finish_job(db, job_id, JobState.SUCCEEDED, detail={"skipped": note})
            raise Ignore()

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
        detail = f"to {peer}" + (f" ({reason})" if reason else "")
        state.transition(db, study_id, StudyState.EXPORTING, ACTOR, detail=detail, allowed_from=EXPORT_STATES)

    started = utcnow()
    sent, failed = _send(files, peer, settings)
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
    if retries < max_retries:
        countdown = backoff_seconds(settings, retries)
        log.warning(
            "export of study %s to %s, try %s of %s failed (%s); retrying in %.0fs",
            study_id,
            peer,
            attempt,
            max_retries + 1,
            error,
            countdown,
        )
        state.finish_job(db, job_id, JobState.RETRYING, error=error, detail=outcome)
        _audit(db, study_id, "export_retry", f"try {attempt} failed: {error}; next try in {countdown:.0f}s")
        raise task.retry(
            args=(study_id,),
            kwargs={"generation": generation, "pending": sorted(failed), "reason": reason},
            countdown=countdown,
            max_retries=max_retries,
        )

    final = f"export to {peer} failed after {attempt} tries: {error}"
    log.error("study %s: %s", study_id, final)
    state.finish_job(db, job_id, JobState.FAILED, error=error, detail=outcome)
    state.transition(db, study_id, StudyState.EXPORT_FAILED, ACTOR, detail=final, allowed_from=EXPORT_STATES)
    return outcome


def echo_destination(settings: Settings, timeout: float = 3.0) -> str:
    """C-ECHO the configured export destination; raises when it does not answer Success."""
    peer = Peer(str(settings.export.host), settings.export.port, settings.export.ae_title)
    status = echo(peer, calling_ae=settings.dicom.ae_title, timeout=timeout)
    if status != 0:
        raise RuntimeError(f"C-ECHO status 0x{status:04X}")
    return f"C-ECHO {peer} ok"
