"""One code path from a decoded frame to a finding, shared by the pipeline stages and `sonopacs analyze`.

Cleaning, the cached Analyzer, the JSON record of a result and the ImageFinding the DICOM writers
take all live here, so a study in the PACS and a file given to `analyze` get the same answer.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.dataset import Dataset

from sonopacs.dicom_node.eligibility import region_scope_reason, scope_reason
from sonopacs.dicom_node.regions import UltrasoundRegion, spacing_at
from sonopacs.dicom_node.results.types import ImageFinding, ResultIdentity
from sonopacs.worker.records import AnalysisRecord, FieldRecord, LesionRecord

if TYPE_CHECKING:
    from sonopacs.cleaning import CleanResult, Region
    from sonopacs.config import Settings
    from sonopacs.models import AnalysisResult


log = logging.getLogger(__name__)

SERIES_NUMBER_BASE = {"sc": 9100, "sr": 9200, "pr": 9300, "seg": 9400}

_ANALYZERS: dict[tuple[str, ...], Any] = {}
_ANALYZER_LOCK = threading.Lock()


def get_analyzer(settings: Settings) -> Any:
    """The models.Analyzer for these settings (weights, device, expected normal fraction, site
    calibration, scope gate), loaded once per process (weights are large)."""
    m = settings.model
    key = tuple(str(v) for v in (m.weights_dir or "", m.device, m.expected_normal_fraction,
                                 m.site_calibration or "", m.scope_gate))
    with _ANALYZER_LOCK:
        if key not in _ANALYZERS:
            from sonopacs.models import Analyzer

            _ANALYZERS[key] = Analyzer.from_settings(m)
        return _ANALYZERS[key]


def identity(settings: Settings) -> ResultIdentity:
    """Our identity on every object: UID root from settings, software version of the package."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        software = version("sonopacs")
    except PackageNotFoundError:
        software = "0.1.0"
    return ResultIdentity(uid_root=settings.pipeline.uid_root, software_version=software)


def to_cleaning_regions(regions: list[UltrasoundRegion]) -> list[Region] | None:
    from sonopacs.cleaning import Region

    if not regions:
        return None
    return [
        Region(
            x0=r.x0,
            y0=r.y0,
            x1=r.x1,
            y1=r.y1,
            spatial_format=r.spatial_format,
            data_type=r.data_type,
            spacing_mm=r.spacing_mm,
        )
        for r in regions
    ]


def clean_frame(
    frame: np.ndarray, regions: list[UltrasoundRegion]
) -> list[tuple[CleanResult, tuple[float, float] | None]]:
    """The one cleaning path (models.clean.clean_for_model, regions when the source has them) on one
    frame; each field with the spacing to measure in (cleaning's, else the region's).

    Raises models.clean.CleaningFailed (a ValueError) when cleaning finds no field: no fallback.
    A field the regions or its colour content put out of scope carries
    ``summary["not_assessed_reason"]``; ``analysis_record`` / ``pick_most_suspicious`` honour it.
    """
    from sonopacs.models.clean import clean_for_model
    from sonopacs.models.scope import colour_reason

    out = []
    header_reason = region_scope_reason(regions)
    for result in clean_for_model(frame, to_cleaning_regions(regions)):
        reason = header_reason or colour_reason(result.summary)
        if reason is not None:
            result.summary["not_assessed_reason"] = reason
        spacing = result.spacing_mm
        if spacing is None and regions:
            h, w = result.image.shape[:2]
            spacing = spacing_at(regions, result.offset[0] + h / 2, result.offset[1] + w / 2)
        out.append((result, (float(spacing[0]), float(spacing[1])) if spacing is not None else None))
    return out


def analysis_record(
    result: AnalysisResult, operating_points: dict[str, float] | None = None, summary: dict[str, Any] | None = None
) -> AnalysisRecord:
    """A models.AnalysisResult as a record (mask and heat map are stored separately); a field whose
    cleaning summary names a ``not_assessed_reason`` is recorded as not assessed."""
    lesion = result.lesion
    measured = None
    reason = (summary or {}).get("not_assessed_reason")
    if reason and result.assessed:
        from sonopacs.models.analyzer import mark_not_assessed

        mark_not_assessed(result, str(reason))
    if lesion is not None and int(lesion.area_px) > 0 and result.assessed:
        measured = LesionRecord(
            area_px=int(lesion.area_px),
            long_axis_px=float(lesion.long_axis_px),
            short_axis_px=float(lesion.short_axis_px),
            long_axis_endpoints=_point_pair(lesion.long_axis_endpoints),
            short_axis_endpoints=_point_pair(lesion.short_axis_endpoints),
            contour=[(float(r), float(c)) for r, c in lesion.contour],
            long_axis_mm=_opt_float(lesion.long_axis_mm),
            short_axis_mm=_opt_float(lesion.short_axis_mm),
            area_mm2=_opt_float(lesion.area_mm2),
        )
    return AnalysisRecord(
        label=result.label,
        probabilities={k: float(v) for k, v in result.probabilities.items()},
        malignancy_probability=float(result.malignancy_probability),
        decisions={k: bool(v) for k, v in result.decisions.items()},
        operating_points={k: float(v) for k, v in (operating_points or {}).items()},
        uncertainty=float(result.uncertainty),
        model_name=str(result.model_name),
        model_version=str(result.model_version),
        lesion=measured,
        assessed=bool(result.assessed),
        not_assessed_reason=result.not_assessed_reason,
        likelihood_category=result.likelihood_category,
    )


