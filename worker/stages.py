"""Pipeline stage bodies (clean, analyze, publish), called by the Celery tasks in worker.tasks.

The tasks own the Job rows and the study state; each body does its work for one (study,
generation), adds its counts and timings to its running Job's detail, and sets instance states
with audit rows. Intermediate data lives under STORAGE/pipeline/<study uid>/g<generation>/, so a
redelivered stage simply redoes its own step. Publishing builds every object in memory first
(``worker.result_objects``), then writes the files, then swaps the study's result rows in one
transaction: never a half set.
Originals are only read.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom
from sqlalchemy import select, update

from sonopacs.db import Instance, InstanceState, Job, JobState, ResultObject, Series, Study
from sonopacs.db.audit import set_instance_state
from sonopacs.db.models import utcnow
from sonopacs.dicom_node.eligibility import is_our_result, skip_reason
from sonopacs.dicom_node.limits import PixelLimits
from sonopacs.dicom_node.pixels import PixelReadError, read_frames
from sonopacs.dicom_node.regions import read_regions
from sonopacs.dicom_node.storage import stored_file
from sonopacs.worker.findings import (
    analysis_record,
    clean_frame,
    get_analyzer,
    identity,
    result_heatmap,
    result_mask,
)
from sonopacs.worker.pools import apply_torch_threads
from sonopacs.worker.records import FieldRecord, StageManifest, jsonable, read_manifest, write_manifest
from sonopacs.worker.result_objects import build_objects, write_objects
from sonopacs.worker.state import working_on

if TYPE_CHECKING:
    from sonopacs.config import Settings
    from sonopacs.db import Database

log = logging.getLogger(__name__)

ACTOR = "worker"

# --------------------------------------------------------------------------------------------
# Bookkeeping helpers
# --------------------------------------------------------------------------------------------


def _work_dir(settings: Settings, study_uid: str, generation: int) -> Path:
    return settings.storage.root / "pipeline" / study_uid / f"g{generation}"


def _add_job_detail(db: Database, study_id: int, stage: str, generation: int, detail: dict[str, Any]) -> None:
    """Merge detail into this stage's running Job (the task closes it and adds its own timing)."""
    with db.session() as session:
        job = session.execute(
            select(Job)
            .where(
                Job.study_id == study_id,
                Job.stage == stage,
                Job.generation == generation,
                Job.state == JobState.RUNNING,
            )
            .order_by(Job.id.desc())
            .limit(1)
        ).scalar_one_or_none()
        if job is not None:
            job.detail = {**(job.detail or {}), **detail}


def _study_uid(db: Database, study_id: int) -> str:
    with db.session() as session:
        uid = session.execute(
            select(Study.study_instance_uid).where(Study.id == study_id)
        ).scalar_one_or_none()
    if uid is None:
        raise RuntimeError(f"study {study_id} does not exist")
    return str(uid)


def _set_state(db: Database, instance_id: int, to: InstanceState, reason: str | None = None) -> None:
    with db.session() as session:
        instance = session.get(Instance, instance_id)
        if instance is not None and (instance.state != to or instance.state_reason != reason):
            set_instance_state(session, instance, to, ACTOR, reason)


# --------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------


