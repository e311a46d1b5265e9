"""Detect burned-in annotations inside a field: bright thin graphics (text, calipers, lines, markers)
and coloured overlay pixels; flag colour Doppler instead of erasing it.

Why this design: overlays are drawn with one flat colour in strokes a few pixels wide, brighter than
what is around them; tissue speckle is blurred by the beam and rarely both bright, flat and thin.
A white top-hat finds thin bright strokes, hysteresis grows them to their antialiased fringe, and a
component test rejects isolated speckle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

_ELLIPSE9 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9))
_CROSS3 = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


@dataclass
class Detection:
    mask: np.ndarray  # bool, pixels to remove
    kinds: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    doppler_fraction: float = 0.0


def _bright_strokes(grey: np.ndarray, strong_th: int, weak_th: int, min_grey: int) -> np.ndarray:
    """Thin bright structures: top-hat seeds grown by hysteresis into their weaker fringe."""
    background = cv2.morphologyEx(grey, cv2.MORPH_OPEN, _ELLIPSE9)
    tophat = cv2.subtract(grey, background)
    strong = ((tophat >= strong_th) & (grey >= min_grey)).astype(np.uint8)
    weak = (tophat >= weak_th).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(weak, connectivity=8)
    if n <= 1:
        return np.zeros(grey.shape, bool)
    seeds = np.bincount(labels.ravel(), weights=strong.ravel(), minlength=n)
    area = stats[:, cv2.CC_STAT_AREA]
    bw = stats[:, cv2.CC_STAT_WIDTH]
    bh = stats[:, cv2.CC_STAT_HEIGHT]
    # keep components with enough strong pixels that are stroke-like (sparse in their box) or big
    fill = area / np.maximum(1, bw * bh)
    keep = (seeds >= 4) & ((fill < 0.6) | (area >= 40))
    keep[0] = False
    return keep[labels]


def _colour_overlay(chroma: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split coloured pixels into small overlay graphics and large Doppler/elastography areas."""
    coloured = ((chroma >= 40) & valid).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(coloured, connectivity=8)
    if n <= 1:
        z = np.zeros(chroma.shape, bool)
        return z, z
    area = stats[:, cv2.CC_STAT_AREA]
    bw = stats[:, cv2.CC_STAT_WIDTH]
    bh = stats[:, cv2.CC_STAT_HEIGHT]
    fill = area / np.maximum(1, bw * bh)
    big = (area >= max(400, 0.004 * chroma.size)) & (fill >= 0.15)
    big[0] = False
    small = ~big
    small[0] = False
    return small[labels], big[labels]


def detect_annotations(grey: np.ndarray, chroma: np.ndarray | None, valid: np.ndarray | None = None) -> Detection:
    """Annotation mask for one field crop; `valid` is the imaging-field mask (None = whole crop)."""
    if valid is None:
        valid = np.ones(grey.shape, bool)
    mask = _bright_strokes(grey, strong_th=60, weak_th=30, min_grey=140) & valid
    kinds: list[str] = []
    flags: list[str] = []
    dop_frac = 0.0
    if mask.any():
        kinds.append("bright_graphics")
    if chroma is not None:
        overlay, doppler = _colour_overlay(chroma, valid)
        if overlay.any():
            kinds.append("colour_graphics")
            mask |= overlay
        dop_frac = float(doppler.sum() / max(1, valid.sum()))
        if dop_frac >= 0.01:
            flags.append("doppler")
        mask &= ~doppler  # never inpaint Doppler: it is flagged, not hidden
    if mask.any():
        mask = cv2.dilate(mask.astype(np.uint8), _CROSS3).astype(bool) & valid
    return Detection(mask, kinds, flags, dop_frac)
