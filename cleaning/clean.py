"""clean_image: the one call training, inference and the pipeline make on every frame."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sonopacs.cleaning.annotations import PARAMS, DetectorParams, detect_annotations
from sonopacs.cleaning.convert import grey_and_chroma, rgb_max, to_uint8, validate
from sonopacs.cleaning.field import Field, find_fields
from sonopacs.cleaning.inpaint import flat_fill, inpaint
from sonopacs.cleaning.types import CleanResult, Region

DEFAULT_MAX_PIXELS = 50_000_000


def clean_image(
    image: np.ndarray,
    regions: Sequence[Region] | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    params: DetectorParams = PARAMS,
) -> list[CleanResult]:
    """Crop each 2D tissue field and remove burned-in annotations; one CleanResult per field.

    The result image is always grey uint8 HxW: B-mode is grey, and colour (overlay or Doppler) is
    either an annotation (removed) or flagged as `doppler` in the summary, never passed on as colour.
    Raises ValueError for input that cannot be an ultrasound frame.
    """
    img = validate(image, max_pixels)
    img8 = to_uint8(img)
    grey, chroma = grey_and_chroma(img8)
    fields = find_fields(grey, regions, chroma)
    value = rgb_max(img8) if chroma is not None else None
    results = [_clean_field(grey, chroma, value, f, params) for f in fields]
    if len(results) > 1:
        for r in results:
            _flags(r).append("dual_view")
    return results


def _flags(result: CleanResult) -> list[str]:
    flags = result.summary["flags"]
    assert isinstance(flags, list)
    return flags


def _clean_field(
    grey: np.ndarray, chroma: np.ndarray | None, value: np.ndarray | None, f: Field, params: DetectorParams
) -> CleanResult:
    box = (slice(f.y0, f.y1 + 1), slice(f.x0, f.x1 + 1))
    crop = grey[box]
    det = detect_annotations(
        crop, None if chroma is None else chroma[box], None if value is None else value[box], p=params
    )
    # Only what the detector found is removed. Blanking everything outside a detected sector was
    # tried and cut dim sector edges (SonoSite), so the field mask is reported, not applied.
    removed = det.mask
    flat = det.flat_fill
    kinds = list(det.kinds)
    if f.bar_boxes:  # bars the DICOM regions declare: removed whatever the pixels say
        flat = np.zeros(crop.shape, bool) if flat is None else flat.copy()
        for by0, bx0, by1, bx1 in f.bar_boxes:
            flat[by0:by1 + 1, bx0:bx1 + 1] = True
        removed = removed | flat
        if "scale_bar" not in kinds:
            kinds.append("scale_bar")
    cleaned = inpaint(crop, removed) if flat is None else inpaint(flat_fill(crop, flat), removed & ~flat)
    flags = list(det.flags)
    if f.doppler_region and "doppler" not in flags:
        flags.append("doppler")
    if removed.any():
        flags.append("text_in_field")
    n = int(removed.sum())
    confidence = f.confidence * (0.6 if "doppler" in flags else 1.0) * (0.5 if "noisy" in flags else 1.0)
    summary: dict[str, object] = {
        "pixels_removed": n,
        "fraction_removed": round(n / removed.size, 5),
        "kinds": kinds,
        "flags": flags,
        "field_source": f.source,
        "confidence": round(float(confidence), 3),
        "doppler_fraction": round(det.doppler_fraction, 4),
        "field_box": [f.y0, f.x0, f.y1, f.x1],
    }
    return CleanResult(cleaned, (f.y0, f.x0), removed, f.spacing_mm, summary, field_mask=f.mask)
