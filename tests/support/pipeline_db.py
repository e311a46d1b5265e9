"""Study/Series/Instance rows for files already on disk, as the listener would leave them, and a
runner that calls the stage bodies the way sonopacs.worker.tasks does (Job row running -> body -> finished)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pydicom
from sqlalchemy import select, update

from sonopacs.config import Settings
from sonopacs.db import Database, Instance, JobState, Series, Study
from sonopacs.worker import liveness, stages, state


def register_files(db: Database, paths: list[Path]) -> int:
    """Rows for the files (one study); returns the study id. New instances are `received`."""
    with db.session() as session:
        study_id = None
        for path in paths:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            study = session.scalar(select(Study).where(Study.study_instance_uid == ds.StudyInstanceUID))
            if study is None:
                study = Study(study_instance_uid=ds.StudyInstanceUID, patient_id=ds.get("PatientID"))
                session.add(study)
                session.flush()
            series = session.scalar(select(Series).where(Series.series_instance_uid == ds.SeriesInstanceUID))
            if series is None:
                series = Series(
                    study_id=study.id,
                    series_instance_uid=ds.SeriesInstanceUID,
                    series_number=ds.get("SeriesNumber"),
                    modality=ds.get("Modality"),
                )
                session.add(series)
                session.flush()
            session.add(
                Instance(
                    series_id=series.id,
                    study_id=study.id,
                    sop_instance_uid=ds.SOPInstanceUID,
                    sop_class_uid=ds.SOPClassUID,
                    transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
                    instance_number=ds.get("InstanceNumber"),
                    path=str(path),
                    size_bytes=path.stat().st_size,
                    sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                )
            )
            study_id = study.id
    assert study_id is not None
    return int(study_id)


def running_job(settings: Settings, db: Database, study_id: int, stage: str, generation: int) -> int:
    """The Job a worker would mark running for this stage (direct call: no task id, no redelivery)."""
    job_id = liveness.begin(db, settings, study_id, stage, generation, None).job_id
    assert job_id is not None
    return job_id


def run_stages(settings: Settings, db: Database, study_id: int, generation: int) -> dict[str, int]:
    """clean -> analyze -> publish for one generation; returns the Job ids by stage.

    The study is at that generation first, as the stability monitor or a reprocess leaves it.
    """
    with db.session() as session:
        session.execute(update(Study).where(Study.id == study_id).values(generation=generation))
    jobs = {}
    for stage in ("clean", "analyze", "publish"):
        job_id = running_job(settings, db, study_id, stage, generation)
        getattr(stages, f"{stage}_study")(settings, db, study_id, generation)
        state.finish_job(db, job_id, JobState.SUCCEEDED)
        jobs[stage] = job_id
    return jobs
