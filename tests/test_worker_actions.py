"""Admin actions when the broker is down: a clear refusal, no Job left 'queued' forever."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from sonopacs.config import Settings
from sonopacs.db import Database, Job, JobState, StudyState
from sonopacs.db.migrate import upgrade
from sonopacs.worker.actions import ActionError, resend_study
from tests.support.dicom_factory import write_us_study
from tests.support.net import free_port
from tests.support.worker_proc import add_results, add_study


def test_resend_with_the_broker_down_is_refused_and_its_job_closed(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    dead_broker = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens here
    settings = make_settings("sqlite", broker={"url": dead_broker})
    upgrade(settings.database_url)
    db = Database(settings.database_url)
    try:
        study_id, uid = add_study(db, state=StudyState.EXPORT_FAILED)
        add_results(db, study_id, write_us_study(tmp_path / "results", n_images=1, rows=16, cols=16))
        with pytest.raises(ActionError, match="broker unavailable"):
            resend_study(settings, uid, actor="test")
        with db.session() as session:
            jobs = session.scalars(select(Job).where(Job.study_id == study_id)).all()
        assert [(j.stage, j.state) for j in jobs] == [("export", JobState.FAILED)]
        assert "broker" in (jobs[0].error or "")
    finally:
        db.dispose()
