"""finalize's lesion-presence cut (training/finalize.fit_presence): fitted per dataset, the lowest that reaches the target."""

from __future__ import annotations

import numpy as np
import pytest

from sonopacs.models.lesion_shape import SHAPE_FEATURES
from sonopacs.models.priors import shift_priors, target_priors
from sonopacs.training.finalize import fit_presence


def _oof(seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    n = 400
    labels = rng.choice([0, 1, 2], n, p=[0.2, 0.5, 0.3])
    datasets = np.where(np.arange(n) % 2 == 0, "a", "b")
    p_normal = np.clip(np.where(labels == 0, rng.uniform(0.2, 1.0, n), rng.uniform(0.0, 0.7, n)), 1e-3, 1 - 1e-3)
    rest = 1 - p_normal
    probs = np.stack([p_normal, rest * 0.6, rest * 0.4], 1)
    sf = np.zeros((n, len(SHAPE_FEATURES)))
    sf[:, SHAPE_FEATURES.index("lesion_present")] = 1.0
    sf[:, SHAPE_FEATURES.index("log_area_fraction")] = np.log(0.05)
    return {"labels": labels, "datasets": datasets, "shape_features": sf}, probs


def test_cut_reaches_the_target_on_every_dataset_and_no_lower_cut_does() -> None:
    oof, probs = _oof()
    mix = np.bincount(oof["labels"], minlength=3) / len(oof["labels"])
    cfg = {"calibration": {"lesion_sensitivity_target": 0.95, "presence_normal_fraction": 0.4}}
    rule, report = fit_presence(oof, probs, mix, cfg)
    for ds in ("a", "b"):
        assert report[ds]["lesion_sensitivity"] >= 0.95
    assert min(report["a"]["lesion_sensitivity"], report["b"]["lesion_sensitivity"]) < 0.95 + 0.02
    stricter = {"calibration": {**cfg["calibration"], "lesion_sensitivity_target": 0.99}}
    rule99, report99 = fit_presence(oof, probs, mix, stricter)
    assert rule99.max_p_normal > rule.max_p_normal
    assert report99["all"]["normal_false_lesion_rate"] >= report["all"]["normal_false_lesion_rate"]


def test_mask_floor_is_raised_only_when_it_spares_normal_images() -> None:
    oof, probs = _oof(2)
    mix = np.bincount(oof["labels"], minlength=3) / len(oof["labels"])
    cfg = {"calibration": {"lesion_sensitivity_target": 0.95}}
    rule, _ = fit_presence(oof, probs, mix, cfg)
    assert rule.min_area_fraction == 0.002  # every mask is 5 %: a higher floor changes nothing
    # normal images' masks small (0.4 %), lesions' large: the floor rises above them
    sf = oof["shape_features"]
    sf[oof["labels"] == 0, SHAPE_FEATURES.index("log_area_fraction")] = np.log(0.004)
    rule, report = fit_presence(oof, probs, mix, cfg)
    assert rule.min_area_fraction == 0.005 and report["all"]["normal_false_lesion_rate"] == 0.0
    assert report["a"]["lesion_sensitivity"] >= 0.95


def test_without_a_target_the_configured_rule_is_kept() -> None:
    oof, probs = _oof(1)
    mix = np.bincount(oof["labels"], minlength=3) / len(oof["labels"])
    rule, report = fit_presence(oof, probs, mix, {"lesion_presence": {"max_p_normal": 0.5, "min_area_fraction": 0.002}})
    assert rule.max_p_normal == 0.5 and report["sensitivity_target"] is None
    # no mask on any image: nothing is given a lesion whatever the cut
    oof["shape_features"][:, SHAPE_FEATURES.index("lesion_present")] = 0.0
    rule, report = fit_presence(oof, probs, mix, {"calibration": {"lesion_sensitivity_target": 0.95}})
    assert report["all"]["lesion_sensitivity"] == 0.0 and rule.max_p_normal == 1.0


def _with_thresholds(oof: dict[str, np.ndarray], missed_at_half: np.ndarray) -> dict[str, np.ndarray]:
    """Per-threshold areas: every mask 5 % at 0.3; at 0.5 the ``missed_at_half`` images have none."""
    n = len(oof["labels"])
    area = np.full((n, 2), 0.05)
    area[missed_at_half, 1] = 0.0
    dice = np.where(oof["labels"][:, None] > 0, np.array([[0.7, 0.8]]), np.nan)
    dice[missed_at_half & (oof["labels"] > 0), 1] = 0.0
    return {**oof, "mask_thresholds": np.array([0.3, 0.5]), "area_by_threshold": area,
            "dice_by_threshold": dice, "iou_by_threshold": dice / (2 - np.nan_to_num(dice))}


def test_the_mask_threshold_is_lowered_only_when_the_higher_one_cannot_reach_the_target() -> None:
    oof, probs = _oof(3)
    mix = np.bincount(oof["labels"], minlength=3) / len(oof["labels"])
    cfg = {"calibration": {"lesion_sensitivity_target": 0.95, "mask_thresholds": [0.3, 0.5]}}
    lesion = oof["labels"] > 0
    # at 0.5 one lesion image in ten has no mask: no P(normal) cut reaches 95 %
    missed = lesion & (np.arange(len(lesion)) % 10 == 0)
    rule, report = fit_presence(_with_thresholds(oof, missed), probs, mix, cfg)
    assert rule.mask_threshold == 0.3
    assert min(report["a"]["lesion_sensitivity"], report["b"]["lesion_sensitivity"]) >= 0.95
    assert report["by_mask_threshold"]["0.5"]["all"]["lesion_sensitivity"] < 0.95
    # Dice as shown: the outline at 0.5 (Dice 0.8) where one reaches it, else the detection mask at
    # 0.3 (0.7), and 0 where no lesion is given
    pn = shift_priors(probs, mix, target_priors(mix, 0.4))[:, 0]
    given = rule.given(pn, np.full(len(lesion), 0.05))[lesion]
    expected = np.where(given, np.where(missed[lesion], 0.7, 0.8), 0.0).mean()
    assert abs(report["all"]["dice_shown"] - expected) < 1e-9
    # both thresholds reach it with the same rule: the higher one (nearer the trained 0.5) is kept
    rule, _ = fit_presence(_with_thresholds(oof, np.zeros(len(lesion), bool)), probs, mix, cfg)
    assert rule.mask_threshold == 0.5


def test_a_threshold_the_run_did_not_store_is_a_clear_error() -> None:
    oof, probs = _oof(4)
    mix = np.bincount(oof["labels"], minlength=3) / len(oof["labels"])
    cfg = {"calibration": {"lesion_sensitivity_target": 0.95, "mask_thresholds": [0.25]}}
    with pytest.raises(ValueError, match=r"0\.25.*stored"):
        fit_presence(_with_thresholds(oof, np.zeros(len(oof["labels"]), bool)), probs, mix, cfg)
    with pytest.raises(KeyError, match="repredict"):
        fit_presence(oof, probs, mix, {"calibration": {"lesion_sensitivity_target": 0.95, "mask_thresholds": [0.5]}})
