"""`sonopacs serve` in a subprocess: migrates, answers C-ECHO, runs the stability monitor and the
worker (a study left by the 'listener' gets its pipeline run), and exits 0 on SIGTERM."""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from config import Settings
from db import Database, Job, JobState, Study, StudyState
from dicom_node.scu import Peer, echo
from tests.support.net import free_port, wait_for_port, wait_until
from tests.support.worker_proc import REPO, add_study, clean_env, write_config

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("dicom_node.listener") is None, reason="dicom_node.listener has not landed yet"
)


def test_serve_answers_echo_runs_pipeline_and_stops_on_sigterm(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    port = free_port()
    settings = make_settings(
        "sqlite",
        dicom={"port": port, "host": "127.0.0.1"},
        dashboard={"port": free_port()},
        study={"stable_seconds": 0.5, "poll_seconds": 0.2},
    )
    config = write_config(settings, tmp_path / "sonopacs.yaml")
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sonopacs_cli", "--config", str(config), "serve"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=clean_env(),
            cwd=REPO,
        )
    try:
        wait_for_port(port, timeout=60)
        assert echo(Peer("127.0.0.1", port, settings.dicom.ae_title), calling_ae="TESTSCU") == 0

        # serve migrated the database; a quiet study is picked up by its monitor and worker.
        db = Database(settings.database_url)
        study_id, _ = add_study(db, quiet_for=5)

        def pipeline_ran() -> bool:
            with db.session() as session:
                study = session.get(Study, study_id)
                ran = session.scalar(
                    select(Job.id).where(
                        Job.study_id == study_id, Job.stage == "pipeline", Job.state == JobState.SUCCEEDED
                    )
                )
                return bool(ran) and study is not None and study.state != StudyState.QUEUED

        wait_until(pipeline_ran, timeout=60)
        db.dispose()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    assert code == 0, log.read_text()[-4000:]
