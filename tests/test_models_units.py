"""Measurement, calibration and preprocessing units with known answers."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy.special import softmax

from sonopacs.models.calibration import (
    Calibration,
    brier_score,
    ece_if_calibrated,
    expected_calibration_error,
    fit_temperature,
    fit_temperature_bias,
    log_loss,
    operating_points,
)
from sonopacs.models.lesion_shape import SHAPE_FEATURES, shape_feature_matrix, shape_features
from sonopacs.models.measure import lesion_mask, measure_lesion
from sonopacs.models.transforms import letterbox_image, letterbox_mask


def test_ellipse_axes_in_mm_with_anisotropic_pixels() -> None:
    m = np.zeros((200, 300), np.uint8)
    cv2.ellipse(m, (150, 100), (60, 20), 0, 0, 360, 1, -1)
    r = measure_lesion(m.astype(bool), (0.1, 0.2))
    assert r is not None
    assert r.long_axis_mm == pytest.approx(24.0, abs=0.5)  # 120 columns x 0.2 mm
    assert r.short_axis_mm == pytest.approx(4.0, abs=0.3)  # 40 rows x 0.1 mm
    assert r.area_mm2 == pytest.approx(m.sum() * 0.02)
    assert measure_lesion(np.zeros((5, 5), bool)) is None


def test_lesion_mask_keeps_largest_component_and_fills_holes() -> None:
    p = np.zeros((100, 100), np.float32)
    cv2.circle(p, (30, 30), 15, 1.0, -1)
    cv2.circle(p, (30, 30), 4, 0.0, -1)
    cv2.circle(p, (80, 80), 5, 1.0, -1)
    m = lesion_mask(p)
    assert m[30, 30] and not m[80, 80]


def test_temperature_recovers_known_scale() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, (4000, 3))
    labels = np.array([rng.choice(3, p=p) for p in softmax(true_logits, axis=1)])
    assert fit_temperature(true_logits * 3, labels) == pytest.approx(3, rel=0.1)
    probs = softmax(true_logits, axis=1)
    assert expected_calibration_error(probs, labels) < 0.03


def test_ece_floor_is_what_exactly_calibrated_probabilities_show_on_a_set_of_that_size() -> None:
    """One probability vector for every image: the ECE is |share of the top class - its probability|,
    whose mean for n draws is sqrt(p (1 - p) / n) * sqrt(2 / pi); certain probabilities show none."""
    p = np.tile([0.1, 0.2, 0.7], (400, 1))
    expected = np.sqrt(0.7 * 0.3 / 400) * np.sqrt(2 / np.pi)
    assert ece_if_calibrated(p, draws=2000) == pytest.approx(expected, rel=0.08)
    assert ece_if_calibrated(np.tile([0.0, 0.0, 1.0], (50, 1))) == 0.0
    assert ece_if_calibrated(np.zeros((0, 3))) is None
    rng = np.random.default_rng(2)
    spread = softmax(rng.normal(0, 2, (1800, 3)), axis=1)
    assert ece_if_calibrated(spread[:450]) > 1.6 * ece_if_calibrated(spread)  # about 1/sqrt(n)


def test_log_loss_and_brier_score() -> None:
    """By hand on two images; then, on 450 images drawn from known probabilities, the true
    probabilities score better than an over-confident version of them (logits doubled) on both
    proper scores, in each of 20 draws (in 200 draws, checked once: every one)."""
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    labels = np.array([0, 1])
    assert log_loss(probs, labels) == pytest.approx(-(np.log(0.7) + np.log(0.1)) / 2)
    assert brier_score(probs, labels) == pytest.approx(((0.09 + 0.04 + 0.01) + (0.01 + 0.81 + 0.64)) / 2)
    assert log_loss(np.zeros((0, 3)), np.zeros(0, int)) is None and brier_score(np.zeros((0, 3)), np.zeros(0, int)) is None
    rng = np.random.default_rng(5)
    logits = rng.normal(0, 1.5, (450, 3))
    true, sharp = softmax(logits, axis=1), softmax(2 * logits, axis=1)
    for _ in range(20):
        y = (rng.random((450, 1)) > np.cumsum(true, axis=1)).sum(axis=1).clip(max=2)
        assert log_loss(true, y) < log_loss(sharp, y)  # type: ignore[operator]
        assert brier_score(true, y) < brier_score(sharp, y)  # type: ignore[operator]


def test_temperature_and_class_bias_recover_a_known_prior_shift() -> None:
    """Logits trained for equal priors, scaled by 2 and shifted: the fit undoes both."""
    rng = np.random.default_rng(3)
    true_logits = rng.normal(0, 2, (6000, 3)) + np.array([-1.5, 0.5, 0.0])
    labels = np.array([rng.choice(3, p=p) for p in softmax(true_logits, axis=1)])
    seen = (true_logits - np.array([-1.5, 0.5, 0.0]) + 4.0) * 2  # what the network outputs
    t, b = fit_temperature_bias(seen, labels)
    assert t == pytest.approx(2, rel=0.1)
    assert b - b[0] == pytest.approx(np.array([0.0, 2.0, 1.5]), abs=0.15)
    with_bias = Calibration.fit(seen, labels, "temperature_bias").probs(seen)
    t_only = Calibration.fit(seen, labels).probs(seen)
    prior = np.bincount(labels) / len(labels)
    assert with_bias.mean(axis=0) == pytest.approx(prior, abs=0.01)  # the data's priors are back
    assert abs(t_only.mean(axis=0) - prior).max() > 0.1  # temperature alone cannot do that
    assert (with_bias.argmax(1) == labels).mean() > (t_only.argmax(1) == labels).mean() + 0.05
    with pytest.raises(ValueError, match="unknown calibration"):
        Calibration.fit(seen, labels, "isotonic")


def test_shape_calibration_uses_informative_features_and_ignores_noise() -> None:
    """A feature that carries the label lowers the held-out NLL; pure noise gets ~zero weight."""
    rng = np.random.default_rng(5)
    n = 3000
    logits = rng.normal(0, 1.5, (n, 3))
    hidden = rng.normal(0, 1.5, n)  # evidence for malignant the logits lack
    z = logits + np.c_[np.zeros(n), np.zeros(n), hidden]
    labels = np.array([rng.choice(3, p=p) for p in softmax(z, axis=1)])
    feats = np.c_[hidden * 2 + 1, rng.normal(5, 3, n)]  # informative, then noise
    fit, held = slice(0, 2000), slice(2000, None)
    names = ("evidence", "noise")
    cal = Calibration.fit(logits[fit], labels[fit], "temperature_bias_shape", feats[fit], names)
    plain = Calibration.fit(logits[fit], labels[fit], "temperature_bias")

    def nll(p: np.ndarray) -> float:
        return float(-np.log(p[np.arange(len(p)), labels[held]]).mean())

    assert nll(cal.probs(logits[held], feats[held])) < nll(plain.probs(logits[held])) - 0.05
    w = np.array(cal.feature_weights)
    assert w[0] == pytest.approx([0, 0])  # normal's row is the reference
    assert w[2, 0] > 1.0 and abs(w[2, 1]) < 0.1 and abs(w[1, 1]) < 0.1
    assert Calibration.from_dict(cal.to_dict()) == cal
    with pytest.raises(ValueError, match="needs the features"):
        cal.probs(logits[held])
    with pytest.raises(ValueError, match="expected N x 2"):
        cal.probs(logits[held], feats[held, :1])
    with pytest.raises(ValueError, match="needs features"):
        Calibration.fit(logits, labels, "temperature_bias_shape")


def test_shape_features_tell_a_disc_from_a_lobulated_tall_lesion() -> None:
    disc = np.zeros((160, 160), np.float32)
    cv2.circle(disc, (80, 80), 25, 0.9, -1)
    star = np.zeros((160, 160), np.float32)
    t = np.linspace(0, 2 * np.pi, 15, endpoint=False)
    r = np.where(np.arange(15) % 2 == 0, 40.0, 18.0)
    pts = np.c_[80 + 0.6 * r * np.cos(t), 80 + r * np.sin(t)].astype(np.int32)  # taller than wide
    cv2.fillPoly(star, [pts], 0.8)
    f = dict(zip(SHAPE_FEATURES, shape_features(disc), strict=True))
    g = dict(zip(SHAPE_FEATURES, shape_features(star), strict=True))
    assert f["lesion_present"] == 1 and f["solidity"] > 0.97 and f["circularity"] > 0.85
    assert abs(f["log_height_over_width"]) < 0.05
    assert f["log_area_fraction"] == pytest.approx(np.log(np.pi * 25**2 / 160**2), abs=0.05)
    assert f["peak_probability"] == pytest.approx(0.9) and f["mean_probability"] == pytest.approx(0.9)
    assert g["solidity"] < 0.8 and g["circularity"] < 0.5 and g["log_height_over_width"] > 0.4
    empty = dict(zip(SHAPE_FEATURES, shape_features(np.full((160, 160), 0.3, np.float32)), strict=True))
    assert empty["lesion_present"] == 0 and empty["peak_probability"] == pytest.approx(0.3)
    assert shape_feature_matrix(np.stack([disc, star])).shape == (2, len(SHAPE_FEATURES))


def test_operating_points_reach_target_sensitivity() -> None:
    rng = np.random.default_rng(1)
    y = rng.random(500) < 0.3
    p = np.clip(rng.normal(0.3 + 0.4 * y, 0.2), 0, 1)
    ops = operating_points(p, y, 0.95)
    assert (p[y] >= ops["high_sensitivity"]).mean() >= 0.95
    assert ops["high_sensitivity"] <= ops["default"]


def test_letterbox_keeps_aspect_and_maps_back() -> None:
    img = np.zeros((120, 300), np.uint8)
    img[40:80, 100:200] = 255
    lb, box = letterbox_image(img, 64)
    assert lb.shape == (64, 64) and box.inner == (26, 64)
    assert lb[: box.pad[0]].max() == 0  # padded, not stretched
    back = box.unletterbox(letterbox_mask(img > 0, 64).astype(np.float32)) > 0.5
    assert back.shape == img.shape
    inter = np.logical_and(back, img > 0).sum()
    assert 2 * inter / (back.sum() + (img > 0).sum()) > 0.9


def test_a_share_of_the_image_times_fill_is_its_share_of_the_model_frame() -> None:
    """Training measures mask areas in the letterboxed frame; the Analyzer converts with ``fill``."""
    img = np.zeros((200, 500), np.uint8)
    img[60:140, 150:330] = 255
    _, box = letterbox_image(img, 160)
    assert box.fill == pytest.approx(64 * 160 / 160**2)
    in_frame = letterbox_mask(img > 0, 160).mean()
    assert (img > 0).mean() * box.fill == pytest.approx(in_frame, rel=0.05)
    assert (img > 0).mean() > 2 * in_frame  # the image's own share is not the frame's


def test_model_input_scaling_matches_monai() -> None:
    """The plain-torch intensity scaling is bit-identical to MONAI's ScaleIntensityRange."""
    import torch

    from sonopacs.models.transforms import INTENSITY_SCALE, to_model_input

    img = np.arange(256, dtype=np.uint8).repeat(256).reshape(256, 256)
    ref = torch.as_tensor(INTENSITY_SCALE(torch.from_numpy(img).float()[None]))
    assert torch.equal(to_model_input(img), ref)


