"""presence_views measures each view as the Analyzer measures a field, and counts views as asked."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from sonopacs.models import Analyzer
from sonopacs.training.presence_views import VIEWS, collect, report, view_signals

DATA = Path(__file__).parent / "data" / "bus-bra"


@pytest.fixture(scope="module")
def analyzer() -> Analyzer:
    return Analyzer.load(device="cpu")


def test_the_field_view_measures_the_mask_the_analyzer_reports(analyzer: Analyzer, tmp_path: Path) -> None:
    with (DATA / "index.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))[:2]
    for r in rows:  # absolute paths: the index is read from tmp_path
        r["image"] = str(DATA / r["image"])
        r["mask"] = "|".join(str(DATA / m) for m in r["mask"].split("|") if m)
    index = tmp_path / "index.csv"
    with index.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    signals = collect(analyzer, index)
    assert signals["area"].shape == (2, len(VIEWS))
    assert (signals["reported_area"] > 0).any()  # the shipped networks find these lesions
    # the Analyzer rounds its figure to 5 decimals
    np.testing.assert_allclose(signals["area"][:, 0], signals["reported_area"], atol=1e-5)
    np.testing.assert_allclose(signals["probabilities"].sum(axis=2), 1.0, atol=1e-6)


def test_a_view_that_hides_the_lesion_loses_its_mask(analyzer: Analyzer) -> None:
    gray = cv2.imread(str(DATA / "bus_0001-l.jpg"), cv2.IMREAD_GRAYSCALE)
    assert gray is not None
    blank = np.full_like(gray, int(np.median(gray.astype(np.float64))))
    lesion, flat = view_signals(analyzer, gray), view_signals(analyzer, blank)
    assert lesion["area"][0] > 0 and (flat["area"] == 0).all()


def test_report_counts_the_views_a_mask_is_in() -> None:
    n_views = len(VIEWS)
    area = np.array([[0.05] * n_views,                        # lesion, found in every view
                     [0.05] * 2 + [0.0] * (n_views - 2),      # lesion, found in two
                     [0.05] + [0.0] * (n_views - 1),          # normal, found in the field only
                     [0.0] * n_views])                        # normal, none
    signals = {"label": np.array([1, 2, 0, 0]), "area": area, "confidence": np.where(area > 0, 0.7, 0.0),
               "probabilities": np.tile([0.2, 0.5, 0.3], (4, n_views, 1))}
    r = report(signals, min_area_fraction=0.002, sensitivity=0.5)
    assert r["mask_in_1_views"]["masks_on_normals"] == 0.5
    assert r["mask_in_2_views"]["masks_on_lesions"] == 1.0 and r["mask_in_2_views"]["masks_on_normals"] == 0.0
    assert r[f"mask_in_{n_views}_views"]["masks_on_lesions"] == 0.5
    assert r["field"]["normal_given_lesion"] == pytest.approx(0.5)
    assert r["mask_in_2_views"]["p_normal_field"]["normal_given_lesion"] == 0.0
    curve = r["normals_given_a_lesion_by_sensitivity"]
    assert curve["0.95"]["field"] == 0.5 and curve["0.95"]["mask_in_2_views"] == 0.0  # both lesions, no normal
    assert curve["0.85"][f"mask_in_{n_views}_views"] is None
