"""`sonopacs analyze FILE... --out DIR`: the pipeline's clean -> analyze -> results on single files.

Same code path as the worker stages (worker.findings helpers), so the findings equal what the PACS
receives for the same image. Per input NAME: NAME.json, NAME_overlay.png, NAME_mask.png (0/255,
the input's own pixel geometry) and, for DICOM input, NAME_sc.dcm and NAME_sr.dcm. A bad file
gives {"input": ..., "error": reason} and the others still run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from sonopacs.dicom_node.eligibility import skip_reason
from sonopacs.dicom_node.limits import PixelLimitError, PixelLimits
from sonopacs.dicom_node.pixels import read_frames
from sonopacs.dicom_node.regions import UltrasoundRegion, read_regions
from sonopacs.dicom_node.results.overlay_render import render_overlay
from sonopacs.dicom_node.results.secondary_capture import build_secondary_capture
from sonopacs.dicom_node.results.structured_report import build_structured_report
from sonopacs.dicom_node.results.types import DISCLAIMER, ImageFinding
from sonopacs.worker import findings
from sonopacs.worker.findings import (
    SERIES_NUMBER_BASE,
    analysis_record,
    clean_frame,
    finding_from_record,
    identity,
    pick_most_suspicious,
    result_heatmap,
    result_mask,
)
from sonopacs.worker.records import FieldRecord, jsonable

if TYPE_CHECKING:
    from sonopacs.config import Settings

log = logging.getLogger(__name__)


class InputError(ValueError):
    """This input cannot be analysed; the message is the reason reported for it."""


def analyze_files(settings: Settings, paths: list[Path], out_dir: Path) -> list[dict[str, Any]]:
    """Analyse each file; returns one JSON-able dict per input, in order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    analyzer = None
    results: list[dict[str, Any]] = []
    used: set[str] = set()
    for path in paths:
        name = _unique_name(path, used)
        try:
            if analyzer is None:
                analyzer = findings.get_analyzer(settings)  # via the module: one cache, patchable
            results.append(_analyze_one(settings, analyzer, path, out_dir, name))
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the others
            reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, InputError) else str(exc)
            log.warning("%s: %s", path, reason)
            record = {"input": str(path), "error": reason}
            (out_dir / f"{name}.json").write_text(json.dumps(record, indent=2))
            results.append(record)
    return results


def _unique_name(path: Path, used: set[str]) -> str:
    base = path.stem or path.name
    name, n = base, 1
    while name in used:
        n += 1
        name = f"{base}_{n}"
    used.add(name)
    return name


def load_input(
    path: Path, max_frames: int, uid_root: str
) -> tuple[Dataset | None, list[int], list[np.ndarray], list[UltrasoundRegion]]:
    """(DICOM header or None, frame indices, display frames, regions) for a DICOM or PNG/JPEG file."""
    if not path.is_file():
        raise InputError("no such file")
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        ds = None
    if ds is not None and "PixelData" in ds:
        reason = skip_reason(ds, uid_root)
        if reason is not None:
            raise InputError(f"not analysed: {reason}")
        frames = read_frames(ds, max_frames)
        return ds, frames.indices, frames.images, read_regions(ds)
    if ds is not None:
        raise InputError("DICOM file without pixel data")
    try:
        with Image.open(path) as im:  # the header only: a pixel bomb is refused before it is decoded
            bomb = _over_limits(im)
            if bomb is None:
                im.load()
                image = _pil_to_array(im)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"neither DICOM nor a readable PNG/JPEG image: {exc}") from exc
    if bomb is not None:
        raise InputError(f"not decoded: {bomb}")
    return None, [0], [image], []


def _over_limits(im: Image.Image) -> str | None:
    try:
        PixelLimits().check(im.size[1], im.size[0], len(im.getbands()))
    except PixelLimitError as exc:
        return str(exc)
    return None