def clean_study(settings: Settings, db: Database, study_id: int, generation: int) -> None:
    """Read every instance, skip what we must not analyse, crop + clean up to K frames of the rest."""
    t0 = time.perf_counter()
    study_uid = _study_uid(db, study_id)
    work = _work_dir(settings, study_uid, generation)
    shutil.rmtree(work, ignore_errors=True)
    (work / "clean").mkdir(parents=True)
    with db.session() as session:
        rows = session.execute(
            select(Instance.id, Instance.path, Instance.sop_instance_uid, Instance.state)
            .join(Series, Series.id == Instance.series_id)
            .where(Instance.study_id == study_id)
            .order_by(Series.series_number, Series.id, Instance.instance_number, Instance.id)
        ).all()
    kept = _only_our_results_arrived(settings, db, study_id, rows)
    if kept is not None:
        write_manifest(work / "clean.json", StageManifest(generation=generation, kept_generation=kept))
        detail = {"kept_generation": kept, "reason": "only sonopacs results arrived since the last run"}
        _add_job_detail(db, study_id, "clean", generation, detail)
        log.info("study %s g%s: %s", study_uid, generation, detail["reason"])
        return
    items: list[FieldRecord] = []
    counts = {"instances": len(rows), "eligible": 0, "skipped": 0, "failed": 0, "frames": 0, "fields": 0}
    failures: list[str] = []
    timings = {"read_s": 0.0, "clean_s": 0.0}
    for instance_id, raw_path, sop_uid, _state in rows:
        t_read = time.perf_counter()
        try:
            working_on(instance_id)  # a worker death from here on is charged to this instance
            ds = pydicom.dcmread(stored_file(settings.storage.root, raw_path))
        except Exception as exc:  # noqa: BLE001 - any unreadable file is one failed instance
            _fail_instance(db, instance_id, f"unreadable DICOM: {exc}", counts, failures)
            continue
        reason = skip_reason(ds, settings.pipeline.uid_root)
        if reason is not None:
            counts["skipped"] += 1
            log.info("instance %s skipped: %s", sop_uid, reason)
            _set_state(db, instance_id, InstanceState.SKIPPED, reason)
            continue
        try:
            frames = read_frames(ds, settings.pipeline.max_frames, PixelLimits.of(settings.dicom))
        except PixelReadError as exc:
            _fail_instance(db, instance_id, str(exc), counts, failures)
            continue
        regions = read_regions(ds)
        timings["read_s"] += time.perf_counter() - t_read
        t_clean = time.perf_counter()
        try:
            for frame_index, image in zip(frames.indices, frames.images, strict=True):
                for field_index, (result, spacing) in enumerate(clean_frame(image, regions)):
                    name = f"{instance_id}_{frame_index}_{field_index}.npz"
                    np.savez_compressed(
                        work / "clean" / name, image=result.image, annotation_mask=result.annotation_mask
                    )
                    items.append(
                        FieldRecord(
                            order=len(items),
                            instance_id=instance_id,
                            sop_instance_uid=sop_uid,
                            frame_index=frame_index,
                            field_index=field_index,
                            offset=(int(result.offset[0]), int(result.offset[1])),
                            spacing_mm=spacing,
                            summary=jsonable(result.summary),
                            file=name,
                        )
                    )
                    counts["fields"] += 1
                counts["frames"] += 1
        except ValueError as exc:
            _fail_instance(db, instance_id, f"cleaning refused the image: {exc}", counts, failures)
            items = [it for it in items if it.instance_id != instance_id]
            continue
        finally:
            timings["clean_s"] += time.perf_counter() - t_clean
        counts["eligible"] += 1
    if not items and failures:
        raise RuntimeError(f"no instance could be analysed: {'; '.join(failures[:5])}")
    write_manifest(work / "clean.json", StageManifest(generation=generation, items=items, counts=counts))
    detail = {**counts, **{k: round(v, 3) for k, v in timings.items()}}
    detail["seconds"] = round(time.perf_counter() - t0, 3)
    _add_job_detail(db, study_id, "clean", generation, detail)
    log.info("study %s g%s cleaned: %s", study_uid, generation, detail)


