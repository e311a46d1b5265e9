"""A real Orthanc (the hospital PACS) pushes a multi-image US study to the listener, on both backends."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from sonopacs.config import Settings
from sonopacs.db.models import Instance, Series, Study, StudyState
from sonopacs.db.session import Database
from tests.support.dicom_factory import write_us_study
from tests.support.listener import audit_rows, dataset_body, running_listener
from tests.support.orthanc import Orthanc


def test_orthanc_push_is_stored_byte_identical_and_recorded(
    backend: str,
    make_settings: Callable[..., Settings],
    orthanc_factory: Callable[..., Orthanc],
    tmp_path: Path,
) -> None:
    settings = make_settings(backend)
    files = write_us_study(tmp_path / "study", n_images=5, rows=240, cols=320)
    with running_listener(settings) as listener:
        pacs = orthanc_factory(modalities={"sonopacs": ("SONOPACS", "127.0.0.1", listener.port)})
        ids = [pacs.upload(f) for f in files]
        study_id = pacs.get(f"/instances/{ids[0]}/study")["ID"]
        pacs.push_study("sonopacs", study_id)  # synchronous: returns after every C-STORE was answered

    db = Database(settings.database_url)
    try:
        with db.session() as session:
            instances = {i.sop_instance_uid: i for i in session.scalars(select(Instance))}
            studies = list(session.scalars(select(Study)))
            series = list(session.scalars(select(Series)))
    finally:
        db.dispose()

    assert len(instances) == len(files) and len(studies) == 1 and len(series) == 1
    study = studies[0]
    assert study.state == StudyState.RECEIVING
    assert (study.generation, study.enqueued_generation) == (1, 0)
    assert study.patient_id == "TEST-0001" and study.accession_number == "ACC0001"
    assert study.study_description == "US BREAST"

    for orthanc_id in ids:
        held = pacs.instance_bytes(orthanc_id)
        uid = pacs.get(f"/instances/{orthanc_id}/simplified-tags")["SOPInstanceUID"]
        row = instances[uid]
        stored = Path(row.path).read_bytes()
        # The file meta is each writer's own (implementation UID, ...); the data set must be identical.
        assert dataset_body(stored) == dataset_body(held)
        assert row.size_bytes == len(stored) and row.calling_ae == "ORTHANC"
        assert row.transfer_syntax_uid == "1.2.840.10008.1.2.1"

    received = audit_rows(settings, "instance_received")
    assert {r.sop_instance_uid for r in received} == set(instances)
    assert all(r.study_id == study.id for r in received)
    accepted = audit_rows(settings, "association_accepted")
    assert any("calling_ae=ORTHANC" in (r.detail or "") for r in accepted)
    assert audit_rows(settings, "association_ended")
    assert not list(Path(settings.storage.root).rglob("*.tmp"))
