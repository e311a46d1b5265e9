"""No study left behind: kill -9 of a real worker mid-study, on the embedded broker and on Redis
(with PostgreSQL); the reconciler in the stability monitor brings every study to a terminal state.

A stage is held mid-run by a named pipe standing in for a received instance: reading it blocks
until the test replaces it with a file. The worker's whole process tree is killed with SIGKILL
(what the OOM killer or a power cut does: no warm shutdown, no message handed back).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from sonopacs.config import Settings
from sonopacs.db import AuditEvent, Database, ExportAttempt, Job, JobState, Study, StudyState
from sonopacs.db.migrate import upgrade
from sonopacs.worker.actions import send_export
from sonopacs.worker.liveness import LOST
from sonopacs.worker.stability import enqueue_stable_studies, run_monitor
from tests.support.dicom_factory import write_ct_instance, write_us_study
from tests.support.net import wait_until
from tests.support.orthanc import Orthanc, orthanc_available
from tests.support.worker_proc import (
    add_instance,
    add_results,
    add_study,
    children_of,
    reopen,
    worker_process,
    write_config,
)

TERMINAL = (StudyState.RESULTS_READY, StudyState.EXPORTED, StudyState.EXPORT_FAILED, StudyState.FAILED)
# Small bounds so a lost task is noticed within seconds (production: 300 s, 10 s heartbeats).
RECOVERY = {"stuck_seconds": 3, "heartbeat_seconds": 0.5, "check_seconds": 0.5}


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the worker and its pool processes at once, as the OOM killer or a crash would."""
    pool = children_of(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    for pid in pool:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)


@contextmanager
def monitor(settings: Settings) -> Iterator[None]:
    """The stability monitor (and its reconciler) as `sonopacs serve` runs it: a thread."""
    stop = threading.Event()
    thread = threading.Thread(target=run_monitor, args=(settings, stop), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)


def study(db: Database, study_id: int) -> Study:
    with db.session() as session:
        row = session.get(Study, study_id)
        assert row is not None
        return row


def jobs(db: Database, study_id: int, stage: str | None = None) -> list[Job]:
    with db.session() as session:
        query = select(Job).where(Job.study_id == study_id)
        if stage:
            query = query.where(Job.stage == stage)
        return list(session.scalars(query.order_by(Job.id)))


def audit(db: Database, study_id: int, event: str) -> list[AuditEvent]:
    with db.session() as session:
        return list(
            session.scalars(select(AuditEvent).where(AuditEvent.study_id == study_id, AuditEvent.event == event))
        )


def retry_held_by_worker(settings: Settings) -> bool:
    """The countdown message of the next export try has left the broker's queue for the worker."""
    import sqlite3

    import redis

    url = settings.broker_url
    if url.startswith("redis://"):
        client = redis.Redis.from_url(url)
        try:
            # Kombu keeps a delivered, unacknowledged message in the "unacked" hash as [message,
            # exchange, routing key]. Try 1's own message sits there too until its task returns, and
            # the retry is published just before that: only a held message that is a retry counts,
            # or the worker may be killed a moment before it publishes the retry.
            held = [json.loads(v)[0].get("headers") or {} for v in client.hvals("unacked")]
            return int(client.llen("export")) == 0 and any(int(h.get("retries") or 0) >= 1 for h in held)
        finally:
            client.close()
    conn = sqlite3.connect(url.split("///", 1)[-1])
    try:
        waiting, taken = conn.execute(
            "SELECT sum(m.visible = 1), sum(m.visible = 0) FROM kombu_message m "
            "JOIN kombu_queue q ON m.queue_id = q.id WHERE q.name = 'export'"
        ).fetchone()
        # kombu's SQL transport keeps delivered messages (visible = 0): try 1's and, once the worker
        # published and took it, the retry's. Without the second, the retry may not be published yet.
        return not waiting and (taken or 0) >= 2
    finally:
        conn.close()


def held_study(db: Database, folder: Path) -> tuple[int, Path]:
    """A study whose one instance is a named pipe: clean blocks reading it until it is replaced."""
    folder.mkdir(parents=True, exist_ok=True)
    fifo = folder / "held.dcm"
    os.mkfifo(fifo)
    study_id, _ = add_study(db)
    add_instance(db, study_id, fifo)
    return study_id, fifo


