"""`sonopacs analyze FILE... --out DIR`: the pipeline's clean -> analyze -> results on single files.

Same code path as the worker stages (worker.findings helpers), so the findings equal what the PACS
receives for the same image. Per input NAME: NAME.json, NAME_overlay.png, NAME_mask.png (0/255,
the input's own pixel geometry) and, for DICOM input, NAME_sc.dcm and NAME_sr.dcm, plus NAME_pr.dcm
and NAME_seg.dcm when pipeline.presentation_state / pipeline.segmentation are on (as in the PACS).
A bad file gives {"input": ..., "error": reason}, none of its partial outputs are left behind, and
the others still run. An optional output (PR, SEG) that cannot be made is named in the JSON's
"output_errors" and does not cost the input its other results.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
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
from sonopacs.dicom_node.results.presentation_state import build_presentation_state
from sonopacs.dicom_node.results.secondary_capture import build_secondary_capture
from sonopacs.dicom_node.results.segmentation import build_segmentation
from sonopacs.dicom_node.results.source_header import SourceHeaderError, make_conformant
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
            remove_outputs(out_dir, name)
            record = {"input": str(path), "error": reason}
            (out_dir / f"{name}.json").write_text(json.dumps(record, indent=2))
            results.append(record)
    return results


OUTPUT_SUFFIXES = ("_overlay.png", "_mask.png", "_sc.dcm", "_sr.dcm", "_pr.dcm", "_seg.dcm")


def remove_outputs(out_dir: Path, name: str) -> None:
    """Delete every image/DICOM output of NAME, so a failed input leaves only its error JSON."""
    for suffix in OUTPUT_SUFFIXES:
        (out_dir / f"{name}{suffix}").unlink(missing_ok=True)


def _unique_name(path: Path, used: set[str]) -> str:
    base = path.stem or path.name
    name, n = base, 1
    while name in used:
        n += 1
        name = f"{base}_{n}"
    used.add(name)
    return name


def load_input(
    path: Path, max_frames: int, uid_root: str, limits: PixelLimits | None = None
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
        try:
            make_conformant(ds)  # in memory: the input file is never rewritten
        except SourceHeaderError as exc:
            raise InputError(f"not analysed: {exc}") from exc
        frames = read_frames(ds, max_frames, limits)
        return ds, frames.indices, frames.images, read_regions(ds)
    if ds is not None:
        raise InputError("DICOM file without pixel data")
    try:
        with Image.open(path) as im:  # the header only: a pixel bomb is refused before it is decoded
            bomb = _over_limits(im, limits or PixelLimits())
            if bomb is None:
                im.load()
                image = _pil_to_array(im)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"neither DICOM nor a readable PNG/JPEG image: {exc}") from exc
    if bomb is not None:
        raise InputError(f"not decoded: {bomb}")
    return None, [0], [image], []


def _over_limits(im: Image.Image, limits: PixelLimits) -> str | None:
    try:
        limits.check(im.size[1], im.size[0], len(im.getbands()))
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
    ds, indices, frames, regions = load_input(
        path, settings.pipeline.max_frames, settings.pipeline.uid_root, PixelLimits.of(settings.dicom)
    )
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
        it.analysis = analysis_record(res, points, it.summary)
        arrays[it.order] = (result_mask(res), result_heatmap(res))
    best = pick_most_suspicious(items)
    frame = frames[indices.index(best.frame_index)]
    source = ds if ds is not None else _png_header(frame)
    finding = finding_from_record(
        source, best.frame_index, frame, best.analysed(), best.offset, *arrays[best.order]
    )
    outputs = _write_images(settings, finding, out_dir, name)
    errors: dict[str, str] = {}
    if ds is not None:
        dicom_outputs, errors = _write_dicom(settings, finding, out_dir, name)
        outputs.update(dicom_outputs)
    record = _json_record(path, finding, best, len(indices), outputs)
    if errors:
        record["output_errors"] = errors
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
    mask = np.zeros(finding.frame.shape[:2], bool)
    if finding.mask is not None and finding.assessed:
        mask = finding.mask
    Image.fromarray(mask.astype(np.uint8) * 255).save(out_dir / f"{name}_mask.png")
    return {"overlay": f"{name}_overlay.png", "mask": f"{name}_mask.png"}


def _write_dicom(
    settings: Settings, finding: ImageFinding, out_dir: Path, name: str
) -> tuple[dict[str, str], dict[str, str]]:
    """SC and SR (required), PR and SEG when the settings ask; (outputs, errors of optional ones)."""
    ident = identity(settings)
    source = finding.source
    rgb = render_overlay(finding, heatmap=settings.pipeline.heatmap)
    sc = build_secondary_capture(finding, rgb, ident, ident.new_uid(), SERIES_NUMBER_BASE["sc"], 1,
                                heatmap=settings.pipeline.heatmap)
    optional: dict[str, Dataset | None] = {}
    errors: dict[str, str] = {}
    if settings.pipeline.presentation_state:
        _optional(
            errors,
            optional,
            "pr",
            lambda: build_presentation_state(finding, ident, ident.new_uid(), SERIES_NUMBER_BASE["pr"], 1),
        )
    if settings.pipeline.segmentation:
        _optional(
            errors,
            optional,
            "seg",
            lambda: build_segmentation(finding, source, ident, ident.new_uid(), SERIES_NUMBER_BASE["seg"], 1),
        )
    header = source.copy()
    if "PixelData" in header:
        del header.PixelData
    finding.source = header
    sr = build_structured_report([finding], ident, ident.new_uid(), SERIES_NUMBER_BASE["sr"])
    outputs: dict[str, str] = {}
    for kind, ds in (("sc", sc), ("sr", sr), *optional.items()):
        if ds is None:
            continue  # e.g. no SEG without a lesion
        ds.save_as(out_dir / f"{name}_{kind}.dcm", enforce_file_format=True)
        outputs[kind] = f"{name}_{kind}.dcm"
    return outputs, errors


def _optional(
    errors: dict[str, str], built: dict[str, Dataset | None], kind: str, build: Callable[[], Dataset | None]
) -> None:
    """Build an optional output; one that raises is reported, never fatal for the input."""
    try:
        built[kind] = build()
    except Exception as exc:  # noqa: BLE001 - an optional output never costs the SC and SR
        errors[kind] = f"{type(exc).__name__}: {exc}"[:500]
        log.warning("%s not built: %s", kind.upper(), errors[kind])


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
