"""Export to a real Orthanc through a real worker: success, retry until the PACS is back, the
retry budget ending in export_failed, only failed files re-sent, and `sonopacs resend`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from sonopacs import cli
from sonopacs.config import Settings
from sonopacs.db import Database, ExportAttempt, Job, JobState, Study, StudyState
from sonopacs.db.migrate import upgrade
from sonopacs.worker.actions import send_export
from tests.support.dicom_factory import write_us_study
from tests.support.net import wait_until
from tests.support.orthanc import Orthanc
from tests.support.worker_proc import add_results, add_study, worker_process, write_config

pytestmark = pytest.mark.orthanc


def export_settings(
    make_settings: Callable[..., Settings], backend: str, pacs: Orthanc, **export: object
) -> Settings:
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": pacs.dicom_port,
        "ae_title": pacs.ae_title,
        "timeout": 5,
        "backoff_base_seconds": 0.3,
        "backoff_max_seconds": 1.0,
    }
    values.update(export)
    return make_settings(backend, export=values)


def study_with_results(db: Database, folder: Path, n: int = 2) -> tuple[int, str, set[str]]:
    """A study in results_ready whose result objects are n real DICOM files."""
    study_id, uid = add_study(db, state=StudyState.RESULTS_READY)
    files = write_us_study(folder, n_images=n, rows=64, cols=64)
    add_results(db, study_id, files)
    return study_id, uid, {sop_uid(p) for p in files}


def sop_uid(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def state_of(db: Database, study_id: int) -> Study:
    with db.session() as session:
        study = session.get(Study, study_id)
        assert study is not None
        return study


def reached(db: Database, study_id: int, *states: StudyState) -> Study | None:
    study = state_of(db, study_id)
    return study if study.state in states else None


def attempts(db: Database, study_id: int) -> list[ExportAttempt]:
    with db.session() as session:
        return list(
            session.scalars(
                select(ExportAttempt).where(ExportAttempt.study_id == study_id).order_by(ExportAttempt.id)
            )
        )


def export_jobs(db: Database, study_id: int) -> list[JobState]:
    with db.session() as session:
        return list(
            session.scalars(
                select(Job.state).where(Job.study_id == study_id, Job.stage == "export").order_by(Job.id)
            )
        )


def test_export_succeeds_and_survives_a_pacs_outage(
    backend: str,
    make_settings: Callable[..., Settings],
    orthanc_factory: Callable[..., Orthanc],
    tmp_path: Path,
) -> None:
    pacs = orthanc_factory()
    settings = export_settings(make_settings, backend, pacs, max_retries=30)
    upgrade(settings.database_url)
    db = Database(settings.database_url)
    config = write_config(settings, tmp_path / "sonopacs.yaml")
    with worker_process(config, tmp_path / "worker.log", concurrency=1):
        # PACS up: one try delivers everything.
        ok_id, _, ok_uids = study_with_results(db, tmp_path / "ok")
        send_export(settings, db, ok_id, 1, reason="test")
        wait_until(lambda: reached(db, ok_id, StudyState.EXPORTED, StudyState.EXPORT_FAILED), timeout=60)
        assert state_of(db, ok_id).state == StudyState.EXPORTED
        assert ok_uids <= pacs.sop_instance_uids()
        [only] = attempts(db, ok_id)
        assert only.success and only.n_sent == 2 and only.n_failed == 0
        assert export_jobs(db, ok_id) == [JobState.SUCCEEDED]

        # PACS down: the export retries with backoff and lands once the PACS is back.
        pacs.stop()
        late_id, _, late_uids = study_with_results(db, tmp_path / "late")
        send_export(settings, db, late_id, 1, reason="test")
        wait_until(lambda: len(attempts(db, late_id)) >= 3, timeout=60)
        assert state_of(db, late_id).state == StudyState.EXPORTING
        pacs.start()
        wait_until(lambda: reached(db, late_id, StudyState.EXPORTED, StudyState.EXPORT_FAILED), timeout=60)

    assert state_of(db, late_id).state == StudyState.EXPORTED
    assert late_uids <= pacs.sop_instance_uids()
    tries = attempts(db, late_id)
    assert [a.attempt for a in tries] == list(range(1, len(tries) + 1))
    assert tries[-1].success and not any(a.success for a in tries[:-1])
    assert all(a.error for a in tries[:-1])
    jobs = export_jobs(db, late_id)
    assert jobs[-1] == JobState.SUCCEEDED and set(jobs[:-1]) == {JobState.RETRYING}
    db.dispose()


def test_export_budget_then_resend(
    make_settings: Callable[..., Settings],
    orthanc_factory: Callable[..., Orthanc],
    tmp_path: Path,
) -> None:
    pacs = orthanc_factory()
    settings = export_settings(make_settings, "sqlite", pacs, max_retries=2)
    upgrade(settings.database_url)
    db = Database(settings.database_url)
    config = write_config(settings, tmp_path / "sonopacs.yaml")
    with worker_process(config, tmp_path / "worker.log", concurrency=1):
        # PACS down for the whole budget: 1 try + 2 retries, then export_failed with the reason.
        pacs.stop()
        down_id, down_uid, down_uids = study_with_results(db, tmp_path / "down")
        send_export(settings, db, down_id, 1, reason="test")
        wait_until(lambda: reached(db, down_id, StudyState.EXPORT_FAILED, StudyState.EXPORTED), timeout=60)
        failed = state_of(db, down_id)
        assert failed.state == StudyState.EXPORT_FAILED
        assert failed.state_reason and "failed after 3 tries" in failed.state_reason
        assert [a.success for a in attempts(db, down_id)] == [False, False, False]
        assert export_jobs(db, down_id) == [JobState.RETRYING, JobState.RETRYING, JobState.FAILED]

        # PACS up, one result file missing: only that file is tried again on each retry.
        pacs.start()
        part_id, _, part_uids = study_with_results(db, tmp_path / "part", n=3)
        with db.session() as session:
            study = session.get(Study, part_id)
            assert study is not None
            missing = Path(study.results[-1].path)
        missing.unlink()
        send_export(settings, db, part_id, 1, reason="test")
        wait_until(lambda: reached(db, part_id, StudyState.EXPORT_FAILED, StudyState.EXPORTED), timeout=60)
        assert state_of(db, part_id).state == StudyState.EXPORT_FAILED
        assert [(a.n_sent, a.n_failed) for a in attempts(db, part_id)] == [(2, 1), (0, 1), (0, 1)]
        assert len(part_uids & pacs.sop_instance_uids()) == 2

        # `sonopacs resend STUDY_UID` (the real CLI) delivers the failed study with a fresh budget.
        assert cli.main(["--config", str(config), "resend", down_uid]) == 0
        wait_until(lambda: reached(db, down_id, StudyState.EXPORTED), timeout=60)

    assert down_uids <= pacs.sop_instance_uids()
    tries = attempts(db, down_id)
    assert len(tries) == 4 and tries[-1].success and tries[-1].attempt == 1
    db.dispose()
