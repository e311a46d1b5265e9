"""The learned fringe step, level matching and the tree layout they run on."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from sonopacs.cleaning.annotations import PARAMS, detect_annotations, level_match, tissue_streaks
from sonopacs.cleaning.features import find_candidates
from sonopacs.cleaning.fringe import FEATURE_NAMES, FRINGE_MODEL_PATH, fringe, fringe_model, ring_features
from sonopacs.cleaning.trees import MODEL_PATH, TreeEnsemble
from sonopacs.training.cleaning_fringe import ring_samples

DATA = Path(__file__).parent / "data" / "cleaning"


def _tissue() -> np.ndarray:
    img = cv2.imread(str(DATA / "bus_0009-l.jpg"), cv2.IMREAD_GRAYSCALE)
    assert img is not None
    return img


def _no_fringe(grey: np.ndarray, strokes: np.ndarray, tophat: np.ndarray) -> np.ndarray:
    return np.zeros_like(strokes)


def test_fringe_adds_antialiased_edges_and_little_else() -> None:
    img = _tissue()
    dirty = img.copy()
    for i, text in enumerate(("MAMA ESQ QSE", "D1 1.52cm  D2 0.84cm", "RADIAL 2 CM FN")):
        cv2.putText(dirty, text, (15, 40 + 90 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.6, 215, 1, cv2.LINE_AA)
    truth = np.abs(dirty.astype(int) - img.astype(int)) >= 10
    without = detect_annotations(dirty, None, fringe_step=_no_fringe).mask
    with_fringe = detect_annotations(dirty, None).mask
    native = detect_annotations(img, None).mask  # the sample's own calipers, fringe included
    added = with_fringe & ~without & ~native
    assert (added & truth).sum() / added.sum() >= 0.8
    # measured: recall 0.69 without the fringe step, 0.99 with it
    assert (with_fringe & truth).sum() / truth.sum() >= (without & truth).sum() / truth.sum() + 0.2


def test_hard_edged_square_on_flat_grey_gets_no_fringe() -> None:
    """No blend, no fringe: ring pixels at the background level stay."""
    grey = np.full((80, 80), 60, np.uint8)
    grey[30:36, 30:50] = 230
    strokes = grey == 230
    tophat = cv2.subtract(grey, cv2.morphologyEx(grey, cv2.MORPH_OPEN, np.ones((9, 9), np.uint8)))
    assert not fringe(grey, strokes, tophat).any()
    idx, feats = ring_features(grey, strokes, tophat)
    assert feats.shape == (idx.size, len(FEATURE_NAMES)) == (2 * 22 + 2 * 6, len(FEATURE_NAMES))
    assert np.all(feats[:, FEATURE_NAMES.index("over_tissue")] == 0)


def test_level_match_takes_only_exact_level_pieces_near_strokes() -> None:
    rng = np.random.default_rng(0)
    grey = rng.integers(40, 90, (120, 160)).astype(np.uint8)
    grey[20:23, 20:60] = 231  # an accepted stroke
    accepted = grey == 231
    near_exact = (slice(30, 32), slice(40, 43))  # 6 px at the stroke's level, 9 px below it
    near_off = (slice(30, 32), slice(50, 53))  # same, one grey level off
    lone = (slice(35, 36), slice(30, 31))  # a single pixel at the level
    far = (slice(20 + PARAMS.match_radius + 15, 22 + PARAMS.match_radius + 15), slice(40, 43))
    grey[near_exact] = 231
    grey[near_off] = 230
    grey[lone] = 231
    grey[far] = 231
    tophat = cv2.subtract(grey, cv2.morphologyEx(grey, cv2.MORPH_OPEN, np.ones((9, 9), np.uint8)))
    found = level_match(grey, accepted, tophat)
    assert found[near_exact].all()
    assert not found[near_off].any() and not found[lone].any() and not found[far].any()
    assert not (found & accepted).any()


def _walk(model: TreeEnsemble, row: np.ndarray) -> float:
    """The stored trees walked node by node, the plain reading of the format."""
    total = model.bias
    for t in range(model.feature.shape[0]):
        node = 0
        while model.feature[t, node] >= 0:
            go_left = row[model.feature[t, node]] <= model.threshold[t, node]
            node = int(model.left[t, node] if go_left else model.right[t, node])
        total += model.value[t, node]
    return float(total)


@pytest.mark.parametrize("path", [MODEL_PATH, FRINGE_MODEL_PATH], ids=["detector", "fringe"])
def test_complete_tree_layout_matches_a_plain_walk(path: Path) -> None:
    model = TreeEnsemble.from_json(path)
    rng = np.random.default_rng(1)
    x = rng.normal(0, 60, (40, len(model.feature_names)))
    x[:5] = np.round(x[:5])  # values on or near thresholds too
    fast = model.decision(x)
    assert np.allclose(fast, [_walk(model, r) for r in x], atol=1e-9)


def test_shipped_fringe_model_matches_its_features() -> None:
    assert fringe_model().feature_names == FEATURE_NAMES


def test_ring_samples_label_fringe_of_burned_text() -> None:
    img = _tissue()
    dirty = img.copy()
    cv2.putText(dirty, "AXILLA 11cm", (20, 60), cv2.FONT_HERSHEY_SIMPLEX, 0.8, 220, 1, cv2.LINE_AA)
    truth = np.abs(dirty.astype(int) - img.astype(int)) >= 10
    x, y = ring_samples(dirty, truth, np.zeros(img.shape, bool))
    assert x.shape == (y.size, len(FEATURE_NAMES)) and 0 < y.sum() < y.size
    everything_native = ring_samples(dirty, truth, np.ones(img.shape, bool))[1]
    assert everything_native.size == 0  # rings next to native marks are left out


def test_tissue_streak_rule_spares_flat_lines() -> None:
    """A long thin horizontal streak whose level wanders is tissue; a flat line of that size is overlay."""
    grey = np.full((60, 200), 60, np.uint8)
    grey[20:23, 20:100] = np.linspace(140, 250, 80).astype(np.uint8)[None, :]  # skin-line-like streak
    grey[40:42, 110:190] = 230  # a drawn line
    cand = find_candidates(grey, None)
    flagged = tissue_streaks(cand)
    lab_streak, lab_line = cand.labels[21, 60], cand.labels[40, 150]
    assert lab_streak > 0 and lab_line > 0
    assert flagged[lab_streak - 1] and not flagged[lab_line - 1]


def test_halo_rule_still_runs_for_comparison() -> None:
    """fringe_classifier=False brings back the margin rule the classifier replaced (docs compare them)."""

    img = _tissue()
    dirty = img.copy()
    cv2.putText(dirty, "LESION 2 CM FN", (15, 120), cv2.FONT_HERSHEY_SIMPLEX, 0.6, 215, 1, cv2.LINE_AA)
    truth = np.abs(dirty.astype(int) - img.astype(int)) >= 10
    learned = detect_annotations(dirty, None).mask
    margin = detect_annotations(dirty, None, p=replace(PARAMS, fringe_classifier=False)).mask
    bare = detect_annotations(dirty, None, fringe_step=_no_fringe).mask
    assert (margin & truth).sum() > (bare & truth).sum()
    assert not np.array_equal(margin, learned)
