"""The antialiased fringe around accepted strokes, decided pixel by pixel by a small learned classifier.

Why learned: a drawn stroke raises its neighbours by a fraction of its contrast. One fixed margin
against the tissue mean (the rule this replaces, `annotations.halo`) either lets speckle in or
drops faint fringe; whether a ring pixel is fringe depends on several things together: its level
against the tissue beyond it and against the stroke beside it, how many stroke pixels surround it
(the inside corner of a glyph), and how busy the tissue is. A tree ensemble trained on synthetic
burn-ins (`python -m sonopacs.training.cleaning_fringe`) weighs them; features are taken at ring pixels only.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from sonopacs.cleaning.trees import TreeEnsemble

FRINGE_MODEL_PATH = Path(__file__).with_name("fringe_model.json")
FRINGE_ACCEPT = 0.25  # classifier probability above which a ring pixel is fringe (tuned on fold 2, docs)
WINDOW = 7  # box (px) for the tissue level around a ring pixel
WIDE = 13  # second, wider box: the tissue level beyond the stroke's other fringe pixels

FEATURE_NAMES = [
    "grey", "over_tissue", "over_tissue_wide", "tissue_std", "stroke_max", "stroke_mean",
    "stroke_over_tissue", "blend", "stroke_neighbours", "stroke_4_neighbours", "opposite_pairs",
    "ring_neighbours", "free_max", "free_min", "over_free_max", "tophat",
]

_SQUARE3 = np.ones((3, 3), np.uint8)


@lru_cache(maxsize=1)
def fringe_model() -> TreeEnsemble:
    return TreeEnsemble.from_json(FRINGE_MODEL_PATH)


def box_sums(sums: list[np.ndarray], y: np.ndarray, x: np.ndarray, shape: tuple[int, int], size: int
              ) -> list[np.ndarray]:
    """Sums over a size x size box (clipped at the border) centred at (y, x), from integral images."""
    h, w = shape
    r = size // 2
    y0, y1 = np.maximum(y - r, 0), np.minimum(y + r + 1, h)
    x0, x1 = np.maximum(x - r, 0), np.minimum(x + r + 1, w)
    return [(s[y1, x1] - s[y0, x1] - s[y1, x0] + s[y0, x0]).astype(np.float64) for s in sums]


def _neighbour_index(y: np.ndarray, x: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the 3x3 neighbourhoods of (y, x), (9, n) row-major with the centre at 4, and
    which of them lie inside the frame (outside ones point at the centre).

    Gathers at the ring pixels only: full-frame 3x3 filters cost ten times more on 800x600.
    """
    h, w = shape
    dy = np.repeat(np.arange(-1, 2), 3)[:, None]
    dx = np.tile(np.arange(-1, 2), 3)[:, None]
    yy, xx = y[None, :] + dy, x[None, :] + dx
    inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
    return np.where(inside, yy * w + xx, (y * w + x)[None, :]), inside


def ring_features(grey: np.ndarray, accepted: np.ndarray, tophat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the ring of pixels around `accepted` and one feature row per ring pixel.

    `tophat` is grey minus its 9x9 opening (the candidates' own, cleaning/features.py).
    """
    ring = cv2.dilate(accepted.astype(np.uint8), _SQUARE3).astype(bool) & ~accepted
    idx = np.flatnonzero(ring)
    if idx.size == 0:
        return idx, np.zeros((0, len(FEATURE_NAMES)))
    w = grey.shape[1]
    y, x = np.divmod(idx, w)
    free = (~(ring | accepted)).astype(np.uint8)
    s_grey, s_sq = cv2.integral2(grey * free, sdepth=cv2.CV_32S, sqdepth=cv2.CV_64F)
    s_free = cv2.integral(free)
    n7, sum7, sq7 = box_sums([s_free, s_grey, s_sq], y, x, grey.shape, WINDOW)
    n13, sum13 = box_sums([s_free, s_grey], y, x, grey.shape, WIDE)
    mean7 = sum7 / np.maximum(n7, 1)
    mean13 = sum13 / np.maximum(n13, 1)
    std7 = np.sqrt(np.maximum(sq7 / np.maximum(n7, 1) - mean7 ** 2, 0))
    nidx, inside = _neighbour_index(y, x, grey.shape)
    g9 = grey.ravel()[nidx].astype(np.float64)
    acc9 = accepted.ravel()[nidx] & inside
    free9 = free.ravel()[nidx].astype(bool) & inside
    ring9 = ring.ravel()[nidx] & inside
    g = g9[4]
    n_acc = acc9.sum(axis=0).astype(np.float64)
    stroke_max = np.where(acc9, g9, 0).max(axis=0)
    stroke_mean = np.where(acc9, g9, 0).sum(axis=0) / np.maximum(n_acc, 1)
    n4 = acc9[[1, 3, 5, 7]].sum(axis=0).astype(np.float64)
    pairs = sum((acc9[i] & acc9[8 - i]).astype(np.float64) for i in range(4))
    n_ring = ring9.sum(axis=0).astype(np.float64) - 1
    free_max = np.where(free9, g9, 0).max(axis=0)
    free_min = np.where(free9, g9, 255).min(axis=0)
    stroke_over = stroke_max - mean7
    feats = np.stack([
        g, g - mean7, g - mean13, std7, stroke_max, stroke_mean, stroke_over,
        (g - mean7) / np.maximum(stroke_over, 1), n_acc, n4, pairs, n_ring, free_max, free_min, g - free_max,
        tophat.ravel()[idx].astype(np.float64),
    ], axis=1)
    return idx, feats


def fringe(grey: np.ndarray, accepted: np.ndarray, tophat: np.ndarray, model: TreeEnsemble | None = None
           ) -> np.ndarray:
    """Ring pixels around accepted strokes that the classifier calls antialiased fringe."""
    idx, feats = ring_features(grey, accepted, tophat)
    out = np.zeros(grey.size, bool)
    if idx.size:
        prob = (model or fringe_model()).probability(feats)
        out[idx[prob >= FRINGE_ACCEPT]] = True
    return out.reshape(grey.shape)