def test_equalised_input_ignores_a_scanners_grey_level_mapping_and_keeps_black_black() -> None:
    """`input_equalise`: gain, gamma and contrast of the same image give (almost) the same input;
    the letterbox padding stays black, grey order is kept and the non-black pixels spread over (0, 1)."""
    import torch

    from sonopacs.models.networks import build_network
    from sonopacs.models.transforms import equalise_batch

    rng = np.random.default_rng(7)
    field = cv2.GaussianBlur(rng.integers(1, 256, (64, 48)).astype(np.float32), (5, 5), 0)
    img = np.zeros((64, 64), np.float32)
    img[:, 8:56] = field  # a letterboxed field: black columns either side
    x = torch.from_numpy(img / 255.0)[None, None]
    eq = equalise_batch(x)
    assert torch.all(eq[..., :8] == 0) and torch.all(eq[..., 56:] == 0)
    inner, eq_inner = x[..., 8:56].flatten(), eq[..., 8:56].flatten()
    order = torch.argsort(inner)
    assert torch.all(torch.diff(eq_inner[order]) >= 0)  # monotone: brighter never maps darker
    assert 0.0 < float(eq_inner.min()) < 0.02 and 0.98 < float(eq_inner.max()) <= 1.0
    assert abs(float(eq_inner.mean()) - 0.5) < 0.01
    for changed in (x ** 0.7, x ** 1.4, (x * 0.6).clamp(0, 1)):
        assert float((equalise_batch(changed) - eq).abs().mean()) < 0.01
    # Unequalised, gamma 1.4 moves the input by over a dozen grey levels on average.
    assert float((x ** 1.4 - x).abs().mean()) > 0.05

    # Inside the network: the encoder's deepest features (ImageNet start, so deterministic and
    # looking at the input) move a fraction as much under the same gamma.
    cfg = {"backbone": "efficientnet-lite0", "pretrained": True, "input_norm": [0.5, 0.5],
           "decoder_channels": [16, 8, 8, 8, 8]}
    big = torch.nn.functional.interpolate(x, size=(96, 96), mode="nearest")
    moved = {}
    for equalise in (False, True):
        net = build_network({**cfg, "input_equalise": equalise}).eval()
        deep: list[torch.Tensor] = []
        net.cam_target.register_forward_hook(lambda _m, _i, out, deep=deep: deep.append(out))
        with torch.no_grad():
            net(big), net(big ** 1.4)
        moved[equalise] = float((deep[0] - deep[1]).abs().mean() / deep[0].abs().mean())
    assert moved[True] < 0.5 * moved[False], moved  # measured: 0.025 against 0.084 (rounding to 256 levels)
