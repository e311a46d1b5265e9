"""The shipped weights load and give well-formed, deterministic results."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from models import CLASSES, Analyzer

DATA = Path(__file__).parent / "data" / "bus-bra"


@pytest.fixture(scope="module")
def analyzer() -> Analyzer:
    return Analyzer.load(device="cpu")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    img = cv2.imread(str(DATA / "bus_0001-l.jpg"), cv2.IMREAD_GRAYSCALE)
    assert img is not None
    return img


def test_metadata(analyzer: Analyzer) -> None:
    assert analyzer.name and analyzer.version
    assert set(analyzer.operating_points) == {"default", "high_sensitivity"}
    assert 0 < analyzer.operating_points["high_sensitivity"] <= analyzer.operating_points["default"] < 1


def test_result_is_well_formed(analyzer: Analyzer, image: np.ndarray) -> None:
    r = analyzer.analyze(image, spacing_mm=(0.1, 0.12))
    assert list(r.probabilities) == list(CLASSES)
    assert abs(sum(r.probabilities.values()) - 1) < 1e-6
    assert r.label == max(r.probabilities, key=r.probabilities.__getitem__)
    assert r.malignancy_probability == r.probabilities["malignant"]
    for name, t in analyzer.operating_points.items():
        assert r.decisions[name] == (r.malignancy_probability >= t)
    assert r.mask.shape == image.shape and r.mask.dtype == bool
    assert r.heatmap.shape == image.shape and r.heatmap.dtype == np.float32
    assert r.heatmap.min() >= 0 and r.heatmap.max() <= 1
    assert 0 <= r.uncertainty <= 0.5
    assert (r.model_name, r.model_version) == (analyzer.name, analyzer.version)
    if r.mask.any():
        assert r.lesion is not None and r.lesion.area_px == int(r.mask.sum())
        assert r.lesion.long_axis_mm is not None and r.lesion.long_axis_mm >= r.lesion.short_axis_mm  # type: ignore[operator]
        assert r.lesion.area_mm2 == pytest.approx(r.lesion.area_px * 0.1 * 0.12)
        rows, cols = zip(*r.lesion.contour, strict=True)
        assert min(rows) >= 0 and max(rows) < image.shape[0] and max(cols) < image.shape[1]


def test_known_lesion_is_found(analyzer: Analyzer, image: np.ndarray) -> None:
    """A training image with a large malignant lesion: the mask must overlap the reference mask."""
    truth = cv2.imread(str(DATA / "mask_0001-l.png"), cv2.IMREAD_GRAYSCALE) > 0
    r = analyzer.analyze(image)
    inter = np.logical_and(r.mask, truth).sum()
    assert 2 * inter / (r.mask.sum() + truth.sum()) > 0.5


def test_deterministic_and_batch_equals_single(analyzer: Analyzer, image: np.ndarray) -> None:
    other = cv2.imread(str(DATA / "bus_0056-r.jpg"), cv2.IMREAD_GRAYSCALE)
    a = analyzer.analyze(image)
    b = analyzer.analyze(image)
    batch = analyzer.analyze_batch([image, other], [None, (0.1, 0.1)])
    assert a.probabilities == b.probabilities
    assert np.array_equal(a.mask, b.mask) and np.array_equal(a.heatmap, b.heatmap)
    assert len(batch) == 2 and batch[1].mask.shape == other.shape
    for k in CLASSES:
        assert batch[0].probabilities[k] == pytest.approx(a.probabilities[k], abs=1e-5)
    assert a.lesion is None or a.lesion.long_axis_mm is None  # no spacing, no mm


def test_rgb_and_odd_shapes(analyzer: Analyzer, image: np.ndarray) -> None:
    rgb = np.repeat(image[:, :, None], 3, axis=2)
    assert analyzer.analyze(rgb).probabilities == pytest.approx(analyzer.analyze(image).probabilities, abs=1e-6)
    tall = np.ascontiguousarray(image[:, :40])
    r = analyzer.analyze(tall)
    assert r.mask.shape == tall.shape and r.heatmap.shape == tall.shape
    assert analyzer.analyze_batch([]) == []