def _only_our_results_arrived(
    settings: Settings, db: Database, study_id: int, rows: Sequence[Any]
) -> int | None:
    """The generation whose results stay current when the study reopened only for our own objects.

    Our SC/SR coming back from the PACS reopen the study like any instance would; re-running would
    publish a new series, which could come back again: a loop. So when every instance not yet
    handled by a run is one of ours and results exist, they are skipped and the results kept.
    A reprocess request (no new instances) still runs in full.
    """
    new = [row for row in rows if row[3] == InstanceState.RECEIVED]
    if not new:
        return None
    with db.session() as session:
        current = session.execute(
            select(ResultObject.generation)
            .where(ResultObject.study_id == study_id, ResultObject.superseded.is_(False))
            .limit(1)
        ).scalar_one_or_none()
    if current is None:
        return None
    reasons = {}
    for instance_id, raw_path, _uid, _state in new:
        try:
            header = pydicom.dcmread(stored_file(settings.storage.root, raw_path), stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - unreadable: let the full run report it
            return None
        if not is_our_result(header, settings.pipeline.uid_root):
            return None
        reasons[instance_id] = "sonopacs result (our own output is never analysed)"
    for instance_id, reason in reasons.items():
        _set_state(db, instance_id, InstanceState.SKIPPED, reason)
    return int(current)


def _fail_instance(
    db: Database, instance_id: int, reason: str, counts: dict[str, int], failures: list[str]
) -> None:
    counts["failed"] += 1
    failures.append(reason)
    log.warning("instance %s failed: %s", instance_id, reason)
    _set_state(db, instance_id, InstanceState.FAILED, reason[:2000])


def analyze_study(settings: Settings, db: Database, study_id: int, generation: int) -> None:
    """One Analyzer batch over every cleaned field of the study."""
    t0 = time.perf_counter()
    study_uid = _study_uid(db, study_id)
    work = _work_dir(settings, study_uid, generation)
    manifest = read_manifest(work / "clean.json")
    items = manifest.items
    out_dir = work / "analysis"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    detail: dict[str, Any] = {"fields": len(items)}
    if items:
        t_load = time.perf_counter()
        apply_torch_threads(settings)  # the runner's choice (worker.pools), set before the pool forked
        analyzer = get_analyzer(settings)
        detail["model_load_s"] = round(time.perf_counter() - t_load, 3)
        images = [np.load(work / "clean" / str(it.file))["image"] for it in items]
        spacings = [it.spacing_mm for it in items]
        t_inf = time.perf_counter()
        results = analyzer.analyze_batch(images, spacings)
        detail["inference_s"] = round(time.perf_counter() - t_inf, 3)
        detail["model"] = f"{analyzer.name} {analyzer.version}"
        points = dict(getattr(analyzer, "operating_points", {}) or {})
        for it, result in zip(items, results, strict=True):
            it.analysis = analysis_record(result, points, it.summary)
            heat = result_heatmap(result)
            if heat is None:
                np.savez_compressed(out_dir / str(it.file), mask=result_mask(result))
            else:
                np.savez_compressed(out_dir / str(it.file), mask=result_mask(result), heatmap=heat)
    write_manifest(
        work / "analysis.json",
        StageManifest(generation=generation, items=items, kept_generation=manifest.kept_generation),
    )
    detail["seconds"] = round(time.perf_counter() - t0, 3)
    _add_job_detail(db, study_id, "analyze", generation, detail)
    log.info("study %s g%s analysed: %s", study_uid, generation, detail)


def publish_study(settings: Settings, db: Database, study_id: int, generation: int) -> None:
    """Build SC per instance, one SR (and optional PR/SEG), store them, swap the result rows."""
    t0 = time.perf_counter()
    study_uid = _study_uid(db, study_id)
    with db.session() as session:
        done = session.execute(
            select(ResultObject.id).where(
                ResultObject.study_id == study_id,
                ResultObject.generation == generation,
                ResultObject.superseded.is_(False),
            )
        ).first()
    if done is not None:
        _add_job_detail(db, study_id, "publish", generation, {"skipped": "already published"})
        return
    work = _work_dir(settings, study_uid, generation)
    analysis = read_manifest(work / "analysis.json")
    if analysis.kept_generation is not None:
        kept = {"kept_generation": analysis.kept_generation, "objects": {}}
        _add_job_detail(db, study_id, "publish", generation, kept)
        return
    by_instance: dict[int, list[FieldRecord]] = defaultdict(list)
    for it in analysis.items:
        if it.instance_id is None:
            raise RuntimeError(f"field {it.order} of analysis.json names no instance")
        by_instance[it.instance_id].append(it)
    ident = identity(settings)
    run = build_objects(settings, db, work, by_instance, ident, generation)
    t_write = time.perf_counter()
    rows = write_objects(settings, study_uid, run.built)
    if not _swap_results(db, study_id, generation, rows, run.outcomes):
        for row in rows:  # overtaken: these files belong to no current result
            (settings.storage.root / row["path"]).unlink(missing_ok=True)
        _add_job_detail(db, study_id, "publish", generation, {"skipped": "a newer generation exists"})
        log.info(
            "study %s g%s: overtaken by a newer generation, results not swapped in", study_uid, generation
        )
        return
    detail: dict[str, Any] = {
        "objects": {kind: sum(1 for r in rows if r["kind"] == kind) for kind in ("sc", "sr", "pr", "seg")},
        **run.detail(),
        "write_s": round(time.perf_counter() - t_write, 3),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    _add_job_detail(db, study_id, "publish", generation, detail)
    log.info("study %s g%s published: %s", study_uid, generation, detail)


def _swap_results(
    db: Database,
    study_id: int,
    generation: int,
    rows: list[dict[str, Any]],
    outcomes: dict[int, tuple[InstanceState, str | None]],
) -> bool:
    """Make this generation's objects the current results in one transaction; False when overtaken.

    The study row is locked and its generation re-checked inside the swap, so a run that was
    overtaken while it built its objects never replaces a newer generation's results.
    """
    with db.session() as session:
        still_current = session.execute(
            update(Study)
            .where(Study.id == study_id, Study.generation == generation)
            .values(updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        if getattr(still_current, "rowcount", 0) != 1:
            return False
        session.execute(
            update(ResultObject)
            .where(ResultObject.study_id == study_id, ResultObject.superseded.is_(False))
            .values(superseded=True)
            .execution_options(synchronize_session=False)
        )
        for row in rows:
            session.add(ResultObject(study_id=study_id, generation=generation, **row))
        for instance_id, (to, reason) in outcomes.items():
            instance = session.get(Instance, instance_id)
            if instance is not None:
                set_instance_state(session, instance, to, ACTOR, reason[:2000] if reason else None)
    return True
