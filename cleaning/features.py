"""Candidate overlay components and their shape/intensity features.

Why components rather than pixels: an overlay glyph or caliper is one connected stroke of flat colour
with sharp edges; deciding per component (a few hundred per frame) is cheap and can use shape,
flatness and edge sharpness, which single pixels cannot show.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

SEED_TOPHAT = 30  # grey levels above the local opening: where a stroke can start
SEED_LOCAL = 2.0  # ... and at least this many times the mean top-hat of its 15x15 neighbourhood
COLOUR_CHROMA = 40  # max-min over RGB above which a pixel is coloured overlay (or Doppler)

FEATURE_NAMES = [
    "log_area", "width", "height", "fill", "elongation", "aspect_wh",
    "mean_tophat", "max_tophat", "mean_grey", "max_grey", "std_grey", "plateau",
    "mean_grad_over_tophat", "thin_ratio", "ring_contrast", "ring_std",
    "mean_chroma", "seed_density", "frame_p99", "frame_tophat_p90", "background",
]
FEATURE = {name: column for column, name in enumerate(FEATURE_NAMES)}  # column of a feature by its name

_E5 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
_E9 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9))


@dataclass
class Candidates:
    labels: np.ndarray  # int32 HxW, 0 = no candidate
    n: int  # number of labels including background 0
    features: np.ndarray  # (n-1, len(FEATURE_NAMES)) float32, row i is label i+1
    tophat: np.ndarray  # uint8 HxW, grey - opening(9x9): used to grow accepted strokes
    boxes: np.ndarray  # (n-1, 4) int: x, y, width, height of each component


def _per_label_max(values: np.ndarray, lab: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n, dtype=np.float64)
    np.maximum.at(out, lab, values)
    return out


def _sobel_at(grey: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """(|Sobel x| + |Sobel y|) / 8 at the flat indices idx only (same borders as cv2.Sobel)."""
    h, w = grey.shape
    p = np.pad(grey, 1, mode="reflect").astype(np.int32)  # numpy 'reflect' = OpenCV BORDER_REFLECT_101
    y, x = np.divmod(idx, w)
    y += 1
    x += 1

    def at(dy: int, dx: int) -> np.ndarray:
        return p[y + dy, x + dx]

    gx = (at(-1, 1) + 2 * at(0, 1) + at(1, 1)) - (at(-1, -1) + 2 * at(0, -1) + at(1, -1))
    gy = (at(1, -1) + 2 * at(1, 0) + at(1, 1)) - (at(-1, -1) + 2 * at(-1, 0) + at(-1, 1))
    return (np.abs(gx) + np.abs(gy)).astype(np.float64) / 8.0


def find_candidates(grey: np.ndarray, chroma: np.ndarray | None, exclude: np.ndarray | None = None) -> Candidates:
    """Components of bright-thin or coloured pixels, with one feature row each."""
    tophat = cv2.subtract(grey, cv2.morphologyEx(grey, cv2.MORPH_OPEN, _E9))
    # a seed must stand out from the top-hat of its own neighbourhood too, so that strokes over bright
    # speckle do not merge with it into one mixed component
    local = cv2.blur(tophat, (15, 15))
    seeds = (tophat >= SEED_TOPHAT) & (tophat.astype(np.float32) >= SEED_LOCAL * local.astype(np.float32))
    if chroma is not None:
        seeds |= chroma >= COLOUR_CHROMA
    if exclude is not None:
        seeds &= ~exclude
    seeds8 = seeds.astype(np.uint8)
    n, labels, stats, cents = cv2.connectedComponentsWithStats(seeds8, connectivity=8)
    if n <= 1:
        return Candidates(labels, n, np.zeros((0, len(FEATURE_NAMES)), np.float32), tophat, np.zeros((0, 4), int))
    idx = np.flatnonzero(seeds)  # bool: flatnonzero on uint8 is ten times slower
    lab = labels.ravel()[idx]
    g = grey.ravel()[idx].astype(np.float64)
    th = tophat.ravel()[idx].astype(np.float64)
    tophat5 = cv2.subtract(grey, cv2.morphologyEx(grey, cv2.MORPH_OPEN, _E5)).ravel()[idx].astype(np.float64)
    grad = _sobel_at(grey, idx)
    area = stats[:, cv2.CC_STAT_AREA].astype(np.float64)
    w = stats[:, cv2.CC_STAT_WIDTH].astype(np.float64)
    h = stats[:, cv2.CC_STAT_HEIGHT].astype(np.float64)
    safe = np.maximum(area, 1)

    def mean(v: np.ndarray) -> np.ndarray:
        return np.bincount(lab, weights=v, minlength=n) / safe

    mean_g = mean(g)
    std_g = np.sqrt(np.maximum(mean(g * g) - mean_g ** 2, 0))
    max_g = _per_label_max(g, lab, n)
    plateau = mean((g >= max_g[lab] - 12).astype(np.float64))
    mean_th = mean(th)
    # ring: pixels just outside each component, labelled by dilating the label image
    label_img = labels.astype(np.uint16) if n < 65536 else labels.astype(np.float32)
    ring_lab = cv2.dilate(label_img, np.ones((3, 3), np.uint8)).astype(np.int32)
    ring = (ring_lab > 0) & ~seeds
    ridx = np.flatnonzero(ring)
    rlab = ring_lab.ravel()[ridx]
    rg = grey.ravel()[ridx].astype(np.float64)
    rcount = np.maximum(np.bincount(rlab, minlength=n), 1)
    ring_mean = np.bincount(rlab, weights=rg, minlength=n) / rcount
    ring_std = np.sqrt(np.maximum(np.bincount(rlab, weights=rg * rg, minlength=n) / rcount - ring_mean ** 2, 0))
    # share of seed pixels in the 31x31 window around each centroid (text comes in clusters)
    integral = cv2.integral(seeds8)
    cy = np.clip(cents[:, 1].round().astype(int), 0, grey.shape[0] - 1)
    cx = np.clip(cents[:, 0].round().astype(int), 0, grey.shape[1] - 1)
    ya, yb = np.clip(cy - 15, 0, grey.shape[0]), np.clip(cy + 16, 0, grey.shape[0])
    xa, xb = np.clip(cx - 15, 0, grey.shape[1]), np.clip(cx + 16, 0, grey.shape[1])
    density = (integral[yb, xb] - integral[ya, xb] - integral[yb, xa] + integral[ya, xa]) / 961.0
    p99 = float(np.percentile(grey[::4, ::4], 99))
    th90 = float(np.percentile(tophat[::4, ::4], 90))
    chroma_mean = mean(chroma.ravel()[idx].astype(np.float64)) if chroma is not None else np.zeros(n)
    feats = np.stack([
        np.log1p(area), w, h, area / np.maximum(w * h, 1), np.maximum(w, h) / np.maximum(np.minimum(w, h), 1),
        w / np.maximum(h, 1), mean_th, _per_label_max(th, lab, n), mean_g, max_g, std_g, plateau,
        mean(grad) / np.maximum(mean_th, 1), mean(tophat5) / np.maximum(mean_th, 1), max_g - ring_mean, ring_std,
        chroma_mean, density, np.full(n, p99), np.full(n, th90), mean_g - mean_th,
    ], axis=1)[1:].astype(np.float32)
    return Candidates(labels, n, feats, tophat, stats[1:, :4].astype(int))