def _pil_to_array(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        return np.asarray(im).astype(np.uint16)
    if im.mode in ("L", "RGB"):
        return np.asarray(im)
    return np.asarray(im.convert("RGB"))


def _analyze_one(settings: Settings, analyzer: Any, path: Path, out_dir: Path, name: str) -> dict[str, Any]:
    ds, indices, frames, regions = load_input(path, settings.pipeline.max_frames, settings.pipeline.uid_root)
    items: list[FieldRecord] = []
    crops: list[np.ndarray] = []
    for frame_index, frame in zip(indices, frames, strict=True):
        for field_index, (result, spacing) in enumerate(clean_frame(frame, regions)):
            items.append(
                FieldRecord(
                    order=len(items),
                    frame_index=frame_index,
                    field_index=field_index,
                    offset=(int(result.offset[0]), int(result.offset[1])),
                    spacing_mm=spacing,
                    summary=jsonable(result.summary),
                )
            )
            crops.append(result.image)
    if not items:
        raise InputError("cleaning found no ultrasound field")
    analyses = analyzer.analyze_batch(crops, [it.spacing_mm for it in items])
    points = dict(getattr(analyzer, "operating_points", {}) or {})
    arrays: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
    for it, res in zip(items, analyses, strict=True):
        it.analysis = analysis_record(res, points)
        arrays[it.order] = (result_mask(res), result_heatmap(res))
    best = pick_most_suspicious(items)
    frame = frames[indices.index(best.frame_index)]
    source = ds if ds is not None else _png_header(frame)
    finding = finding_from_record(source, best.frame_index, frame, best.analysed(), best.offset, *arrays[best.order])
    outputs = _write_images(settings, finding, out_dir, name)
    if ds is not None:
        outputs.update(_write_dicom(settings, finding, out_dir, name))
    record = _json_record(path, finding, best, len(indices), outputs)
    (out_dir / f"{name}.json").write_text(json.dumps(record, indent=2))
    return record


def _png_header(frame: np.ndarray) -> Dataset:
    """A minimal header so the renderer knows the geometry of a non-DICOM input."""
    ds = Dataset()
    ds.Rows, ds.Columns = frame.shape[:2]
    return ds


def _write_images(settings: Settings, finding: ImageFinding, out_dir: Path, name: str) -> dict[str, str]:
    overlay = render_overlay(finding, heatmap=settings.pipeline.heatmap)
    Image.fromarray(overlay).save(out_dir / f"{name}_overlay.png")
    mask = finding.mask if finding.mask is not None else np.zeros(finding.frame.shape[:2], bool)
    Image.fromarray(mask.astype(np.uint8) * 255).save(out_dir / f"{name}_mask.png")
    return {"overlay": f"{name}_overlay.png", "mask": f"{name}_mask.png"}


def _write_dicom(settings: Settings, finding: ImageFinding, out_dir: Path, name: str) -> dict[str, str]:
    ident = identity(settings)
    rgb = render_overlay(finding, heatmap=settings.pipeline.heatmap)
    sc = build_secondary_capture(finding, rgb, ident, ident.new_uid(), SERIES_NUMBER_BASE["sc"], 1)
    sc.save_as(out_dir / f"{name}_sc.dcm", enforce_file_format=True)
    header = finding.source.copy()
    if "PixelData" in header:
        del header.PixelData
    finding.source = header
    sr = build_structured_report([finding], ident, ident.new_uid(), SERIES_NUMBER_BASE["sr"])
    sr.save_as(out_dir / f"{name}_sr.dcm", enforce_file_format=True)
    return {"sc": f"{name}_sc.dcm", "sr": f"{name}_sr.dcm"}


def _json_record(
    path: Path, finding: ImageFinding, item: FieldRecord, n_frames: int, outputs: dict[str, str]
) -> dict[str, Any]:
    analysis = item.analysed()
    lesion = analysis.lesion if finding.assessed else None
    return {
        "input": str(path),
        "label": finding.label,
        "assessed": finding.assessed,
        "not_assessed_reason": finding.not_assessed_reason,
        "likelihood_category": finding.likelihood_category,
        "likelihood_category_note": "AI likelihood category, not a BI-RADS assessment",
        "probabilities": finding.probabilities,
        "malignancy_probability": finding.malignancy_probability,
        "decisions": finding.decisions,
        "operating_points": analysis.operating_points,
        "uncertainty": finding.uncertainty,
        "lesion": None
        if lesion is None
        else {
            "long_axis_mm": finding.long_axis_mm,
            "short_axis_mm": finding.short_axis_mm,
            "area_mm2": finding.area_mm2,
            "long_axis_px": lesion.long_axis_px,
            "short_axis_px": lesion.short_axis_px,
            "area_px": lesion.area_px,
        },
        "spacing_mm": list(item.spacing_mm) if item.spacing_mm else None,
        "frame_index": finding.frame_index,
        "frames_analyzed": n_frames,
        "field_index": item.field_index,
        "crop_offset": list(item.offset),
        "cleaning": item.summary,
        "model": {"name": finding.model_name, "version": finding.model_version},
        "outputs": outputs,
        "disclaimer": DISCLAIMER,
    }
