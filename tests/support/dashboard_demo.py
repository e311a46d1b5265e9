"""A processed demo study written straight into the database and storage.

Used by the dashboard tests and the README screenshots: rows for every table the study page reads,
and a real Secondary Capture DICOM file (made with pydicom) whose pixels become the thumbnail. The
patient data is synthetic.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ComprehensiveSRStorage,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
    generate_uid,
)

from sonopacs.db.audit import record
from sonopacs.db.models import (
    AuditEvent,
    ExportAttempt,
    Instance,
    InstanceState,
    Job,
    JobState,
    ResultObject,
    Series,
    Study,
    StudyState,
)
from sonopacs.db.session import Database

UID_PREFIX = "1.2.826.0.1.3680043.8.498."
SR_STORAGE = ComprehensiveSRStorage


@dataclass(frozen=True)
class DemoStudy:
    id: int
    study_instance_uid: str
    patient_id: str
    accession_number: str
    sc_path: Path
    result_sop_uids: tuple[str, ...] = ()


def overlay_pixels(rows: int = 360, cols: int = 480, seed: int = 0) -> np.ndarray:
    """Speckle, a dark oval lesion outlined in yellow, and a banner like the real overlay's."""
    rng = np.random.default_rng(seed)
    gray = rng.gamma(2.0, 28.0, size=(rows, cols)).clip(0, 255).astype(np.uint8)
    yy, xx = np.mgrid[0:rows, 0:cols]
    cy, cx = rows * 0.58, cols * 0.5
    inside = ((yy - cy) / (rows * 0.14)) ** 2 + ((xx - cx) / (cols * 0.12)) ** 2 <= 1
    gray[inside] = (gray[inside] * 0.25).astype(np.uint8)
    img = Image.fromarray(np.stack([gray] * 3, axis=-1))
    draw = ImageDraw.Draw(img)
    box = (cx - cols * 0.12, cy - rows * 0.14, cx + cols * 0.12, cy + rows * 0.14)
    draw.ellipse(box, outline=(255, 220, 0), width=3)
    draw.rectangle((0, 0, cols, 34), fill=(20, 20, 20))
    draw.text((8, 4), "benign  P(malignant) 0.18  demo-model 1.0", fill=(255, 255, 255))
    draw.text((8, 18), "AI result, for assistance only", fill=(255, 200, 0))
    return np.asarray(img)


def _demo_dataset(
    sop_class: str, modality: str, series_number: int, study_uid: str, series_uid: str, patient_id: str, accession: str
) -> Dataset:
    """File meta and the identifying modules shared by the demo SC and SR."""
    sop_uid = generate_uid(prefix=UID_PREFIX)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = patient_id
    ds.PatientName = "DEMO^PATIENT"
    ds.AccessionNumber = accession
    ds.Modality = modality
    ds.SeriesNumber = series_number
    ds.InstanceNumber = 1
    return ds


def write_secondary_capture(path: Path, study_uid: str, series_uid: str, patient_id: str, accession: str) -> str:
    """A minimal RGB Secondary Capture file; returns its SOP Instance UID."""
    pixels = overlay_pixels()
    ds = _demo_dataset(SecondaryCaptureImageStorage, "OT", 9001, study_uid, series_uid, patient_id, accession)
    sop_uid = str(ds.SOPInstanceUID)
    ds.ConversionType = "WSD"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return sop_uid


def write_minimal_sr(path: Path, study_uid: str, series_uid: str, patient_id: str, accession: str) -> str:
    """A tiny Comprehensive SR (a titled container with one text item) standing in for the TID 1500 report."""
    from pydicom.sequence import Sequence

    ds = _demo_dataset(SR_STORAGE, "SR", 9002, study_uid, series_uid, patient_id, accession)
    sop_uid = str(ds.SOPInstanceUID)
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning = "126000", "DCM", "Imaging Measurement Report"
    ds.ConceptNameCodeSequence = Sequence([title])
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "TEXT"
    name = Dataset()
    name.CodeValue, name.CodingSchemeDesignator, name.CodeMeaning = "121106", "DCM", "Comment"
    item.ConceptNameCodeSequence = Sequence([name])
    item.TextValue = "Demo report. AI result, for assistance only, not for diagnosis."
    ds.ContentSequence = Sequence([item])
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return sop_uid