def release(fifo: Path) -> None:
    """Replace the pipe by a readable file (a CT image, skipped by clean: the run ends quickly)."""
    real = write_ct_instance(fifo.with_suffix(".real"))
    os.replace(real, fifo)


def test_kill_9_mid_study_is_recovered_after_restart(
    backend: str, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(backend, recovery=RECOVERY)
    upgrade(settings.database_url)
    db = Database(settings.database_url)
    study_id, fifo = held_study(db, tmp_path / "in")
    config = write_config(settings, tmp_path / "sonopacs.yaml")
    try:
        with worker_process(config, tmp_path / "worker1.log", concurrency=1) as proc:
            assert enqueue_stable_studies(settings, db) == [study_id]
            wait_until(lambda: [j.state for j in jobs(db, study_id, "clean")] == [JobState.RUNNING], timeout=60)
            kill_tree(proc)
        assert study(db, study_id).state == StudyState.PROCESSING
        release(fifo)
        with worker_process(config, tmp_path / "worker2.log", concurrency=1), monitor(settings):
            wait_until(lambda: study(db, study_id).state in TERMINAL, timeout=90)
            # Whatever the broker hands back later belongs to generation 1 and stops at its check.
        final = study(db, study_id)
        assert final.state == StudyState.RESULTS_READY, final.state_reason
        assert final.generation == 2 and final.recovered_generation == 2
        [recovered] = audit(db, study_id, "study_recovered")
        assert recovered.from_state == "processing" and "no live task" in (recovered.detail or "")
        clean = jobs(db, study_id, "clean")
        assert clean[0].generation == 1 and clean[0].state == JobState.FAILED
        assert (clean[0].error or "").startswith(LOST)
        assert [j.state for j in clean if j.generation == 2] == [JobState.SUCCEEDED]
    finally:
        if fifo.exists() and not fifo.is_file():
            release(fifo)
        db.dispose()


def test_study_stuck_again_after_its_recovery_fails_with_the_reason(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Killed again in the recovered generation: no endless loop, `failed` with the reason."""
    settings = make_settings("sqlite", recovery=RECOVERY)
    upgrade(settings.database_url)
    db = Database(settings.database_url)
    study_id, fifo = held_study(db, tmp_path / "in")
    config = write_config(settings, tmp_path / "sonopacs.yaml")
    try:
        with worker_process(config, tmp_path / "worker1.log", concurrency=1) as proc:
            assert enqueue_stable_studies(settings, db) == [study_id]
            wait_until(lambda: [j.state for j in jobs(db, study_id, "clean")] == [JobState.RUNNING], timeout=60)
            kill_tree(proc)
        with worker_process(config, tmp_path / "worker2.log", concurrency=1) as proc, monitor(settings):
            # The recovery re-runs generation 2, which blocks on the pipe again: kill it again.
            wait_until(
                lambda: any(j.generation == 2 and j.state == JobState.RUNNING for j in jobs(db, study_id, "clean")),
                timeout=60,
            )
            kill_tree(proc)
            wait_until(lambda: study(db, study_id).state in TERMINAL, timeout=60)
        final = study(db, study_id)
        assert final.state == StudyState.FAILED
        assert final.state_reason and "stuck again after one recovery" in final.state_reason
        assert len(audit(db, study_id, "study_recovered")) == 1
        assert final.generation == 2
    finally:
        release(fifo)
        db.dispose()


@pytest.mark.slow
def test_poison_instance_fails_alone_after_n_worker_deaths(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """An instance whose decoding kills the pool process each time (an OOM kill): after
    `max_worker_deaths` deaths that instance is failed with the reason, the rest of the study goes
    on, and the message is not redelivered forever."""
    from sonopacs.db import Instance, InstanceState

    settings = make_settings("sqlite", recovery={**RECOVERY, "stuck_seconds": 600, "max_worker_deaths": 2})
    upgrade(settings.database_url)
    db = Database(settings.database_url)
    study_id, fifo = held_study(db, tmp_path / "in")  # read first: it blocks the stage
    [image] = write_us_study(tmp_path / "good", n_images=1)
    good = add_instance(db, study_id, image)
    config = write_config(settings, tmp_path / "sonopacs.yaml")
    try:
        with worker_process(config, tmp_path / "worker.log", concurrency=1) as proc:
            assert enqueue_stable_studies(settings, db) == [study_id]
            for death in range(2):

                def reading_the_pipe(n: int = death + 1) -> bool:
                    clean = jobs(db, study_id, "clean")
                    return len(clean) == n and clean[-1].state == JobState.RUNNING and bool(
                        (clean[-1].detail or {}).get("working_on_instance")
                    )

                wait_until(reading_the_pipe, timeout=60)
                [pool] = children_of(proc.pid)
                os.kill(pool, signal.SIGKILL)
            wait_until(lambda: study(db, study_id).state in TERMINAL, timeout=60)
            assert proc.poll() is None  # the worker itself keeps serving
        final = study(db, study_id)
        assert final.state == StudyState.RESULTS_READY, final.state_reason
        with db.session() as session:
            states = dict(session.execute(select(Instance.id, Instance.state)).tuples().all())
            reason = session.scalar(select(Instance.state_reason).where(Instance.state == InstanceState.FAILED))
        # The rest of the study was analysed (the synthetic image may be out of the model's scope).
        assert states[good] in (InstanceState.PROCESSED, InstanceState.NOT_ASSESSED)
        assert [s for i, s in states.items() if i != good] == [InstanceState.FAILED]
        assert reason and "worker died 2 times while processing this instance" in reason
        clean = jobs(db, study_id, "clean")
        assert [j.state for j in clean] == [JobState.FAILED, JobState.FAILED, JobState.SUCCEEDED]
        assert all((j.error or "").startswith(LOST) for j in clean[:2])
    finally:
        release(fifo)
        db.dispose()


@pytest.mark.orthanc
@pytest.mark.skipif(not orthanc_available(), reason="Debian orthanc is not installed")
def test_export_retry_survives_kill_9_and_lands_once(
    backend: str, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """PACS down, the export waits for its next try, the worker is killed -9, the PACS comes back:
    the try scheduled in the database is sent by the monitor and the results land exactly once."""
    pacs = Orthanc(workdir=tmp_path / "orthanc")
    settings = make_settings(
        backend,
        recovery=RECOVERY,
        export={
            "host": "127.0.0.1",
            "port": pacs.dicom_port,
            "ae_title": pacs.ae_title,
            "timeout": 5,
            "max_retries": 5,
            "backoff_base_seconds": 20,
            "backoff_max_seconds": 20,
        },
    )
    upgrade(settings.database_url)
    db = Database(settings.database_url)
    study_id, _ = add_study(db, state=StudyState.RESULTS_READY)
    files = write_us_study(tmp_path / "results", n_images=2, rows=64, cols=64)
    add_results(db, study_id, files)
    config = write_config(settings, tmp_path / "sonopacs.yaml")
    try:
        with worker_process(config, tmp_path / "worker1.log", concurrency=1) as proc:
            send_export(settings, db, study_id, 1, reason="test")
            # Try 1 failed (nothing listens) and try 2 waits for its countdown inside the worker.
            wait_until(lambda: study(db, study_id).export_next_try == 2, timeout=60)
            wait_until(lambda: retry_held_by_worker(settings), timeout=30)
            kill_tree(proc)
        assert study(db, study_id).state == StudyState.EXPORTING
        pacs.start()
        with worker_process(config, tmp_path / "worker2.log", concurrency=1), monitor(settings):
            wait_until(lambda: study(db, study_id).state in TERMINAL, timeout=240)  # worker + monitor start-up on a loaded 2-core machine
        final = study(db, study_id)
        assert final.state == StudyState.EXPORTED, final.state_reason
        assert len(pacs.sop_instance_uids()) == len(files)  # one result set, nothing twice
        with db.session() as session:
            tries = list(session.scalars(select(ExportAttempt).where(ExportAttempt.study_id == study_id)))
        assert [t.success for t in tries][-1] and sum(t.success for t in tries) == 1
        assert audit(db, study_id, "export_retry_resumed")
    finally:
        pacs.stop()
        db.dispose()


@pytest.mark.orthanc
@pytest.mark.skipif(not orthanc_available(), reason="Debian orthanc is not installed")
def test_superseded_generation_never_reaches_the_pacs(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Generation 1 waits for an export retry (PACS down); an instance reopens the study meanwhile.
    When the PACS is back, the old try checks its generation right before sending and sends nothing."""
    pacs = Orthanc(workdir=tmp_path / "orthanc")
    settings = make_settings(
        "sqlite",
        recovery=RECOVERY,
        study={"stable_seconds": 3600, "poll_seconds": 0.2},
        export={
            "host": "127.0.0.1",
            "port": pacs.dicom_port,
            "ae_title": pacs.ae_title,
            "timeout": 5,
            "backoff_base_seconds": 3,
            "backoff_max_seconds": 3,
        },
    )
    upgrade(settings.database_url)
    db = Database(settings.database_url)
    study_id, _ = add_study(db, state=StudyState.RESULTS_READY)
    add_results(db, study_id, write_us_study(tmp_path / "results", n_images=1, rows=64, cols=64))
    config = write_config(settings, tmp_path / "sonopacs.yaml")
    try:
        with worker_process(config, tmp_path / "worker.log", concurrency=1):
            send_export(settings, db, study_id, 1, reason="test")
            wait_until(lambda: study(db, study_id).export_next_try == 2, timeout=60)
            reopen(db, study_id)  # the rest of the study arrives: generation 2, receiving
            pacs.start()
            wait_until(lambda: any(j.state == JobState.SUCCEEDED for j in jobs(db, study_id, "export")), timeout=60)
        [skipped] = [j for j in jobs(db, study_id, "export") if j.state == JobState.SUCCEEDED]
        assert "superseded" in str((skipped.detail or {}).get("skipped"))
        assert pacs.sop_instance_uids() == set()
        assert study(db, study_id).state == StudyState.RECEIVING
    finally:
        pacs.stop()
        db.dispose()


def test_reconciler_tells_a_waiting_message_from_a_lost_one(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Embedded broker, no worker: a queued study whose message still waits is left alone however
    long it waits; once that message is gone (a killed worker had taken it) the study is re-enqueued."""
    import sqlite3

    from sonopacs.worker.celery_app import get_app
    from sonopacs.worker.reconciler import find_stuck, reconcile

    settings = make_settings("sqlite", recovery=RECOVERY)
    upgrade(settings.database_url)
    db = Database(settings.database_url)
    study_id, _ = add_study(db)
    assert enqueue_stable_studies(settings, db) == [study_id]
    later = study(db, study_id).updated_at + timedelta(seconds=60)
    assert find_stuck(settings, db, later) == []  # waiting in the broker: a backlog, not a loss
    broker = sqlite3.connect(settings.broker_url.split("///", 1)[-1])
    with broker:
        broker.execute("UPDATE kombu_message SET visible = 0")  # what a worker's fetch does
    broker.close()
    [stuck] = find_stuck(settings, db, later)
    assert stuck.state == StudyState.QUEUED and "pipeline task queued" in stuck.reason
    assert reconcile(settings, db, get_app(settings), later) == {study_id: "re-enqueued"}
    after = study(db, study_id)
    assert (after.state, after.generation, after.recovered_generation) == (StudyState.QUEUED, 2, 2)
    [old, new] = jobs(db, study_id, "pipeline")
    assert (old.generation, old.state) == (1, JobState.FAILED) and "message lost" in (old.error or "")
    assert (new.generation, new.state) == (2, JobState.QUEUED)
    db.dispose()


def test_broker_outage_costs_one_failed_enqueue_per_try(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Broker down: the first refused message ends the monitor's tick (its claim released), so an
    outage does not leave a failed pipeline Job per waiting study per poll."""
    from sonopacs.worker.stability import BrokerUnavailable
    from tests.support.net import free_port

    settings = make_settings("sqlite", broker={"url": f"redis://127.0.0.1:{free_port()}/0"})
    upgrade(settings.database_url)
    db = Database(settings.database_url)
    ids = [add_study(db)[0] for _ in range(3)]
    with pytest.raises(BrokerUnavailable):
        enqueue_stable_studies(settings, db)
    with db.session() as session:
        states = set(session.scalars(select(Study.state)))
        failed = session.scalars(select(Job.error).where(Job.state == JobState.FAILED)).all()
    assert states == {StudyState.RECEIVING}  # every claim undone: the next tick enqueues them
    assert len(failed) == 1 and "broker" in (failed[0] or "")
    assert len(audit(db, ids[0], "study_state")) + len(audit(db, ids[1], "study_state")) + len(
        audit(db, ids[2], "study_state")
    ) == 2  # one claim and its release
    db.dispose()
