"""Find the imaging field(s): from the DICOM ultrasound regions when given, else from the pixels.

Why: text, logos, grey bars and body markers mostly live outside the field; cropping first removes
most of them for free and gives every later output a simple offset back to source pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from sonopacs.cleaning.types import Region

# RegionDataType (DICOM PS3.3 C.8.5.5.1.2): 1 tissue, 2 colour flow, 3-12 spectra and traces,
# 13 grey bar, 14 colour bar
TISSUE_TYPES = {1}
DOPPLER_TYPES = {2}
BAR_TYPES = {13, 14}
DARK = 8  # mean grey level (over 4x4 blocks) under which a block counts as background


@dataclass
class Field:
    """One field of view: crop box (inclusive) in source pixels and the field mask inside it."""

    y0: int
    x0: int
    y1: int
    x1: int
    mask: np.ndarray  # bool, crop-shaped: pixels inside the imaging sector/rectangle
    source: str  # "regions" | "detected" | "whole"
    confidence: float
    spacing_mm: tuple[float, float] | None = None
    doppler_region: bool = False  # a colour-flow region overlaps this field
    bar_boxes: tuple[tuple[int, int, int, int], ...] = ()  # grey/colour-bar regions, crop coordinates


def _clip_region(r: Region, h: int, w: int, min_side: int = 8) -> tuple[int, int, int, int] | None:
    x0, x1 = sorted((int(r.x0), int(r.x1)))
    y0, y1 = sorted((int(r.y0), int(r.y1)))
    x0, y0 = max(0, x0), max(0, y0)
    x1, y1 = min(w - 1, x1), min(h - 1, y1)
    if x1 - x0 < min_side - 1 or y1 - y0 < min_side - 1:
        return None
    return y0, x0, y1, x1


def fields_from_regions(grey: np.ndarray, regions: Sequence[Region]) -> list[Field]:
    """2D tissue regions as fields, left to right; nested duplicates dropped; Doppler overlap noted."""
    h, w = grey.shape
    boxes: list[tuple[tuple[int, int, int, int], Region]] = []
    doppler: list[tuple[int, int, int, int]] = []
    bars: list[tuple[int, int, int, int]] = []
    for r in regions:
        if r.data_type in BAR_TYPES:  # the scanner says where its grey/colour bar is (any format)
            bar = _clip_region(r, h, w, min_side=1)
            if bar is not None:
                bars.append(bar)
        if r.spatial_format != 1:
            continue
        box = _clip_region(r, h, w)
        if box is None:
            continue
        if r.data_type in TISSUE_TYPES:
            boxes.append((box, r))
        elif r.data_type in DOPPLER_TYPES:
            doppler.append(box)
    kept: list[tuple[tuple[int, int, int, int], Region]] = []
    for box, r in sorted(boxes, key=lambda b: -(b[0][2] - b[0][0]) * (b[0][3] - b[0][1])):
        if any(_inside(box, k) for k, _ in kept):
            continue  # a tissue region nested in another is the same field
        kept.append((box, r))
    kept.sort(key=lambda b: (b[0][1], b[0][0]))
    out = []
    for (y0, x0, y1, x1), r in kept:
        # the scanner's region is the field: no pixel-based sector guess inside it (dark cysts and
        # fluid make that guess cut tissue); annotations inside are left to the detector
        mask = np.ones((y1 - y0 + 1, x1 - x0 + 1), bool)
        dop = any(_overlaps((y0, x0, y1, x1), d) for d in doppler)
        in_crop = tuple((max(b[0], y0) - y0, max(b[1], x0) - x0, min(b[2], y1) - y0, min(b[3], x1) - x0)
                        for b in bars if _overlaps((y0, x0, y1, x1), b))
        out.append(Field(y0, x0, y1, x1, mask, "regions", 0.95, r.spacing_mm, dop, in_crop))
    return out


def _inside(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] >= b[0] and a[1] >= b[1] and a[2] <= b[2] and a[3] <= b[3]


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def _field_mask(grey: np.ndarray, chroma: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Mask of the imaging sector/rectangle in `grey` and the fraction of the frame it fills.

    Works at quarter resolution: close the speckle into a solid blob, open away text lines and
    thin graphics, keep the largest blob and take its convex hull (a sector is convex; dark cysts
    and shadows inside it stay in).
    """
    h, w = grey.shape
    f = 4 if min(h, w) >= 200 else (2 if min(h, w) >= 60 else 1)
    small = cv2.resize(grey, (max(1, w // f), max(1, h // f)), interpolation=cv2.INTER_AREA)
    # background is the darkest level present (0-1 on most scanners); dim sector edges sit a few
    # grey levels above it, so the threshold follows the background, capped at DARK
    thr = min(DARK, max(2, int(np.percentile(small, 2)) + 2))
    fg_bool: np.ndarray = small > thr
    if chroma is not None:
        # flat coloured header bars and panels are not B-mode (a Doppler map is coloured but textured)
        size = (small.shape[1], small.shape[0])
        g32 = grey.astype(np.float32)
        var = cv2.resize(g32 * g32, size, interpolation=cv2.INTER_AREA) - cv2.resize(g32, size, interpolation=cv2.INTER_AREA) ** 2
        flat_colour = (cv2.resize(chroma, size, interpolation=cv2.INTER_AREA) >= 20) & (var < 9.0)
        fg_bool &= ~flat_colour
    fg = cv2.morphologyEx(fg_bool.astype(np.uint8), cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    k = max(3, min(9, min(small.shape) // 8) | 1)
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if n <= 1:
        return np.ones((h, w), dtype=bool), 0.0
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    contours, _ = cv2.findContours((labels == largest).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = cv2.convexHull(np.concatenate(contours))
    small_mask: np.ndarray = np.zeros(small.shape, dtype=np.uint8)
    cv2.fillConvexPoly(small_mask, hull, 1)
    # margin: the quarter-resolution border is coarse, and cutting tissue is worse than keeping a
    # little background; annotations in the margin are still found by the detector
    margin = max(1, min(small.shape) // 60)
    small_mask = cv2.dilate(small_mask, np.ones((2 * margin + 1, 2 * margin + 1), np.uint8))
    mask = cv2.resize(small_mask, (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
    return mask, float(mask.mean())


def detect_fields(grey: np.ndarray, chroma: np.ndarray | None = None) -> list[Field]:
    """Field from the pixels; the whole frame (low confidence) when nothing field-like stands out."""
    h, w = grey.shape
    lo, hi, _, _ = cv2.minMaxLoc(grey)
    if hi <= 2 * DARK or lo >= 250:
        return [Field(0, 0, h - 1, w - 1, np.ones((h, w), bool), "whole", 0.1)]
    mask, frac = _field_mask(grey, chroma)
    if frac < 0.02:
        return [Field(0, 0, h - 1, w - 1, np.ones((h, w), bool), "whole", 0.2)]
    ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    y0, y1, x0, x1 = int(ys[0]), int(ys[-1]), int(xs[0]), int(xs[-1])
    box_frac = (y1 - y0 + 1) * (x1 - x0 + 1) / (h * w)
    # confidence: a field that fills its box (rectangle or sector) and a sensible share of the frame
    solidity = frac / max(box_frac, 1e-6)
    conf = 0.5 + 0.4 * min(1.0, solidity / 0.6) * (1.0 if box_frac >= 0.1 else box_frac / 0.1)
    return [Field(y0, x0, y1, x1, mask[y0:y1 + 1, x0:x1 + 1], "detected", round(min(conf, 0.9), 2))]


def find_fields(grey: np.ndarray, regions: Sequence[Region] | None, chroma: np.ndarray | None = None) -> list[Field]:
    """Regions first (the scanner knows best), pixels otherwise."""
    if regions:
        fields = fields_from_regions(grey, regions)
        if fields:
            return fields
    return detect_fields(grey, chroma)


def crop_to_field(image: np.ndarray, regions: Sequence[Region] | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Cheap crop of the first field (no annotation removal): (crop, (row, column) offset).

    For training pipelines that only want the field and handle annotations by augmentation.
    """
    from sonopacs.cleaning.convert import grey_and_chroma, to_uint8

    img8 = to_uint8(np.asarray(image))
    grey, chroma = grey_and_chroma(img8)
    f = find_fields(grey, regions, chroma)[0]
    return np.asarray(image)[f.y0:f.y1 + 1, f.x0:f.x1 + 1], (f.y0, f.x0)
