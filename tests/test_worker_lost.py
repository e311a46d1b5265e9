"""acks_late + reject_on_worker_lost on both brokers: a pool process killed in the middle of an
export hands the message back, and the export is delivered by the next process."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from sonopacs.config import Settings
from sonopacs.db import Database, Job, JobState, Study, StudyState
from sonopacs.db.migrate import upgrade
from sonopacs.worker.actions import send_export
from tests.support.dicom_factory import write_us_study
from tests.support.net import free_port, wait_until
from tests.support.orthanc import Orthanc, orthanc_available
from tests.support.worker_proc import add_results, add_study, children_of, worker_process, write_config

pytestmark = [
    pytest.mark.orthanc,
    pytest.mark.skipif(not orthanc_available(), reason="Debian orthanc is not installed"),
]


def export_jobs(db: Database, study_id: int) -> list[tuple[JobState, str | None]]:
    with db.session() as session:
        rows = session.execute(
            select(Job.state, Job.error)
            .where(Job.study_id == study_id, Job.stage == "export")
            .order_by(Job.id)
        ).all()
    return [(s, e) for s, e in rows]


def test_killed_pool_process_hands_the_export_back(
    backend: str, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    # A "PACS" that accepts the TCP connection and never answers: the export hangs in A-ASSOCIATE.
    port = free_port()
    black_hole = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    black_hole.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    black_hole.bind(("127.0.0.1", port))
    black_hole.listen(8)
    settings = make_settings(
        backend,
        export={
            "host": "127.0.0.1",
            "port": port,
            "ae_title": "ORTHANC",
            "timeout": 60,
            "max_retries": 20,
            "backoff_base_seconds": 0.3,
            "backoff_max_seconds": 1,
        },
    )
    upgrade(settings.database_url)
    db = Database(settings.database_url)
    study_id, _ = add_study(db, state=StudyState.RESULTS_READY)
    add_results(db, study_id, write_us_study(tmp_path / "results", n_images=1, rows=64, cols=64))
    pacs: Orthanc | None = None
    config = write_config(settings, tmp_path / "sonopacs.yaml")
    try:
        with worker_process(config, tmp_path / "worker.log", concurrency=1) as proc:
            send_export(settings, db, study_id, 1, reason="test")
            wait_until(lambda: export_jobs(db, study_id) == [(JobState.RUNNING, None)], timeout=60)
            [pool] = children_of(proc.pid)
            os.kill(pool, signal.SIGKILL)
            black_hole.close()
            # The real PACS comes up on that port; the handed-back message delivers there.
            pacs = Orthanc(workdir=tmp_path / "orthanc", dicom_port=port).start()
            wait_until(lambda: export_jobs(db, study_id)[-1][0] == JobState.SUCCEEDED, timeout=90)
        jobs = export_jobs(db, study_id)
        assert jobs[0][0] == JobState.FAILED and "worker lost" in (jobs[0][1] or "")
        with db.session() as session:
            study = session.get(Study, study_id)
            assert study is not None and study.state == StudyState.EXPORTED
        assert len(pacs.sop_instance_uids()) == 1
    finally:
        black_hole.close()
        if pacs is not None:
            pacs.stop()
        db.dispose()


def test_sigterm_finishes_running_work_and_hands_back_the_rest(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Embedded broker: a worker stopped with SIGTERM mid-backlog exits 0 with nothing left running;
    a new worker completes every study, each run exactly once."""
    from sqlalchemy import func

    from sonopacs.worker.stability import enqueue_stable_studies

    settings = make_settings("sqlite")
    upgrade(settings.database_url)
    db = Database(settings.database_url)
    ids = [add_study(db)[0] for _ in range(8)]
    assert sorted(enqueue_stable_studies(settings, db)) == sorted(ids)  # the backlog waits in the broker
    config = write_config(settings, tmp_path / "sonopacs.yaml")

    def jobs_in(*states: JobState) -> int:
        with db.session() as session:
            return int(session.scalar(select(func.count(Job.id)).where(Job.state.in_(states))) or 0)

    with worker_process(config, tmp_path / "worker1.log", concurrency=2) as proc:
        wait_until(lambda: jobs_in(JobState.SUCCEEDED) >= 3, timeout=60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    assert jobs_in(JobState.RUNNING) == 0  # warm shutdown: whatever had started, finished

    with worker_process(config, tmp_path / "worker2.log", concurrency=2):
        wait_until(lambda: jobs_in(JobState.SUCCEEDED) == 5 * len(ids), timeout=90)
    with db.session() as session:
        states = set(session.scalars(select(Study.state)))
        runs = session.execute(
            select(Job.study_id, func.count(Job.id)).where(Job.stage == "pipeline").group_by(Job.study_id)
        ).all()
    assert states == {StudyState.RESULTS_READY}
    assert sorted(n for _, n in runs) == [1] * len(ids)
    assert jobs_in(JobState.FAILED, JobState.QUEUED, JobState.RUNNING) == 0
    db.dispose()
