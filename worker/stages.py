"""Pipeline stage bodies (clean, analyze, publish), called by the Celery tasks in worker.tasks.

The tasks own the Job rows and the study state; each body does its work for one (study,
generation), adds its counts and timings to its running Job's detail, and sets instance states
with audit rows. Intermediate data lives under STORAGE/pipeline/<study uid>/g<generation>/, so a
redelivered stage simply redoes its own step. Publishing builds every object in memory first, then
writes the files, then swaps the study's result rows in one transaction: never a half set.
Originals are only read.
"""

from __future__ import annotations

import io
import logging
import shutil
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import select, update

from sonopacs.db import Instance, InstanceState, Job, JobState, ResultObject, Series, Study
from sonopacs.db.audit import set_instance_state
from sonopacs.db.models import utcnow
from sonopacs.dicom_node.eligibility import is_our_result, skip_reason
from sonopacs.dicom_node.pixels import PixelReadError, read_frame, read_frames
from sonopacs.dicom_node.regions import read_regions
from sonopacs.dicom_node.results.overlay_render import render_overlay
from sonopacs.dicom_node.results.presentation_state import build_presentation_state
from sonopacs.dicom_node.results.secondary_capture import build_secondary_capture
from sonopacs.dicom_node.results.segmentation import build_segmentation
from sonopacs.dicom_node.results.structured_report import build_structured_report, most_suspicious
from sonopacs.dicom_node.results.types import ImageFinding, ResultIdentity
from sonopacs.dicom_node.storage import write_durably
from sonopacs.worker.findings import (
    SERIES_NUMBER_BASE,
    analysis_record,
    clean_frame,
    finding_from_record,
    get_analyzer,
    identity,
    pick_most_suspicious,
    result_heatmap,
    result_mask,
    summary_of,
)
from sonopacs.worker.pools import apply_torch_threads
from sonopacs.worker.records import FieldRecord, StageManifest, jsonable, read_manifest, write_manifest

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


def _instance_path(settings: Settings, raw: str) -> Path:
    path = Path(raw)
    return path if path.is_absolute() else settings.storage.root / path


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
            ds = pydicom.dcmread(_instance_path(settings, raw_path))
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
            frames = read_frames(ds, settings.pipeline.max_frames)
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
            header = pydicom.dcmread(_instance_path(settings, raw_path), stop_before_pixels=True)
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
            it.analysis = analysis_record(result, points)
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
    built = _build_objects(settings, db, work, by_instance, ident, generation)
    t_write = time.perf_counter()
    rows = _write_objects(settings, study_uid, built)
    if not _swap_results(db, study_id, generation, rows, list(by_instance)):
        for row in rows:  # overtaken: these files belong to no current result
            (settings.storage.root / row["path"]).unlink(missing_ok=True)
        _add_job_detail(db, study_id, "publish", generation, {"skipped": "a newer generation exists"})
        log.info(
            "study %s g%s: overtaken by a newer generation, results not swapped in", study_uid, generation
        )
        return
    detail = {
        "objects": {kind: sum(1 for r in rows if r["kind"] == kind) for kind in ("sc", "sr", "pr", "seg")},
        "write_s": round(time.perf_counter() - t_write, 3),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    _add_job_detail(db, study_id, "publish", generation, detail)
    log.info("study %s g%s published: %s", study_uid, generation, detail)


def _swap_results(
    db: Database, study_id: int, generation: int, rows: list[dict[str, Any]], instance_ids: list[int]
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
        for instance_id in instance_ids:
            instance = session.get(Instance, instance_id)
            if instance is not None:
                set_instance_state(session, instance, InstanceState.PROCESSED, ACTOR)
    return True


@dataclass
class Built:
    """One object of this run, built in memory before anything is written."""

    kind: str  # sc, sr, pr, seg
    ds: Dataset
    source_instance_id: int | None
    summary: dict[str, Any]
    model_name: str
    model_version: str


def _build_objects(
    settings: Settings,
    db: Database,
    work: Path,
    by_instance: dict[int, list[FieldRecord]],
    ident: ResultIdentity,
    generation: int,
) -> list[Built]:
    """Every object of this run, all in memory."""
    with db.session() as session:
        paths = dict(
            session.execute(
                select(Instance.id, Instance.path).where(Instance.id.in_(list(by_instance)))
            ).all()
        )
    series = {kind: ident.new_uid() for kind in SERIES_NUMBER_BASE}
    numbers = {kind: base + generation % 100 for kind, base in SERIES_NUMBER_BASE.items()}
    built: list[Built] = []
    findings: list[ImageFinding] = []
    for number, (instance_id, its) in enumerate(by_instance.items(), start=1):
        best = pick_most_suspicious(its)
        ds = pydicom.dcmread(_instance_path(settings, paths[instance_id]))
        frame = read_frame(ds, best.frame_index)
        arrays = np.load(work / "analysis" / str(best.file))
        finding = finding_from_record(
            ds,
            best.frame_index,
            frame,
            best.analysed(),
            best.offset,
            arrays["mask"],
            arrays.get("heatmap"),
        )
        findings.append(finding)
        summary = summary_of(finding, best)
        rgb = render_overlay(finding, heatmap=settings.pipeline.heatmap)
        sc = build_secondary_capture(finding, rgb, ident, series["sc"], numbers["sc"], number)
        model = (finding.model_name, finding.model_version)
        built.append(Built("sc", sc, instance_id, summary, *model))
        if settings.pipeline.presentation_state:
            pr = build_presentation_state(finding, ident, series["pr"], numbers["pr"], number)
            built.append(Built("pr", pr, instance_id, summary, *model))
        if settings.pipeline.segmentation:
            seg = build_segmentation(finding, ds, ident, series["seg"], numbers["seg"], number)
            if seg is not None:
                built.append(Built("seg", seg, instance_id, summary, *model))
    if findings:
        for f in findings:  # the SR only needs headers; drop pixel data held by the sources
            if "PixelData" in f.source:
                del f.source.PixelData
        sr = build_structured_report(findings, ident, series["sr"], numbers["sr"])
        top = most_suspicious(findings)
        built.append(
            Built(
                "sr",
                sr,
                None,
                {
                    "most_suspicious_sop_instance_uid": str(top.source.SOPInstanceUID),
                    "label": top.label,
                    "malignancy_probability": top.malignancy_probability,
                    "n_images": len(findings),
                    "images": {
                        str(f.source.SOPInstanceUID): {
                            "label": f.label,
                            "malignancy_probability": f.malignancy_probability,
                        }
                        for f in findings
                    },
                },
                top.model_name,
                top.model_version,
            )
        )
    return built


def _write_objects(settings: Settings, study_uid: str, built: list[Built]) -> list[dict[str, Any]]:
    """Write each object durably under STORAGE/results/<study>/<series>/ and describe its row."""
    rows = []
    for obj in built:
        ds = obj.ds
        rel = Path("results") / study_uid / str(ds.SeriesInstanceUID) / f"{ds.SOPInstanceUID}.dcm"
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        # durable (rename and folder fsync'ed) before the row that points at it is committed
        write_durably(settings.storage.root / rel, buffer.getvalue())
        rows.append(
            {
                "kind": obj.kind,
                "sop_class_uid": str(ds.SOPClassUID),
                "sop_instance_uid": str(ds.SOPInstanceUID),
                "series_instance_uid": str(ds.SeriesInstanceUID),
                "path": str(rel),
                "source_instance_id": obj.source_instance_id,
                "model_name": obj.model_name[:64],
                "model_version": obj.model_version[:64],
                "summary": jsonable(obj.summary),
            }
        )
    return rows
