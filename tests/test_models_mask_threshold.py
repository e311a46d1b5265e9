"""The presence rule's ``mask_threshold``: the Analyzer detects the lesion mask at it (and draws the
outline at ``contour_threshold`` where one reaches it), and a site calibration (whose mask areas
were measured at the shipped threshold) keeps both."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from sonopacs.models.analyzer import DEFAULT_WEIGHTS, Analyzer
from sonopacs.models.calibration import Calibration
from sonopacs.models.presence import PresenceRule
from sonopacs.models.site_calibration import fit_site_calibration
from sonopacs.models.transforms import letterbox_image

DATA = Path(__file__).parent / "data" / "bus-bra"


def _weights(folder: Path, mask_threshold: float) -> Path:
    """The shipped weights with the presence rule's mask threshold changed (and no scope bank)."""
    folder.mkdir(parents=True)
    manifest = json.loads((DEFAULT_WEIGHTS / "model.json").read_text())
    for name in ("model.pt", *manifest.get("ensemble_members", [])):
        shutil.copy(DEFAULT_WEIGHTS / name, folder / name)
    manifest["lesion_presence"] = {**manifest.get("lesion_presence", {}), "mask_threshold": mask_threshold}
    (folder / "model.json").write_text(json.dumps(manifest))
    return folder


def test_the_mask_is_drawn_at_the_rules_threshold(tmp_path: Path) -> None:
    images = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sorted(DATA.glob("bus_*.jpg"))]
    at_half = Analyzer.load(_weights(tmp_path / "half", 0.5), "cpu", scope_gate=False).analyze_batch(images)
    low = Analyzer.load(_weights(tmp_path / "low", 0.15), "cpu", scope_gate=False).analyze_batch(images)
    area_half = np.array([r.extra["lesion_area_fraction"] for r in at_half])
    area_low = np.array([r.extra["lesion_area_fraction"] for r in low])
    assert (area_low >= area_half).all() and (area_low > area_half).any()
    for r in low:  # the detection mask holds only pixels at or above the threshold it was drawn at
        if r.extra["lesion_area_fraction"] > 0:
            assert r.extra["lesion_mask_confidence"] >= 0.15
    # the outline shown stays at the contour threshold (0.5) wherever a mask reaches it
    for r_half, r_low in zip(at_half, low, strict=True):
        if r_half.mask.any() and r_low.mask.any():
            assert np.array_equal(r_half.mask, r_low.mask)
    assert any(r.mask.any() for r in low)


def test_a_site_calibration_keeps_the_shipped_mask_threshold(tmp_path: Path) -> None:
    wdir = _weights(tmp_path / "w", 0.3)
    manifest = json.loads((wdir / "model.json").read_text())
    rng = np.random.default_rng(0)
    labels = rng.choice(3, size=120, p=[0.4, 0.4, 0.2])
    logits = 3.0 * (2.0 * np.eye(3)[labels] + rng.normal(size=(120, 3)))
    area = np.where(labels > 0, 0.05, rng.choice([0.0, 0.01], size=120))
    shipped = PresenceRule.from_dict(manifest["lesion_presence"])
    site = fit_site_calibration(logits, labels, model_name=manifest["name"], model_version=manifest["version"],
                                shipped=Calibration(), shipped_priors=(1 / 3, 1 / 3, 1 / 3), normal_fraction=0.4,
                                n_boot=20, mask_area=area, shipped_presence=shipped)
    assert site.lesion_presence["mask_threshold"] == 0.3
    site.lesion_presence["mask_threshold"] = 0.5  # a file that says otherwise is not believed
    site.save(tmp_path / "site.json")
    an = Analyzer.load(wdir, "cpu", scope_gate=False, site_calibration=tmp_path / "site.json")
    assert an.presence.mask_threshold == 0.3
    assert an.presence.max_p_normal == site.lesion_presence["max_p_normal"]


def test_the_outline_follows_the_contour_threshold_and_falls_back_to_the_detection_mask() -> None:
    from sonopacs.models.measure import lesion_mask

    prob = np.zeros((100, 100), np.float32)
    prob[20:60, 20:60] = 0.3   # faint: found only by a low detection threshold
    prob[30:50, 30:50] = 0.6   # its core reaches 0.5
    rule = PresenceRule(mask_threshold=0.2)
    detected = lesion_mask(prob, rule.mask_threshold)
    assert detected.sum() == 1600
    assert rule.contour(prob, detected).sum() == 400  # the core: the outline at 0.5
    faint = np.where(prob > 0.5, 0.3, prob).astype(np.float32)
    assert np.array_equal(rule.contour(faint, lesion_mask(faint, 0.2)), lesion_mask(faint, 0.2))  # nothing reaches 0.5
    assert np.array_equal(PresenceRule().contour(prob, detected), detected)  # detection at 0.5: the mask itself


def test_the_area_the_rule_compares_is_the_share_of_the_model_frame(tmp_path: Path) -> None:
    """The presence rule's area floor is fitted on masks in the letterboxed frame (training's
    ``_seg_scores``); the Analyzer measures its mask at the image's resolution, so it reports, and the
    rule compares, that mask's share of the image times the image's share of the frame."""
    images = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sorted(DATA.glob("bus_*.jpg"))]
    results = Analyzer.load(_weights(tmp_path / "w", 0.5), "cpu", scope_gate=False).analyze_batch(images)
    checked = 0
    for img, r in zip(images, results, strict=True):
        fill = letterbox_image(img, 160)[1].fill
        assert fill < 0.95  # these images are not square: a share of the image is not one of the frame
        if r.mask.any():  # the detection mask is the contour here (both at 0.5)
            assert r.extra["lesion_area_fraction"] == pytest.approx(r.mask.mean() * fill, abs=1e-5)
            checked += 1
    assert checked
