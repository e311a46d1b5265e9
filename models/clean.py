"""Cleaning as the model sees it: ``sonopacs.cleaning.clean_image`` when that package provides it, else a
minimal private field-of-view crop.

Training, evaluation and the pipeline must clean identically; routing every model-side call
through ``clean_for_model`` keeps that true whichever implementation is present.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from sonopacs.cleaning import clean_image

log = logging.getLogger(__name__)


@dataclass
class Cleaned:
    image: np.ndarray
    offset: tuple[int, int]  # (row, col) of the crop in the source image
    spacing_mm: tuple[float, float] | None = None
    summary: dict[str, object] = field(default_factory=dict)


def _fallback_crop(image: np.ndarray, threshold: int = 8) -> Cleaned:
    """Crop to the bounding box of rows/columns holding non-dark pixels (drops black borders)."""
    gray = image if image.ndim == 2 else image[..., :3].max(axis=2)
    rows = np.flatnonzero((gray > threshold).mean(axis=1) > 0.02)
    cols = np.flatnonzero((gray > threshold).mean(axis=0) > 0.02)
    if rows.size < 16 or cols.size < 16:
        return Cleaned(image, (0, 0), summary={"field_source": "whole", "implementation": "models-fallback"})
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    return Cleaned(
        image[r0:r1, c0:c1],
        (r0, c0),
        summary={"field_source": "detected", "implementation": "models-fallback"},
    )


def clean_for_model(image: np.ndarray) -> Cleaned:
    """Clean one image for the model: the cleaning package's first result, or the fallback crop."""
    try:
        results = clean_image(image)
    except Exception as exc:  # cleaning must never stop an analysis; say what happened
        log.warning("cleaning failed (%s); using the field-crop fallback", exc)
        c = _fallback_crop(image)
        c.summary["cleaning_error"] = str(exc)
        return c
    if not results:
        return _fallback_crop(image)
    r = results[0]
    summary = dict(r.summary)
    summary.setdefault("implementation", "cleaning")
    return Cleaned(r.image, tuple(r.offset), r.spacing_mm, summary)  # type: ignore[arg-type]
