"""Lesion-free crops and lesion-filled fields as extra normals (training/normal_crops.py): geometry,
determinism, honest splits."""

from __future__ import annotations

import numpy as np

from sonopacs.models.data import Packed
from sonopacs.training.normal_crops import (
    _drawn,
    add_crops_to_train,
    crop_settings,
    is_crop,
    lesion_filled,
    lesion_free_crops,
)
from sonopacs.training.train import eligible, make_jobs


def _mask(h: int = 120, w: int = 200) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[40:80, 120:170] = 1  # lesion on the right: the left side is free
    return m


def test_crops_miss_the_dilated_lesion_and_are_large_enough() -> None:
    m = _mask()
    for seed in range(20):
        boxes = lesion_free_crops(m, 3, 0.4, np.random.default_rng(seed), dilate_fraction=0.05)
        assert boxes
        for y0, y1, x0, x1 in boxes:
            assert y1 - y0 >= 0.4 * 120 and x1 - x0 >= 0.4 * 200
            assert 0 <= y0 < y1 <= 120 and 0 <= x0 < x1 <= 200
            assert not m[y0:y1, x0:x1].any()
            # the 10 px dilation margin is kept too
            assert not m[max(0, y0 - 9):y1 + 9, max(0, x0 - 9):x1 + 9].any()


def test_crops_are_deterministic_by_seed() -> None:
    m = _mask()
    a = lesion_free_crops(m, 2, 0.4, np.random.default_rng(7))
    b = lesion_free_crops(m, 2, 0.4, np.random.default_rng(7))
    c = lesion_free_crops(m, 2, 0.4, np.random.default_rng(8))
    assert a == b
    assert a != c


def test_no_crop_when_the_lesion_leaves_no_room_or_there_is_no_mask() -> None:
    big = np.zeros((100, 100), np.uint8)
    big[20:80, 20:80] = 1
    assert lesion_free_crops(big, 1, 0.4, np.random.default_rng(0)) == []
    assert lesion_free_crops(np.zeros((50, 50), np.uint8), 1, 0.4, np.random.default_rng(0)) == []


def test_option_is_off_by_default() -> None:
    assert crop_settings({"data": {}}) is None
    assert crop_settings({"data": {"normal_crops": {"enabled": False}}}) is None
    s = crop_settings({"data": {"normal_crops": {"per_image": 2, "seed": 3}}})
    assert s is not None and s["per_image"] == 2 and s["min_fraction"] == 0.4


def test_fraction_draws_that_share_of_images_per_image_and_is_absent_by_default() -> None:
    s = crop_settings({"data": {"normal_crops": {"fraction": 0.6, "seed": 3}}})
    assert s is not None and s["fraction"] == 0.6
    assert "fraction" not in (crop_settings({"data": {"normal_crops": {"seed": 3}}}) or {})
    draws = [_drawn(np.random.default_rng([3, i]), s) for i in range(2000)]
    assert 0.56 < np.mean(draws) < 0.64
    assert draws == [_drawn(np.random.default_rng([3, i]), s) for i in range(2000)]
    # without the option every image gives crops and the image's random stream is left untouched
    rng = np.random.default_rng(5)
    assert _drawn(rng, {"seed": 3}) and rng.random() == np.random.default_rng(5).random()


def _packed() -> Packed:
    names = ["a.png", "b.png", "c.png", "d.png", "a.png#normal_crop0", "c.png#normal_crop0"]
    n = len(names)
    return Packed(images=np.zeros((n, 8, 8), np.uint8), masks=np.zeros((n, 8, 8), np.uint8),
                  labels=np.array([1, 2, 1, 0, 0, 0]),
                  groups=np.array(["x:p1", "x:p2", "y:g1", "y:g2", "x:p1", "y:g1"]),
                  datasets=np.array(["x", "x", "y", "y", "x", "y"]),
                  conflicts=np.zeros(n, bool), names=np.array(names))


def test_crops_join_only_the_training_side_of_their_source_group() -> None:
    data = _packed()
    assert list(is_crop(data)) == [False] * 4 + [True] * 2
    cfg = {"data": {}, "jobs": ["cross"], "cross": [{"train": "x", "test": "y"}]}
    assert list(eligible(data, cfg)) == [0, 1, 2, 3]
    jobs = make_jobs(data, cfg)
    j = jobs["cross_x_to_y"]
    assert sorted(j["train"].tolist()) == [0, 1, 4]  # x's crop joins; y's crop (test group) does not
    assert sorted(j["test"].tolist()) == [2, 3]      # never a crop in a test set
    jobs2 = {"k": {"train": np.array([2]), "test": np.array([0])}}
    add_crops_to_train(data, jobs2)
    assert jobs2["k"]["train"].tolist() == [2, 5]


def _field_with_lesion() -> tuple[np.ndarray, np.ndarray]:
    """Depth-layered tissue (brightness varies by row, texture by column) with a dark lesion."""
    rows = np.linspace(60, 200, 120)[:, None]
    texture = 20 * np.sin(np.arange(200) / 3.0)[None, :]
    g = np.clip(rows + texture, 0, 255).astype(np.uint8)
    m = _mask()
    g[m > 0] = 5
    return g, m


def test_fill_covers_the_lesion_with_matching_tissue_and_leaves_the_rest() -> None:
    g, m = _field_with_lesion()
    out = lesion_filled(g, m, np.random.default_rng(1), dilate_fraction=0.05)
    assert out is not None and out.shape == g.shape and out.dtype == np.uint8
    assert out[m > 0].min() > 40  # no lesion pixel left (the darkest tissue row is 60 - 20)
    # the best-matching surroundings are at the same depth: each lesion row keeps its brightness
    for y in (45, 60, 75):
        assert abs(float(out[y, 130:160].mean()) - float(g[y, :100].mean())) < 12
    far = np.zeros_like(m, bool)
    far[:, :90] = True  # beyond the box and its feather margin nothing changed
    assert np.array_equal(out[far], g[far])


def test_fill_is_deterministic_and_gives_none_without_room_or_lesion() -> None:
    g, m = _field_with_lesion()
    a = lesion_filled(g, m, np.random.default_rng(4))
    b = lesion_filled(g, m, np.random.default_rng(4))
    assert a is not None and b is not None and np.array_equal(a, b)
    wide = np.zeros_like(m)
    wide[30:90, 10:190] = 1  # as wide as the field: no lesion-free box of its size exists
    assert lesion_filled(g, wide, np.random.default_rng(0)) is None
    assert lesion_filled(g, np.zeros_like(m), np.random.default_rng(0)) is None


def test_fill_mode_is_opt_in_and_checked() -> None:
    assert "mode" not in (crop_settings({"data": {"normal_crops": {"seed": 3}}}) or {})
    assert "mode" not in (crop_settings({"data": {"normal_crops": {"mode": "crop"}}}) or {})
    s = crop_settings({"data": {"normal_crops": {"mode": "fill"}}})
    assert s is not None and s["mode"] == "fill"
    try:
        crop_settings({"data": {"normal_crops": {"mode": "inpaint"}}})
    except ValueError as e:
        assert "inpaint" in str(e)
    else:
        raise AssertionError("an unknown mode must be refused")