def not_assessed(record: AnalysisRecord, reason: str) -> AnalysisRecord:
    """A copy of ``record`` marked not assessed: no lesion, no decision, no category."""
    return record.model_copy(update={
        "assessed": False, "not_assessed_reason": reason, "lesion": None, "likelihood_category": None,
        "decisions": {k: False for k in record.decisions}})


def _point_pair(points: Any) -> tuple[tuple[float, float], tuple[float, float]]:
    (a0, a1), (b0, b1) = points
    return (float(a0), float(a1)), (float(b0), float(b1))


def result_mask(result: AnalysisResult) -> np.ndarray:
    """The lesion mask as bool (all False when the model gives none)."""
    if result.mask is None:
        return np.zeros(np.asarray(result.heatmap).shape[:2], bool)
    return np.asarray(result.mask).astype(bool)


def result_heatmap(result: AnalysisResult) -> np.ndarray | None:
    """The heat map as float16 (storage), or None when the model gives none."""
    return None if result.heatmap is None else np.asarray(result.heatmap, np.float16)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def finding_from_record(
    source: Dataset,
    frame_index: int,
    frame: np.ndarray,
    record: AnalysisRecord,
    offset: tuple[int, int],
    mask: np.ndarray | None,
    heatmap: np.ndarray | None,
) -> ImageFinding:
    """Map one analysed crop back onto the full source frame (offset = crop's top-left row, col).

    The header's scope evidence (dicom_node.eligibility.scope_reason) is applied here, where the
    source is at hand: a not-assessed finding has no mask, contour or axes.
    """
    reason = scope_reason(source) if record.assessed else None
    if reason is not None:
        record = not_assessed(record, reason)
    if not record.assessed:
        mask = heatmap = None
    oy, ox = int(offset[0]), int(offset[1])
    rows, cols = frame.shape[:2]

    def place(small: np.ndarray | None, dtype: Any) -> np.ndarray | None:
        if small is None:
            return None
        full = np.zeros((rows, cols), dtype)
        h, w = min(small.shape[0], rows - oy), min(small.shape[1], cols - ox)
        full[oy : oy + h, ox : ox + w] = small[:h, :w]
        return full

    def shift(p: Any) -> tuple[float, float]:
        return (float(p[0]) + oy, float(p[1]) + ox)

    lesion = record.lesion
    return ImageFinding(
        source=source,
        frame_index=frame_index,
        frame=frame,
        label=record.label,
        probabilities=record.probabilities,
        malignancy_probability=record.malignancy_probability,
        decisions=record.decisions,
        model_name=record.model_name,
        model_version=record.model_version,
        mask=place(mask.astype(bool) if mask is not None else None, bool),
        heatmap=place(heatmap.astype(np.float32) if heatmap is not None else None, np.float32),
        contour=[shift(p) for p in lesion.contour] if lesion else [],
        long_axis=(shift(lesion.long_axis_endpoints[0]), shift(lesion.long_axis_endpoints[1])) if lesion else None,
        short_axis=(shift(lesion.short_axis_endpoints[0]), shift(lesion.short_axis_endpoints[1]))
        if lesion
        else None,
        long_axis_mm=lesion.long_axis_mm if lesion else None,
        short_axis_mm=lesion.short_axis_mm if lesion else None,
        area_mm2=lesion.area_mm2 if lesion else None,
        uncertainty=record.uncertainty,
        assessed=record.assessed,
        not_assessed_reason=record.not_assessed_reason,
        likelihood_category=record.likelihood_category,
    )


def pick_most_suspicious(items: list[FieldRecord]) -> FieldRecord:
    """The analysed field/frame reported for an instance: assessed fields first, then the highest
    P(malignant), earliest on ties. A field whose cleaning summary names a not-assessed reason is
    marked so first (the same rule ``analysis_record`` applies when it is given the summary)."""
    for it in items:
        reason = it.summary.get("not_assessed_reason")
        if reason and it.analysed().assessed:
            it.analysis = not_assessed(it.analysed(), str(reason))
    return max(items, key=lambda it: (it.analysed().assessed, it.analysed().malignancy_probability, -it.order))


def summary_of(finding: ImageFinding, item: FieldRecord) -> dict[str, Any]:
    """What the dashboard and tests read from a ResultObject row."""
    return {
        "source_sop_instance_uid": str(finding.source.SOPInstanceUID),
        "frame_index": finding.frame_index,
        "label": finding.label,
        "probabilities": finding.probabilities,
        "malignancy_probability": finding.malignancy_probability,
        "decisions": finding.decisions,
        "assessed": finding.assessed,
        "not_assessed_reason": finding.not_assessed_reason,
        "likelihood_category": finding.likelihood_category,
        "long_axis_mm": finding.long_axis_mm,
        "short_axis_mm": finding.short_axis_mm,
        "area_mm2": finding.area_mm2,
        "spacing_mm": list(item.spacing_mm) if item.spacing_mm else None,
        "cleaning": item.summary,
    }