def seed_processed_study(
    db: Database,
    storage_root: Path,
    *,
    patient_id: str = "DEMO-0001",
    accession: str = "ACC-DEMO-1",
    state: StudyState = StudyState.EXPORTED,
    now: datetime | None = None,
    patient_name: str = "DEMO^PATIENT",
    study_description: str = "US BREAST",
) -> DemoStudy:
    """One study that went receiving -> ... -> `state`, with jobs, SC + SR results and an export.

    The identifying fields are free text, so tests can seed hostile values (markup, quotes); the DICOM
    files keep them as long as the VR allows (only the database rows matter to the dashboard).
    """
    now = now or datetime.now(UTC)
    # Three minutes ago, but never yesterday: "studies today" must count a study seeded just after midnight.
    t0 = max(now - timedelta(minutes=3), now.replace(hour=0, minute=0, second=0, microsecond=0))
    study_uid = generate_uid(prefix=UID_PREFIX)
    series_uid = generate_uid(prefix=UID_PREFIX)
    result_series = generate_uid(prefix=UID_PREFIX)
    rel_sc = Path("results") / study_uid / result_series / "sc1.dcm"
    sc_path = storage_root / rel_sc
    sc_uid = write_secondary_capture(sc_path, study_uid, result_series, patient_id, accession)
    sr_series = generate_uid(prefix=UID_PREFIX)
    rel_sr = Path("results") / study_uid / sr_series / "sr1.dcm"
    sr_uid = write_minimal_sr(storage_root / rel_sr, study_uid, sr_series, patient_id, accession)
    with db.session() as session:
        study = Study(
            study_instance_uid=study_uid,
            patient_id=patient_id,
            patient_name=patient_name,
            accession_number=accession,
            study_date=t0.strftime("%Y%m%d"),
            study_description=study_description,
            state=StudyState.RECEIVING,
            generation=1,
            enqueued_generation=1,
            run_count=1,
            first_received_at=t0,
            last_received_at=t0 + timedelta(seconds=2),
            created_at=t0,
        )
        session.add(study)
        session.flush()
        series = Series(study_id=study.id, series_instance_uid=series_uid, modality="US", series_number=1)
        session.add(series)
        session.flush()
        first_instance = None
        for n in range(1, 3):
            inst = Instance(
                series_id=series.id,
                study_id=study.id,
                sop_instance_uid=generate_uid(prefix=UID_PREFIX),
                sop_class_uid=UltrasoundImageStorage,
                transfer_syntax_uid=ExplicitVRLittleEndian,
                instance_number=n,
                number_of_frames=1,
                path=f"instances/{study_uid}/{n}.dcm",
                size_bytes=307_412,
                sha256="0" * 64,
                calling_ae="MODALITY",
                state=InstanceState.PROCESSED,
                received_at=t0 + timedelta(seconds=n),
            )
            session.add(inst)
            first_instance = first_instance or inst
        session.flush()
        stamps = [("queued", 14), ("processing", 15)]
        for to, sec in stamps:
            session.add(_transition(study, to, t0 + timedelta(seconds=sec)))
        start = t0 + timedelta(seconds=15)
        for stage, secs in (("clean", 1.4), ("analyze", 3.8), ("publish", 0.9)):
            session.add(Job(study_id=study.id, stage=stage, state=JobState.SUCCEEDED, generation=1, attempt=1,
                            queued_at=start, started_at=start, finished_at=start + timedelta(seconds=secs),
                            seconds=secs))
            start += timedelta(seconds=secs)
        session.add(_transition(study, "results_ready", start))
        summary = {
            "label": "benign",
            "probabilities": {"normal": 0.07, "benign": 0.75, "malignant": 0.18},
            "malignancy_probability": 0.18,
            "decisions": {"malignant_default": False, "malignant_high_sensitivity": True},
            "long_axis_mm": 11.6,
            "short_axis_mm": 8.3,
        }
        session.add(ResultObject(study_id=study.id, source_instance_id=first_instance.id if first_instance else None,
                                 generation=1, kind="sc", sop_class_uid=SecondaryCaptureImageStorage,
                                 sop_instance_uid=sc_uid, series_instance_uid=result_series, path=str(rel_sc),
                                 model_name="demo-model", model_version="1.0", summary=summary, created_at=start))
        session.add(ResultObject(study_id=study.id, generation=1, kind="sr", sop_class_uid=SR_STORAGE,
                                 sop_instance_uid=sr_uid, series_instance_uid=sr_series, path=str(rel_sr),
                                 model_name="demo-model", model_version="1.0", summary=summary, created_at=start))
        if state in (StudyState.EXPORTED, StudyState.EXPORT_FAILED):
            session.add(_transition(study, "exporting", start + timedelta(seconds=1)))
            ok = state == StudyState.EXPORTED
            session.add(Job(study_id=study.id, stage="export", state=JobState.SUCCEEDED if ok else JobState.FAILED,
                            generation=1, attempt=1, queued_at=start, started_at=start,
                            finished_at=start + timedelta(seconds=2), seconds=2.0,
                            error=None if ok else "association with PACS@pacs:104 rejected"))
            session.add(ExportAttempt(study_id=study.id, destination="PACS@pacs.local:104", attempt=1,
                                      started_at=start + timedelta(seconds=1), finished_at=start + timedelta(seconds=3),
                                      success=ok, n_sent=2 if ok else 0, n_failed=0 if ok else 2,
                                      error=None if ok else "association with PACS@pacs:104 rejected"))
            session.add(_transition(study, state.value, start + timedelta(seconds=3)))
        study.state = state
        study.state_reason = "association with PACS@pacs:104 rejected" if state == StudyState.EXPORT_FAILED else None
        study.updated_at = start + timedelta(seconds=3)
        received = record(session, "study_received", "listener", study=study, detail="2 instance(s)")
        received.time = t0 + timedelta(seconds=2)
        return DemoStudy(study.id, study_uid, patient_id, accession, sc_path, (sc_uid, sr_uid))


