"""Study stability: enqueue a study's pipeline once it has been quiet for `study.stable_seconds`.

A study is claimed for one generation with a single conditional UPDATE
(`... WHERE generation = g AND enqueued_generation < g AND state = 'receiving'`), so any number of
monitors (threads, processes, hosts) enqueue each generation exactly once. A later instance makes
the listener reopen the study (state receiving, generation + 1): that is one more run, no storm.
If the broker refuses the message the claim is undone so the next tick tries again.

Every `recovery.check_seconds` the monitor also runs the reconciler (`worker.reconciler`): overdue
export tries are sent again and studies stuck without a live task are re-enqueued once per
generation, then failed with the reason.

Run alone with `python -m sonopacs.worker.stability [--config FILE]`; `sonopacs serve` runs it as a thread.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from datetime import datetime, timedelta

from celery import Celery
from sqlalchemy import select, update

from sonopacs.config import Settings, load_settings
from sonopacs.db import Database, Study, StudyState
from sonopacs.db.audit import record
from sonopacs.db.models import utcnow
from sonopacs.worker import retention, state
from sonopacs.worker.celery_app import get_app, purge_delivered_messages
from sonopacs.worker.context import database_for
from sonopacs.worker.enqueue import release_claim, send_pipeline
from sonopacs.worker.reconciler import reconcile

log = logging.getLogger(__name__)

ACTOR = "stability"
PURGE_EVERY_SECONDS = 600.0
BROKER_BACKOFF_MAX_SECONDS = 30.0


class BrokerUnavailable(RuntimeError):
    """The broker refused a pipeline message; the claim was released and the monitor backs off."""


def enqueue_stable_studies(
    settings: Settings, db: Database, now: datetime | None = None, app: Celery | None = None
) -> list[int]:
    """Claim and enqueue every study quiet since `now - stable_seconds`; returns the study ids.

    Raises BrokerUnavailable at the first message the broker refuses (that study's claim is
    released), so an outage costs one failed Job row per try, not one per waiting study.
    """
    now = now or utcnow()
    cutoff = now - timedelta(seconds=settings.study.stable_seconds)
    with db.session() as session:
        candidates = session.execute(
            select(Study.id, Study.generation, Study.study_instance_uid).where(
                Study.state == StudyState.RECEIVING,
                Study.generation > Study.enqueued_generation,
                Study.last_received_at <= cutoff,
            )
        ).all()
    enqueued: list[int] = []
    for study_id, generation, uid in candidates:
        if not _claim(db, study_id, generation, uid, cutoff):
            continue  # another monitor won, or an instance just arrived
        try:
            send_pipeline(app or get_app(settings), db, study_id, generation)
        except Exception as exc:  # noqa: BLE001 - broker down: release the claim, stop this tick
            release_claim(db, study_id, generation, uid, state.describe(exc))
            raise BrokerUnavailable(state.describe(exc)) from exc
        log.info("study %s generation %s is stable: pipeline enqueued", uid, generation)
        enqueued.append(int(study_id))
    return enqueued


def _claim(db: Database, study_id: int, generation: int, uid: str, cutoff: datetime) -> bool:
    """The one atomic step that makes enqueueing exactly-once per generation."""
    with db.session() as session:
        result = session.execute(
            update(Study)
            .where(
                Study.id == study_id,
                Study.generation == generation,
                Study.enqueued_generation < generation,
                Study.state == StudyState.RECEIVING,
                Study.last_received_at <= cutoff,
            )
            .values(enqueued_generation=generation, state=StudyState.QUEUED, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        if getattr(result, "rowcount", 0) != 1:
            return False
        record(
            session,
            "study_state",
            ACTOR,
            study_id=study_id,
            study_instance_uid=uid,
            from_state=StudyState.RECEIVING.value,
            to_state=StudyState.QUEUED.value,
            detail=f"stable: generation {generation} enqueued",
        )
        return True


def run_monitor(settings: Settings, stop: threading.Event | None = None) -> int:
    """Poll every `study.poll_seconds` until `stop` is set; errors are logged, never fatal."""
    stop = stop or threading.Event()
    db = database_for(settings)
    app = get_app(settings)
    log.info(
        "stability monitor: studies quiet for %ss are enqueued (poll %ss)",
        settings.study.stable_seconds,
        settings.study.poll_seconds,
    )
    next_purge = 0.0
    next_reconcile = 0.0
    next_retention = 0.0
    next_enqueue = 0.0
    broker_wait = 0.0
    while not stop.is_set():
        if time.monotonic() >= next_enqueue:
            try:
                enqueue_stable_studies(settings, db, utcnow(), app=app)
                broker_wait = 0.0
            except BrokerUnavailable as exc:
                # Back off (1, 2, 4 ... 30 s) instead of a failed Job and audit row every poll.
                broker_wait = min(BROKER_BACKOFF_MAX_SECONDS, max(1.0, broker_wait * 2))
                next_enqueue = time.monotonic() + broker_wait
                log.error("broker unavailable (%s); next enqueue in %.0fs", exc, broker_wait)
            except Exception as exc:  # noqa: BLE001 - database restarting: keep polling
                log.warning("stability monitor: %s", state.describe(exc))
        if time.monotonic() >= next_reconcile:
            next_reconcile = time.monotonic() + settings.recovery.check_seconds
            try:
                reconcile(settings, db, app)
            except Exception as exc:  # noqa: BLE001 - database restarting: keep polling
                log.warning("reconciler: %s", state.describe(exc))
        if time.monotonic() >= next_purge:
            next_purge = time.monotonic() + PURGE_EVERY_SECONDS
            try:
                purged = purge_delivered_messages(settings)
                if purged:
                    log.info("embedded broker: removed %s delivered message row(s)", purged)
            except Exception as exc:  # noqa: BLE001 - housekeeping never stops the monitor
                log.warning("embedded broker housekeeping: %s", state.describe(exc))
        if settings.retention.enabled and time.monotonic() >= next_retention:
            next_retention = time.monotonic() + settings.retention.check_seconds
            try:
                retention.purge(settings, db)
            except Exception as exc:  # noqa: BLE001 - housekeeping never stops the monitor
                log.warning("retention: %s", state.describe(exc))
        stop.wait(settings.study.poll_seconds)
    return 0


def run_monitor_until_signalled(settings: Settings) -> int:
    """The standalone monitor (`sonopacs monitor`): SIGTERM/SIGINT end the loop cleanly."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return run_monitor(settings, stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="sonopacs study stability monitor")
    parser.add_argument("--config")
    args = parser.parse_args(argv)
    from sonopacs.config.logs import configure_logging

    configure_logging(logging.INFO)  # the same format, warnings captured, PHI redacted
    return run_monitor_until_signalled(load_settings(args.config))


if __name__ == "__main__":
    raise SystemExit(main())
