"""Publish on real scanner files with every optional output on: one instance, or one optional object,
that cannot be built never costs the rest of the study its SC and SR.

Stage bodies on a real database with the shipped model; the inputs are pydicom-data's own files (a
Philips palette-colour cine, ACR-NEMA times, headers without Modality or Patient ID, two frames in a
single-frame class), put into one study as a PACS would hold them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from sqlalchemy import select

from sonopacs.config import Settings
from sonopacs.db import Database, Instance, InstanceState, Job, JobState, ResultObject, Study
from sonopacs.db.migrate import upgrade
from sonopacs.worker import stages, state
from tests.support.pipeline_db import register_files, run_stages, running_job
from tests.support.sonopacs_proc import analyzer_or_skip
from tests.support.us_realistic import write_realistic_study

HARD_CASES = {
    "OBXXXX1A_rle_2frame.dcm": "palette-colour cine in the US Multi-frame class (PR used to raise)",
    "OBXXXX1A_2frame.dcm": "two frames in the single-frame US Image class",
    "SC_rgb_2frame.dcm": "two frames in the single-frame SC Image class",
    "color-pl.dcm": "retired US Image class, ACR-NEMA StudyTime '11:20:00', no Patient ID",
    "GDCMJ2K_TextGBR.dcm": "no Modality, Patient ID or Patient Name",
    "SC_jpeg_no_color_transform.dcm": "no Modality",
    "vlut_04.dcm": "a VOI LUT highdicom cannot copy",
}


def copy_into_one_study(names: list[str], folder: Path, study_uid: str) -> list[Path]:
    """Copies of pydicom-data files, all in one study, each with its own SOP Instance UID."""
    folder.mkdir(parents=True)
    out = []
    for name in names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(str(get_testdata_file(name)))
        ds.StudyInstanceUID = study_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        path = folder / name
        ds.save_as(path)
        out.append(path)
    return out


@pytest.fixture
def db_settings(make_settings: Callable[..., Settings]) -> tuple[Settings, Database]:
    settings = make_settings(pipeline={"presentation_state": True, "segmentation": True, "max_frames": 2})
    analyzer_or_skip(settings)
    upgrade(settings.database_url)
    return settings, Database(settings.database_url)


def instances(db: Database, study_id: int) -> dict[str, tuple[InstanceState, str | None]]:
    with db.session() as session:
        rows = session.execute(
            select(Instance.path, Instance.state, Instance.state_reason).where(Instance.study_id == study_id)
        ).all()
    return {Path(path).name: (st, reason) for path, st, reason in rows}


def results(db: Database, study_id: int) -> list[ResultObject]:
    with db.session() as session:
        query = select(ResultObject).where(
            ResultObject.study_id == study_id, ResultObject.superseded.is_(False)
        )
        return list(session.scalars(query))


def publish_detail(db: Database, study_id: int) -> dict[str, Any]:
    with db.session() as session:
        job = session.scalars(select(Job).where(Job.study_id == study_id, Job.stage == "publish")).one()
        return dict(job.detail or {})


def test_hard_scanner_files_all_get_sc_pr_and_one_sr(
    tmp_path: Path, db_settings: tuple[Settings, Database]
) -> None:
    settings, db = db_settings
    files = copy_into_one_study(list(HARD_CASES), tmp_path / "study", pydicom.uid.generate_uid())
    originals = {p: p.read_bytes() for p in files}
    study_id = register_files(db, files)
    run_stages(settings, db, study_id, 1)

    states = instances(db, study_id)
    assert set(states) == set(HARD_CASES)
    for name, (st, reason) in states.items():  # the scope gate may decline an image, with its reason
        assert st == InstanceState.PROCESSED or (st == InstanceState.NOT_ASSESSED and reason), (
            name,
            st,
            reason,
        )
    objects = results(db, study_id)
    by_kind = {kind: [o for o in objects if o.kind == kind] for kind in ("sc", "sr", "pr", "seg")}
    assert len(by_kind["sc"]) == len(HARD_CASES) and len(by_kind["sr"]) == 1
    assert len(by_kind["pr"]) == len(HARD_CASES)  # the palette cine's PR included
    detail = publish_detail(db, study_id)
    assert "failed_instances" not in detail and "optional_failures" not in detail, detail
    assert len(detail["header_repairs"]) >= 3  # repaired in memory, recorded

    root = settings.storage.root
    sc_by_source = {}
    for row in by_kind["sc"]:
        sc = pydicom.dcmread(root / row.path)
        sc_by_source[str(sc.SourceImageSequence[0].ReferencedSOPInstanceUID)] = sc
    uid_of = {p.name: str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
    # frame numbers follow the SOP class: the multi-frame class is referenced by frame, the
    # single-frame classes holding two frames are not
    assert "ReferencedFrameNumber" in sc_by_source[uid_of["OBXXXX1A_rle_2frame.dcm"]].SourceImageSequence[0]
    for name in ("OBXXXX1A_2frame.dcm", "SC_rgb_2frame.dcm"):
        assert "ReferencedFrameNumber" not in sc_by_source[uid_of[name]].SourceImageSequence[0]
    # repaired values in our copy of the header, never in the original
    pl = sc_by_source[uid_of["color-pl.dcm"]]
    assert pl.StudyTime == "112000" and pl.StudyDate == "19941105" and pl.PatientID == ""
    assert sc_by_source[uid_of["GDCMJ2K_TextGBR.dcm"]].Modality == "OT"
    sr = pydicom.dcmread(root / by_kind["sr"][0].path)
    evidence = {
        str(ref.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    assert evidence == set(uid_of.values())
    assert all(p.read_bytes() == data for p, data in originals.items())


def test_one_bad_instance_and_failing_seg_never_cost_the_study_its_sc_and_sr(
    tmp_path: Path, db_settings: tuple[Settings, Database]
) -> None:
    settings, db = db_settings
    files = write_realistic_study(tmp_path / "study", n_images=4, jpeg_every=2)
    for path in files:  # Pixel Spacing with one value (VM 1): highdicom's SEG cannot use it
        ds = pydicom.dcmread(path)
        ds.PixelSpacing = [0.1]
        ds.save_as(path)
    study_id = register_files(db, files)
    with db.session() as session:
        study = session.get(Study, study_id)
        assert study is not None
        study.generation = 1
    for stage in ("clean", "analyze"):
        job_id = running_job(settings, db, study_id, stage, 1)
        getattr(stages, f"{stage}_study")(settings, db, study_id, 1)
        state.finish_job(db, job_id, JobState.SUCCEEDED)
    # the stored copy of one instance goes bad between analysis and publishing
    broken = files[1]
    broken_uid = str(pydicom.dcmread(broken, stop_before_pixels=True).SOPInstanceUID)
    stored = broken.read_bytes()
    broken.write_bytes(stored[: len(stored) // 2])
    job_id = running_job(settings, db, study_id, "publish", 1)
    stages.publish_study(settings, db, study_id, 1)
    state.finish_job(db, job_id, JobState.SUCCEEDED)

    states = instances(db, study_id)
    assert states[broken.name][0] == InstanceState.FAILED
    assert str(states[broken.name][1]).startswith("result not built")
    others = [p.name for p in files if p != broken]
    assert all(states[name][0] == InstanceState.PROCESSED for name in others), states
    objects = results(db, study_id)
    assert sorted(o.kind for o in objects if o.kind in ("sc", "sr")) == ["sc", "sc", "sc", "sr"]
    assert len([o for o in objects if o.kind == "pr"]) == 3 and not [o for o in objects if o.kind == "seg"]
    detail = publish_detail(db, study_id)
    assert list(detail["failed_instances"]) == [broken_uid]
    seg_failures = [f for f in detail.get("optional_failures", []) if f["kind"] == "seg"]
    # the shipped model finds a lesion in these images (a SEG is only tried for a lesion)
    assert seg_failures, detail
    for failure in seg_failures:  # the reason is on the instance too (the dashboard shows it)
        assert failure["reason"].startswith("SEG not built")
        assert any(
            reason and "SEG not built" in reason for name, (_, reason) in states.items() if name in others
        )
    sr = pydicom.dcmread(settings.storage.root / next(o.path for o in objects if o.kind == "sr"))
    evidence = {
        str(ref.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    assert len(evidence) == 3 and broken_uid not in evidence
