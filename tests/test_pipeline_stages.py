"""Stage bodies on a real database with the shipped model: states, audit, result rows, idempotency, no loops."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from sonopacs.config import Settings
from sonopacs.db import AuditEvent, Database, Instance, InstanceState, Job, ResultObject
from sonopacs.db.migrate import upgrade
from tests.conftest import requires_dciodvfy
from tests.support.dicom_factory import write_ct_instance
from tests.support.findings import dciodvfy
from tests.support.pipeline_db import register_files, run_stages
from tests.support.sonopacs_proc import analyzer_or_skip
from tests.support.us_realistic import write_realistic_study


@pytest.fixture
def pipeline(tmp_path: Path, make_settings: Callable[..., Settings]) -> tuple[Settings, Database, list[Path]]:
    settings = make_settings(pipeline={"presentation_state": True, "segmentation": True, "max_frames": 3})
    analyzer_or_skip(settings)
    upgrade(settings.database_url)
    files = write_realistic_study(tmp_path / "study", n_images=2, jpeg_every=2)
    return settings, Database(settings.database_url), files


def _cine(template: Path, out: Path, n_frames: int) -> Path:
    """A JPEG YBR_FULL_422 cine of the template image, slightly shifted frame to frame."""
    import numpy as np

    from sonopacs.dicom_node.pixels import read_frame
    from tests.support.us_realistic import to_jpeg_ybr422

    ds = pydicom.dcmread(template)
    grey = read_frame(ds, 0)
    frames = np.stack([np.repeat(np.roll(grey, 4 * i, axis=1)[:, :, None], 3, 2) for i in range(n_frames)])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.InstanceNumber = 99
    to_jpeg_ybr422(ds, frames)
    ds.save_as(out, enforce_file_format=True)
    return out


def _results(db: Database, study_id: int, superseded: bool = False) -> list[ResultObject]:
    with db.session() as session:
        return list(
            session.scalars(
                select(ResultObject).where(ResultObject.study_id == study_id, ResultObject.superseded.is_(superseded))
            )
        )


def _states(db: Database, study_id: int) -> dict[str, tuple[InstanceState, str | None]]:
    with db.session() as session:
        rows = session.execute(
            select(Instance.sop_instance_uid, Instance.state, Instance.state_reason).where(Instance.study_id == study_id)
        ).all()
    return {uid: (st, reason) for uid, st, reason in rows}


@requires_dciodvfy
def test_stages_publish_a_complete_set_and_record_everything(
    tmp_path: Path, pipeline: tuple[Settings, Database, list[Path]]
) -> None:
    settings, db, files = pipeline
    ct = write_ct_instance(tmp_path / "ct.dcm")
    broken = tmp_path / "broken.dcm"
    ds = pydicom.dcmread(files[0])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.PixelData = ds.PixelData[:1000]  # truncated pixels: decoding fails
    ds.save_as(broken, enforce_file_format=True)
    cine = _cine(files[0], tmp_path / "cine.dcm", n_frames=5)
    files = [*files, cine]
    originals = {p: p.read_bytes() for p in files}
    study_id = register_files(db, [*files, broken])
    register_files(db, [ct])  # another study: untouched
    jobs = run_stages(settings, db, study_id, generation=1)

    states = _states(db, study_id)
    uid = {p: str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
    assert all(states[uid[p]] == (InstanceState.PROCESSED, None) for p in files)
    (failed,) = [v for k, v in states.items() if k not in uid.values()]
    assert failed[0] == InstanceState.FAILED and "decode" in (failed[1] or "")
    results = _results(db, study_id)
    # SEG only for single-frame sources
    assert sorted(r.kind for r in results) == ["pr", "pr", "pr", "sc", "sc", "sc", "seg", "seg", "sr"]
    cine_sc = next(r for r in results if r.kind == "sc" and (r.summary or {}).get("source_sop_instance_uid") == uid[cine])
    frame_index = (cine_sc.summary or {})["frame_index"]
    assert frame_index in (0, 2, 4)  # K=3 evenly spaced frames of 5; the most suspicious is reported
    sc = pydicom.dcmread(settings.storage.root / cine_sc.path)
    assert sc.SourceImageSequence[0].ReferencedFrameNumber == frame_index + 1
    for r in results:
        path = settings.storage.root / r.path
        assert path.exists() and r.sop_instance_uid.startswith(settings.pipeline.uid_root)
        assert dciodvfy(path)[0] == [], r.kind
        assert r.model_name and r.model_version
    sr_row = next(r for r in results if r.kind == "sr")
    assert sr_row.summary and sr_row.summary["most_suspicious_sop_instance_uid"] in uid.values()
    assert {p: p.read_bytes() for p in files} == originals  # originals never modified
    with db.session() as session:
        details = {j.stage: j.detail or {} for j in session.scalars(select(Job).where(Job.id.in_(jobs.values())))}
        audit = session.scalars(select(AuditEvent).where(AuditEvent.event == "instance_state")).all()
    assert details["clean"]["eligible"] == 3 and details["clean"]["failed"] == 1
    assert details["clean"]["frames"] == 2 + 3
    assert details["analyze"]["fields"] >= 2 and "inference_s" in details["analyze"]
    assert details["publish"]["objects"] == {"sc": 3, "sr": 1, "pr": 3, "seg": 2}
    assert {a.to_state for a in audit} == {"processed", "failed"}


def test_reprocessing_supersedes_and_our_returning_results_do_not_loop(
    pipeline: tuple[Settings, Database, list[Path]],
) -> None:
    settings, db, files = pipeline
    study_id = register_files(db, files)
    run_stages(settings, db, study_id, generation=1)
    first = _results(db, study_id)
    run_stages(settings, db, study_id, generation=2)  # a reprocess: same inputs, a new series
    second = _results(db, study_id)
    assert {r.sop_instance_uid for r in _results(db, study_id, superseded=True)} == {r.sop_instance_uid for r in first}
    assert not {r.series_instance_uid for r in first} & {r.series_instance_uid for r in second}
    assert {(r.summary or {}).get("label") for r in first if r.kind == "sc"} == {
        (r.summary or {}).get("label") for r in second if r.kind == "sc"
    }

    # The PACS sends our SC and SR back: the study reopens, but nothing new is analysed or published.
    returned = [settings.storage.root / r.path for r in second if r.kind in ("sc", "sr")]
    register_files(db, returned)
    run_stages(settings, db, study_id, generation=3)
    assert {r.id for r in _results(db, study_id)} == {r.id for r in second}
    states = _states(db, study_id)
    for path in returned:
        state, reason = states[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)]
        assert state == InstanceState.SKIPPED and "sonopacs result" in (reason or "")


def test_publish_is_idempotent_within_a_generation(pipeline: tuple[Settings, Database, list[Path]]) -> None:
    from sonopacs.worker.stages import publish_study

    settings, db, files = pipeline
    study_id = register_files(db, files)
    run_stages(settings, db, study_id, generation=1)
    before = {r.id for r in _results(db, study_id)}
    publish_study(settings, db, study_id, 1)  # a redelivered message
    assert {r.id for r in _results(db, study_id)} == before
