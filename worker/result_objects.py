"""Every result object of one publish, built in memory before anything is written.

Why apart from the stage bodies: this is the part that decides what one bad instance or one failing
optional output costs (only itself), and what a machine fault costs (the whole try, retried). Each
instance's SC is built on its own; an optional PR or SEG that cannot be made is left out and noted;
the study's SR is made from every instance that got its SC, leaving out one that breaks it.
"""

from __future__ import annotations

import errno
import io
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from sonopacs.db import Instance, InstanceState
from sonopacs.dicom_node.limits import PixelLimits
from sonopacs.dicom_node.pixels import read_frame
from sonopacs.dicom_node.results.overlay_render import render_overlay
from sonopacs.dicom_node.results.presentation_state import build_presentation_state
from sonopacs.dicom_node.results.secondary_capture import build_secondary_capture
from sonopacs.dicom_node.results.segmentation import build_segmentation
from sonopacs.dicom_node.results.source_header import make_conformant, restore_classes, with_current_class
from sonopacs.dicom_node.results.structured_report import build_structured_report, most_suspicious
from sonopacs.dicom_node.results.types import ImageFinding, ResultIdentity
from sonopacs.dicom_node.storage import stored_file, write_durably
from sonopacs.worker.findings import SERIES_NUMBER_BASE, finding_from_record, pick_most_suspicious, summary_of
from sonopacs.worker.records import FieldRecord, jsonable
from sonopacs.worker.state import describe

if TYPE_CHECKING:
    from sonopacs.config import Settings
    from sonopacs.db import Database

log = logging.getLogger(__name__)


@dataclass
class Built:
    """One object of this run, built in memory before anything is written."""

    kind: str  # sc, sr, pr, seg
    ds: Dataset
    source_instance_id: int | None
    summary: dict[str, Any]
    model_name: str
    model_version: str
    data: bytes  # the Part 10 encoding, made while building: an object that cannot be written fails there


def encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@dataclass
class PublishRun:
    """What one publish built, and how each analysed instance ended (state, reason)."""

    built: list[Built] = field(default_factory=list)
    outcomes: dict[int, tuple[InstanceState, str | None]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # source SOP Instance UID -> reason
    optional_failures: list[dict[str, str]] = field(default_factory=list)
    header_repairs: dict[str, list[str]] = field(default_factory=dict)

    def detail(self) -> dict[str, Any]:
        """Job detail: only what went wrong or was repaired (the dashboard shows it)."""
        out: dict[str, Any] = {}
        if self.failed:
            out["failed_instances"] = dict(list(self.failed.items())[:50])
        if self.optional_failures:
            out["optional_failures"] = self.optional_failures[:50]
        if self.header_repairs:
            out["header_repairs"] = dict(list(self.header_repairs.items())[:50])
        return out

    def note(self, instance_id: int, text: str) -> None:
        """Add a reason to an instance that still got its SC (a missing PR/SEG, left out of the SR)."""
        state, reason = self.outcomes.get(instance_id, (InstanceState.PROCESSED, None))
        self.outcomes[instance_id] = (state, f"{reason}; {text}" if reason else text)


_MACHINE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def reraise_if_machine(exc: BaseException) -> None:
    """Trouble of the machine (disk full, memory, database) is the task's to retry, not the image's fault."""
    if isinstance(exc, MemoryError | SQLAlchemyError) or (
        isinstance(exc, OSError) and exc.errno in _MACHINE_ERRNOS
    ):
        raise exc


def build_objects(
    settings: Settings,
    db: Database,
    work: Path,
    by_instance: dict[int, list[FieldRecord]],
    ident: ResultIdentity,
    generation: int,
) -> PublishRun:
    """Every object of this run, all in memory.

    Each instance is built on its own: one whose SC cannot be made fails alone with the reason, an
    optional PR or SEG that cannot be made is left out and noted, and the SR is made from every
    instance that got its SC (one that breaks the SR is left out of it, with the reason).
    """
    with db.session() as session:
        rows = session.execute(
            select(Instance.id, Instance.path, Instance.sop_instance_uid).where(
                Instance.id.in_(list(by_instance))
            )
        ).all()
    paths = {row[0]: row[1] for row in rows}
    uids = {row[0]: str(row[2]) for row in rows}
    series = {kind: ident.new_uid() for kind in SERIES_NUMBER_BASE}
    numbers = {kind: base + generation % 100 for kind, base in SERIES_NUMBER_BASE.items()}
    run = PublishRun()
    findings: dict[int, ImageFinding] = {}
    for number, (instance_id, its) in enumerate(by_instance.items(), start=1):
        uid = uids.get(instance_id, str(instance_id))
        try:
            ds, finding, sc, summary, sc_data = _build_sc(
                settings, work, paths[instance_id], its, ident, series, numbers, number, run, uid
            )
        except Exception as exc:  # noqa: BLE001 - one bad instance never costs the others their results
            reraise_if_machine(exc)
            reason = f"result not built: {describe(exc)}"
            log.warning("instance %s: %s", uid, reason)
            run.failed[uid] = reason
            run.outcomes[instance_id] = (InstanceState.FAILED, reason)
            continue
        model = (finding.model_name, finding.model_version)
        run.built.append(Built("sc", sc, instance_id, summary, *model, sc_data))
        findings[instance_id] = finding
        if finding.assessed:
            run.outcomes[instance_id] = (InstanceState.PROCESSED, None)
        else:
            run.outcomes[instance_id] = (
                InstanceState.NOT_ASSESSED,
                f"not assessed: {finding.not_assessed_reason or 'no reason given'}",
            )
        optional = [
            kind
            for kind, on in (
                ("pr", settings.pipeline.presentation_state),
                ("seg", settings.pipeline.segmentation),
            )
            if on
        ]
        for kind in optional:
            try:
                if kind == "pr":
                    obj = build_presentation_state(finding, ident, series["pr"], numbers["pr"], number)
                else:
                    obj = build_segmentation(finding, ds, ident, series["seg"], numbers["seg"], number)
                data = encode(obj) if obj is not None else b""
            except Exception as exc:  # noqa: BLE001 - an optional output never costs the SC and SR
                reraise_if_machine(exc)
                reason = f"{kind.upper()} not built: {describe(exc)}"
                log.warning("instance %s: %s", uid, reason)
                run.optional_failures.append({"sop_instance_uid": uid, "kind": kind, "reason": reason[:500]})
                run.note(instance_id, reason)
                continue
            if obj is not None:
                run.built.append(Built(kind, obj, instance_id, summary, *model, data))
    if findings:
        for f in findings.values():  # the SR only needs headers; drop pixel data held by the sources
            if "PixelData" in f.source:
                del f.source.PixelData
        report = _build_report(findings, ident, series["sr"], numbers["sr"], run)
        if report is not None:
            run.built.append(report)
    return run


def _build_sc(
    settings: Settings,
    work: Path,
    raw_path: str,
    its: list[FieldRecord],
    ident: ResultIdentity,
    series: dict[str, str],
    numbers: dict[str, int],
    number: int,
    run: PublishRun,
    uid: str,
) -> tuple[Dataset, ImageFinding, Dataset, dict[str, Any], bytes]:
    """(source with pixels, finding, SC, summary, SC bytes) of one instance; raises when its SC cannot be made."""
    best = pick_most_suspicious(its)
    ds = pydicom.dcmread(stored_file(settings.storage.root, raw_path))
    repairs = make_conformant(ds)  # in memory only: the received file is never rewritten
    if repairs:
        run.header_repairs[uid] = repairs[:20]
    frame = read_frame(ds, best.frame_index, PixelLimits.of(settings.dicom))
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
    summary = summary_of(finding, best)
    rgb = render_overlay(finding, heatmap=settings.pipeline.heatmap)
    sc = build_secondary_capture(finding, rgb, ident, series["sc"], numbers["sc"], number,
                                heatmap=settings.pipeline.heatmap)
    return ds, finding, sc, summary, encode(sc)


def _current_class_stand_ins(
    findings: dict[int, ImageFinding],
) -> tuple[dict[int, ImageFinding], dict[str, str]]:
    """Findings whose retired-class sources are replaced by stand-ins, and their true classes by UID."""
    out: dict[int, ImageFinding] = {}
    retired: dict[str, str] = {}
    for instance_id, finding in findings.items():
        stand_in = with_current_class(finding.source)
        if stand_in is None:
            out[instance_id] = finding
            continue
        retired[str(finding.source.SOPInstanceUID)] = str(finding.source.SOPClassUID)
        out[instance_id] = replace(finding, source=stand_in)
    return out, retired


def _build_report(
    findings: dict[int, ImageFinding],
    ident: ResultIdentity,
    series_uid: str,
    series_number: int,
    run: PublishRun,
) -> Built | None:
    """The study's SR over every finding; a finding that breaks it is left out, with the reason."""
    findings, retired = _current_class_stand_ins(findings)

    def make(group: list[ImageFinding]) -> tuple[Dataset, bytes]:
        sr = build_structured_report(group, ident, series_uid, series_number)
        restore_classes(sr, retired)
        return sr, encode(sr)

    kept = dict(findings)
    try:
        sr, data = make(list(kept.values()))
    except Exception as exc:  # noqa: BLE001 - find the instance(s) that break it, keep the others
        reraise_if_machine(exc)
        log.warning("study report failed (%s); finding the image that breaks it", describe(exc))
        for instance_id, finding in findings.items():
            try:
                make([finding])
            except Exception as alone:  # noqa: BLE001
                reraise_if_machine(alone)
                reason = f"left out of the study report: {describe(alone)}"
                run.note(instance_id, reason)
                uid = str(finding.source.SOPInstanceUID)
                run.optional_failures.append({"sop_instance_uid": uid, "kind": "sr", "reason": reason[:500]})
                del kept[instance_id]
        if not kept or len(kept) == len(findings):
            for instance_id in kept:
                run.note(instance_id, f"no study report: {describe(exc)}")
            return None
        try:
            sr, data = make(list(kept.values()))
        except Exception as again:  # noqa: BLE001
            reraise_if_machine(again)
            for instance_id in kept:
                run.note(instance_id, f"no study report: {describe(again)}")
            return None
    included = list(kept.values())
    top = most_suspicious(included)
    return Built(
        "sr",
        sr,
        None,
        {
            "most_suspicious_sop_instance_uid": str(top.source.SOPInstanceUID),
            "label": top.label,
            "malignancy_probability": top.malignancy_probability,
            "n_images": len(included),
            "images": {
                str(f.source.SOPInstanceUID): {
                    "label": f.label,
                    "malignancy_probability": f.malignancy_probability,
                }
                for f in included
            },
        },
        top.model_name,
        top.model_version,
        data,
    )


def write_objects(settings: Settings, study_uid: str, built: list[Built]) -> list[dict[str, Any]]:
    """Write each object durably under STORAGE/results/<study>/<series>/ and describe its row."""
    rows = []
    for obj in built:
        ds = obj.ds
        rel = Path("results") / study_uid / str(ds.SeriesInstanceUID) / f"{ds.SOPInstanceUID}.dcm"
        # durable (rename and folder fsync'ed) before the row that points at it is committed
        write_durably(settings.storage.root / rel, obj.data)
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
