"""Every new instance (re)opens its study; the worker's stability monitor sees one more generation,
never a storm. Concurrent senders of one new study create it once."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select, update

from sonopacs.config import Settings
from sonopacs.db.models import Instance, InstanceState, Series, Study, StudyState
from sonopacs.db.session import Database
from sonopacs.dicom_node import status
from tests.conftest import requires_dcmtk
from tests.support.dicom_factory import write_us_study
from tests.support.listener import audit_rows, dcmtk, raw_c_store, running_listener


def _study(db: Database) -> Study:
    with db.session() as session:
        return session.scalars(select(Study)).one()


def _claim(db: Database) -> None:
    """What the stability monitor does when it enqueues a generation."""
    with db.session() as session:
        session.execute(update(Study).values(enqueued_generation=Study.generation, state=StudyState.QUEUED))


def test_new_instance_reopens_an_enqueued_study_once(
    backend: str, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(backend)
    files = write_us_study(tmp_path / "study", n_images=4, rows=32, cols=32)
    with running_listener(settings) as listener:
        db = Database(settings.database_url)
        try:
            assert raw_c_store(listener.port, files[0]).status == status.SUCCESS
            first = _study(db)
            assert (first.state, first.generation, first.enqueued_generation) == (StudyState.RECEIVING, 1, 0)

            _claim(db)  # generation 1 enqueued
            assert raw_c_store(listener.port, files[1]).status == status.SUCCESS
            reopened = _study(db)
            assert (reopened.state, reopened.generation, reopened.enqueued_generation) == (
                StudyState.RECEIVING, 2, 1,
            )  # fmt: skip
            assert reopened.last_received_at >= first.last_received_at

            # Not enqueued yet: more instances only move last_received_at.
            assert raw_c_store(listener.port, files[2]).status == status.SUCCESS
            assert _study(db).generation == 2

            _claim(db)  # generation 2 enqueued; an identical re-send is not new work
            assert raw_c_store(listener.port, files[2]).status == status.SUCCESS
            assert (_study(db).state, _study(db).generation) == (StudyState.QUEUED, 2)
            assert raw_c_store(listener.port, files[3]).status == status.SUCCESS
            assert (_study(db).state, _study(db).generation) == (StudyState.RECEIVING, 3)
        finally:
            db.dispose()

    transitions = [(r.from_state, r.to_state) for r in audit_rows(settings, "study_state")]
    assert transitions == [(None, "receiving"), ("queued", "receiving"), ("queued", "receiving")]
    details = [r.detail or "" for r in audit_rows(settings, "study_state")]
    assert "generation 1->2" in details[1] and "generation 2->3" in details[2]


@requires_dcmtk
def test_concurrent_senders_of_one_new_study(
    backend: str, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(backend)
    files = write_us_study(tmp_path / "study", n_images=9, rows=64, cols=64)
    with running_listener(settings) as listener:
        senders = [
            subprocess.Popen(
                [dcmtk("storescu"), "-aet", f"SCU{i}", "-aec", "SONOPACS", "127.0.0.1", str(listener.port)]
                + [str(f) for f in files[i::3]],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for i in range(3)
        ]
        for sender in senders:
            _, err = sender.communicate(timeout=60)
            assert sender.returncode == 0, err
    db = Database(settings.database_url)
    try:
        with db.session() as session:
            assert len(list(session.scalars(select(Study)))) == 1
            assert len(list(session.scalars(select(Series)))) == 1
            assert len(list(session.scalars(select(Instance)))) == len(files)
    finally:
        db.dispose()
    assert len(audit_rows(settings, "instance_received")) == len(files)


def test_our_own_results_coming_back_do_not_reopen_the_study(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """A PACS that routes our SC overlay back must not start another run (no loops)."""
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    settings = make_settings("sqlite")
    files = write_us_study(tmp_path / "study", n_images=2, rows=32, cols=32)
    ours = tmp_path / "ours.dcm"
    ds = dcmread(files[1])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(
        prefix=settings.pipeline.uid_root
    )
    ds.SeriesInstanceUID = generate_uid(prefix=settings.pipeline.uid_root)
    ds.Manufacturer = "sonopacs"
    ds.save_as(ours, enforce_file_format=True)
    with running_listener(settings) as listener:
        db = Database(settings.database_url)
        try:
            assert raw_c_store(listener.port, files[0]).status == status.SUCCESS
            _claim(db)
            assert raw_c_store(listener.port, ours).status == status.SUCCESS
            study = _study(db)
            assert (study.state, study.generation, study.enqueued_generation) == (StudyState.QUEUED, 1, 1)
            with db.session() as session:  # filed all the same: nothing received is dropped
                own = session.scalar(select(Instance).where(Instance.sop_instance_uid == ds.SOPInstanceUID))
                assert own is not None
                # never new work for a run: a later reprocess must not read it as "only ours arrived"
                assert own.state == InstanceState.SKIPPED and "sonopacs result" in (own.state_reason or "")
            # An original image arriving later still reopens it.
            assert raw_c_store(listener.port, files[1]).status == status.SUCCESS
            assert (_study(db).state, _study(db).generation) == (StudyState.RECEIVING, 2)
        finally:
            db.dispose()
    received = [r.detail or "" for r in audit_rows(settings, "instance_received")]
    assert any("sonopacs result: study not reopened" in d for d in received)
