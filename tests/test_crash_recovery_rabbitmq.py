"""RabbitMQ as the broker (amqp://guest:guest@127.0.0.1:5672//): a real worker runs a study's pipeline
to results_ready and exports another study's results to a real Orthanc; a worker killed -9
mid-stage hands its message back through RabbitMQ itself, and the reconciler keeps it to one run."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from sonopacs.config import Settings
from sonopacs.db import Database, Job, JobState, StudyState
from sonopacs.db.migrate import upgrade
from sonopacs.worker.actions import send_export
from sonopacs.worker.celery_app import QUEUES
from sonopacs.worker.stability import enqueue_stable_studies
from tests.support.dicom_factory import write_us_study
from tests.support.net import wait_until
from tests.support.orthanc import Orthanc, orthanc_available
from tests.support.worker_proc import add_results, add_study, worker_process, write_config
from tests.test_crash_recovery import RECOVERY, TERMINAL, held_study, jobs, kill_tree, monitor, release, study

RABBITMQ_URL = os.environ.get("SONOPACS_TEST_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672//")


def _purge() -> None:
    """Empty our queues, so messages of another test's databases are never consumed here."""
    from amqp.exceptions import NotFound
    from kombu import Connection

    with Connection(RABBITMQ_URL, connect_timeout=3) as conn:
        for name in QUEUES:
            channel = conn.channel()
            try:
                channel.queue_purge(name)
            except NotFound:
                pass
            finally:
                channel.close() if channel.is_open else None


@pytest.fixture
def rabbitmq() -> Iterator[str]:
    try:
        _purge()
    except OSError as exc:
        pytest.skip(f"RabbitMQ is not running at {RABBITMQ_URL}: {exc}")
    yield RABBITMQ_URL
    _purge()


@pytest.mark.orthanc
@pytest.mark.skipif(not orthanc_available(), reason="Debian orthanc is not installed")
def test_rabbitmq_runs_a_study_and_exports(
    rabbitmq: str, make_settings: Callable[..., Settings], orthanc_factory: Callable[..., Orthanc], tmp_path: Path
) -> None:
    pacs = orthanc_factory()
    settings = make_settings(
        "sqlite",
        broker={"url": rabbitmq},
        recovery=RECOVERY,
        export={"host": "127.0.0.1", "port": pacs.dicom_port, "ae_title": pacs.ae_title, "timeout": 5},
    )
    upgrade(settings.database_url)
    db = Database(settings.database_url)
    config = write_config(settings, tmp_path / "sonopacs.yaml")
    try:
        with worker_process(config, tmp_path / "worker.log", concurrency=1):
            # The whole chain: no instances, so no result objects; the export keeps results_ready.
            run_id, _ = add_study(db)
            assert enqueue_stable_studies(settings, db) == [run_id]
            stages = ["pipeline", "clean", "analyze", "publish", "export"]
            wait_until(lambda: [(j.stage, j.state) for j in jobs(db, run_id)]
                       == [(s, JobState.SUCCEEDED) for s in stages], timeout=90)
            assert study(db, run_id).state == StudyState.RESULTS_READY
            # Results sent to the PACS through RabbitMQ's export queue.
            export_id, _ = add_study(db, state=StudyState.RESULTS_READY)
            files = write_us_study(tmp_path / "results", n_images=2, rows=64, cols=64)
            add_results(db, export_id, files)
            send_export(settings, db, export_id, 1, reason="test")
            done = (StudyState.EXPORTED, StudyState.EXPORT_FAILED)
            wait_until(lambda: study(db, export_id).state in done, timeout=90)
        assert study(db, export_id).state == StudyState.EXPORTED
        assert len(pacs.sop_instance_uids()) == len(files)
    finally:
        db.dispose()


def test_rabbitmq_kill_9_mid_stage_reaches_a_terminal_state(
    rabbitmq: str, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings("sqlite", broker={"url": rabbitmq}, recovery=RECOVERY)
    upgrade(settings.database_url)
    db = Database(settings.database_url)
    study_id, fifo = held_study(db, tmp_path / "in")
    config = write_config(settings, tmp_path / "sonopacs.yaml")
    try:
        with worker_process(config, tmp_path / "worker1.log", concurrency=1) as proc:
            assert enqueue_stable_studies(settings, db) == [study_id]
            wait_until(lambda: [j.state for j in jobs(db, study_id, "clean")] == [JobState.RUNNING], timeout=60)
            kill_tree(proc)
        release(fifo)
        with worker_process(config, tmp_path / "worker2.log", concurrency=1), monitor(settings):
            wait_until(lambda: study(db, study_id).state in TERMINAL, timeout=90)
        assert study(db, study_id).state == StudyState.RESULTS_READY
        with db.session() as session:
            published = session.scalars(
                select(Job.generation).where(
                    Job.study_id == study_id, Job.stage == "publish", Job.state == JobState.SUCCEEDED
                )
            ).all()
        # RabbitMQ hands the killed worker's message back and/or the reconciler re-runs the study:
        # either way exactly one generation is published.
        assert len(published) == 1
    finally:
        release(fifo)
        db.dispose()
