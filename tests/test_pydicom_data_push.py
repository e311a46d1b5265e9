"""Every ultrasound and secondary-capture file pydicom-data ships, through a real push: Orthanc (the
PACS) C-STOREs each study to a running `sonopacs serve` with every optional output on (PR, SEG).

Each instance the PACS accepted must end with results or a per-image reason (failed, skipped or
not assessed, with the reason the dashboard shows), and no study may be lost: every study reaches
exported (its results back in Orthanc) or results_ready, never failed.
"""

from __future__ import annotations

import urllib.error
import warnings
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import func, select

from sonopacs.config import Settings
from sonopacs.db import AuditEvent, Database, Instance, InstanceState, ResultObject, Study, StudyState
from tests.support.net import free_port, wait_until
from tests.support.orthanc import Orthanc
from tests.support.pydicom_data import us_and_sc_files
from tests.support.sonopacs_proc import analyzer_or_skip, results_in_orthanc, sonopacs_serve

pytestmark = [pytest.mark.orthanc, pytest.mark.slow]

DONE = (StudyState.EXPORTED, StudyState.RESULTS_READY, StudyState.EXPORT_FAILED, StudyState.FAILED)
REASONED = (InstanceState.FAILED, InstanceState.SKIPPED, InstanceState.NOT_ASSESSED)


def one_instance_per_file(folder: Path) -> list[Path]:
    """pydicom-data's US/SC files; where several share a SOP Instance UID, later ones get their own."""
    folder.mkdir(parents=True)
    seen: set[str] = set()
    out = []
    for path in us_and_sc_files():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            header = pydicom.dcmread(path, stop_before_pixels=True)
        uid = str(header.get("SOPInstanceUID", ""))
        if uid and uid not in seen:
            seen.add(uid)
            out.append(path)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        copy = folder / path.name
        ds.save_as(copy)
        seen.add(str(ds.SOPInstanceUID))
        out.append(copy)
    return out


def test_every_pydicom_data_scanner_file_gets_results_or_a_reason(
    tmp_path: Path, make_settings: Callable[..., Settings], orthanc_factory: Callable[..., Orthanc]
) -> None:
    port = free_port()
    pacs = orthanc_factory(modalities={"sonopacs": ("SONOPACS", "127.0.0.1", port)})
    settings = make_settings(
        dicom={"port": port, "host": "127.0.0.1"},
        study={"stable_seconds": 2, "poll_seconds": 0.2},
        export={
            "host": "127.0.0.1",
            "port": pacs.dicom_port,
            "ae_title": pacs.ae_title,
            "backoff_base_seconds": 1,
        },
        pipeline={"presentation_state": True, "segmentation": True, "max_frames": 2},
        dashboard={"port": free_port()},
    )
    analyzer_or_skip(settings)
    files = one_instance_per_file(tmp_path / "copies")
    assert len(files) >= 70, "pydicom-data is incomplete"

    accepted: dict[str, str] = {}  # SOP Instance UID -> file name, as the PACS holds them
    refused_by_pacs = []
    for path in files:
        try:
            pacs.upload(path)
        except urllib.error.HTTPError:  # e.g. no Study Instance UID: no PACS takes it
            refused_by_pacs.append(path.name)
            continue
        header = pydicom.dcmread(path, stop_before_pixels=True)
        accepted[str(header.SOPInstanceUID)] = path.name
    assert len(accepted) >= 70 and len(refused_by_pacs) <= 6, refused_by_pacs

    studies = pacs.get("/studies")
    study_uids = {pacs.get(f"/studies/{s}")["MainDicomTags"]["StudyInstanceUID"] for s in studies}
    db = Database(settings.database_url)
    with sonopacs_serve(settings, tmp_path / "serve"):
        for orthanc_study in studies:
            # permissive: an instance our listener refuses (with a status and reason) does not stop
            # the rest of its study, as a PACS routing rule would carry on
            payload = {"Resources": [orthanc_study], "Synchronous": True, "Permissive": True}
            pacs.post_json("/modalities/sonopacs/store", payload)

        def all_done() -> bool:
            with db.session() as session:
                rows = session.execute(select(Study.study_instance_uid, Study.state)).all()
            return {uid for uid, st in rows if st in DONE} >= study_uids

        wait_until(all_done, timeout=600, interval=2.0)

    with db.session() as session:
        study_states = {
            uid: (st, reason)
            for uid, st, reason in session.execute(
                select(Study.study_instance_uid, Study.state, Study.state_reason)
            ).all()
        }
        rows = session.execute(
            select(Instance.id, Instance.sop_instance_uid, Instance.state, Instance.state_reason)
        ).all()
        sc_sources = set(
            session.scalars(
                select(ResultObject.source_instance_id).where(
                    ResultObject.kind == "sc", ResultObject.superseded.is_(False)
                )
            )
        )
        sc_studies = set(
            session.scalars(
                select(ResultObject.study_id).where(
                    ResultObject.kind == "sc", ResultObject.superseded.is_(False)
                )
            )
        )
        sr_studies = set(
            session.scalars(
                select(ResultObject.study_id).where(
                    ResultObject.kind == "sr", ResultObject.superseded.is_(False)
                )
            )
        )
        sc_per_study = dict(
            session.execute(
                select(Study.study_instance_uid, func.count(ResultObject.id))
                .join(ResultObject, ResultObject.study_id == Study.id)
                .where(ResultObject.kind == "sc", ResultObject.superseded.is_(False))
                .group_by(Study.study_instance_uid)
            ).all()
        )
        refusals = {
            str(uid): detail
            for uid, detail in session.execute(
                select(AuditEvent.sop_instance_uid, AuditEvent.detail).where(
                    AuditEvent.event.like("%refused%")
                )
            ).all()
        }
    db.dispose()

    # no study lost: every pushed study came back (its results sent to the PACS) or is results_ready
    assert set(study_states) == study_uids
    lost = {
        uid: v
        for uid, v in study_states.items()
        if v[0] not in (StudyState.EXPORTED, StudyState.RESULTS_READY)
    }
    assert not lost, lost
    # every instance the PACS holds arrived (or was refused at the door with a status and reason),
    # and ended with results or a reason
    received = {str(uid): (iid, st, reason) for iid, uid, st, reason in rows}
    missing = {accepted[u]: refusals.get(u) for u in set(accepted) - set(received)}
    assert all(detail and "reason=" in detail for detail in missing.values()), missing
    unexplained = {}
    for uid, name in accepted.items():
        if uid not in received:
            continue
        instance_id, st, reason = received[uid]
        if st == InstanceState.PROCESSED:
            if instance_id not in sc_sources:
                unexplained[name] = "processed without an SC"
        elif st == InstanceState.NOT_ASSESSED:
            if instance_id not in sc_sources or not reason:
                unexplained[name] = f"not assessed without SC or reason: {reason!r}"
        elif st not in REASONED or not reason:
            unexplained[name] = f"{st} {reason!r}"
    assert not unexplained, unexplained
    # a study with at least one SC has its SR
    assert sc_studies and sc_studies <= sr_studies, sc_studies - sr_studies
    # our results went back to the PACS: every SC and the study's SR, as new series
    for uid, sc_count in sc_per_study.items():
        found = results_in_orthanc(pacs, uid)
        assert (len(found["OT"]), len(found["SR"])) == (sc_count, 1), (uid, found)
