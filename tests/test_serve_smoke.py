"""`sonopacs serve` in a subprocess: migrates, answers C-ECHO, receives a study over C-STORE and runs
its pipeline exactly once per generation (listener -> stability monitor -> worker), exits 0 on SIGTERM."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from sonopacs.config import Settings
from sonopacs.db import Database, Instance, Job, JobState, Study, StudyState
from sonopacs.dicom_node.scu import Peer, echo, send_files
from tests.support.dicom_factory import write_us_study
from tests.support.net import free_port, wait_for_port, wait_until
from tests.support.worker_proc import start_sonopacs, stop_with_sigterm, write_config

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("sonopacs.dicom_node.listener") is None, reason="sonopacs.dicom_node.listener has not landed yet"
)


def settled(db: Database, runs: int) -> Study | None:
    """The one study once its `runs`-th run has ended (no job queued or running, not active)."""
    with db.session() as session:
        study = session.scalars(select(Study)).one_or_none()
        if study is None or study.state in (StudyState.RECEIVING, StudyState.QUEUED, StudyState.PROCESSING):
            return None
        done = session.scalar(
            select(func.count(Job.id)).where(Job.stage == "pipeline", Job.state == JobState.SUCCEEDED)
        )
        busy = session.scalar(
            select(func.count(Job.id)).where(Job.state.in_((JobState.QUEUED, JobState.RUNNING)))
        )
        return study if done == runs and not busy else None


def test_serve_answers_echo_runs_pipeline_and_stops_on_sigterm(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    port = free_port()
    settings = make_settings(
        "sqlite",
        dicom={"port": port, "host": "127.0.0.1"},
        dashboard={"port": free_port()},
        study={"stable_seconds": 2, "poll_seconds": 0.2},
    )
    config = write_config(settings, tmp_path / "sonopacs.yaml")
    log = tmp_path / "serve.log"
    proc = start_sonopacs(["--config", str(config), "serve"], log)
    try:
        wait_for_port(port, timeout=60)
        assert echo(Peer("127.0.0.1", port, settings.dicom.ae_title), calling_ae="TESTSCU") == 0

        # A PACS sends an image: the listener stores it, the monitor enqueues the study once, the
        # worker runs the whole chain. A 2nd image arriving later reopens it: exactly one more run.
        # Thumbnail-sized images: the pipeline skips them (too small to analyse), so the chain runs
        # end to end without loading the model (tests/test_pipeline_e2e.py covers that path).
        files = write_us_study(tmp_path / "study", n_images=2, rows=32, cols=32)
        peer = Peer("127.0.0.1", port, settings.dicom.ae_title)
        assert send_files(files[:1], peer, calling_ae="TESTSCU").ok
        db = Database(settings.database_url)
        first = wait_until(lambda: settled(db, runs=1), timeout=120)
        assert isinstance(first, Study) and first.generation == 1
        assert send_files(files[1:], peer, calling_ae="TESTSCU").ok
        second = wait_until(lambda: settled(db, runs=2), timeout=120)
        assert isinstance(second, Study) and second.generation == 2 and second.run_count == 2
        with db.session() as session:
            runs = session.execute(
                select(Job.generation, Job.state).where(Job.stage == "pipeline").order_by(Job.id)
            ).all()
            n_instances = session.scalar(select(func.count(Instance.id)))
        assert [tuple(r) for r in runs] == [(1, JobState.SUCCEEDED), (2, JobState.SUCCEEDED)]
        assert n_instances == 2
        db.dispose()
    finally:
        code = stop_with_sigterm(proc, 90)
    assert code == 0, log.read_text()[-4000:]