def _transition(study: Study, to: str, when: datetime) -> AuditEvent:
    order = ["receiving", "queued", "processing", "results_ready", "exporting", "exported"]
    previous = order[order.index(to) - 1] if to in order and order.index(to) > 0 else "exporting"
    return AuditEvent(time=when, actor="worker" if to != "queued" else "monitor", event="study_state",
                      study_id=study.id, study_instance_uid=study.study_instance_uid,
                      from_state=previous, to_state=to)


def prepare(db: Database, users: dict[str, tuple[str, str]] | None = None) -> None:
    """Create the tables (as `sonopacs db upgrade` would) and the given users {name: (role, password)}."""
    from sonopacs.dashboard.users import upsert_user
    from sonopacs.db.models import Base

    Base.metadata.create_all(db.engine)
    with db.session() as session:
        for name, (role, password) in (users or {}).items():
            upsert_user(session, name, role, password)


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """The app on a real uvicorn in a thread, configured as `sonopacs dashboard` configures it (https
    when the app's settings name a certificate), on a free port; yields its base URL."""
    import uvicorn

    from sonopacs.dashboard.app import server_config
    from tests.support.net import free_port, wait_for_port

    settings = app.state.settings
    port = free_port()
    config = server_config(app, settings.model_copy(update={
        "dashboard": settings.dashboard.model_copy(update={"host": "127.0.0.1"})}), port=port)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for_port(port, timeout=30)
        yield f"{'https' if settings.dashboard.tls_cert else 'http'}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
