"""Odd inputs: nothing crashes, refusals say why."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from sonopacs.cleaning import clean_image
from sonopacs.cleaning.annotations import PARAMS


@pytest.mark.parametrize("value", [0, 255])
def test_flat_frames_give_whole_frame_low_confidence(value: int) -> None:
    img = np.full((120, 160), value, np.uint8)
    (r,) = clean_image(img)
    assert r.summary["field_source"] == "whole"
    assert float(r.summary["confidence"]) <= 0.3  # type: ignore[arg-type]
    assert r.offset == (0, 0) and r.image.shape == (120, 160)
    assert r.summary["pixels_removed"] == 0


def test_one_pixel_is_refused() -> None:
    with pytest.raises(ValueError, match="too small"):
        clean_image(np.zeros((1, 1), np.uint8))


def test_huge_frame_is_refused_before_any_work() -> None:
    huge = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), shape=(20_000, 20_000), strides=(0, 0))
    with pytest.raises(ValueError, match="max_pixels"):
        clean_image(huge)
    with pytest.raises(ValueError, match="max_pixels"):
        clean_image(np.zeros((100, 100), np.uint8), max_pixels=5000)


@pytest.mark.parametrize("shape", [(10,), (4, 5, 6, 7), (50, 50, 2)])
def test_wrong_shapes_are_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="HxW"):
        clean_image(np.zeros(shape, np.uint8))


def test_not_an_array_is_refused() -> None:
    with pytest.raises(ValueError, match="numpy array"):
        clean_image([[0, 1], [2, 3]])  # type: ignore[arg-type]


def test_sixteen_bit_is_windowed_to_uint8() -> None:
    rng = np.random.default_rng(0)
    img = (rng.gamma(2.0, 300.0, (200, 240)) + 1000).astype(np.uint16)  # uses ~12 bits, never 0
    (r,) = clean_image(img)
    assert r.image.dtype == np.uint8
    assert r.image.max() > 200 and r.image.min() < 40  # windowed, not divided by 257


def test_rgb_grey_and_rgba_are_accepted() -> None:
    rng = np.random.default_rng(1)
    grey = rng.integers(30, 120, (100, 130), dtype=np.uint8)
    (a,) = clean_image(grey)
    (b,) = clean_image(np.repeat(grey[:, :, None], 3, axis=2))
    (c,) = clean_image(np.concatenate([np.repeat(grey[:, :, None], 3, axis=2), np.full((100, 130, 1), 255, np.uint8)], 2))
    assert a.image.shape == b.image.shape == c.image.shape
    assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 1


def test_palette_colour_converted_by_caller_is_accepted() -> None:
    """PALETTE COLOR after apply_color_lut is 16-bit RGB: windowed, cleaned, grey out."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file
    from pydicom.pixels import apply_color_lut

    ds = pydicom.dcmread(get_testdata_file("gdcm-US-ALOKA-16.dcm"))
    rgb16 = apply_color_lut(ds.pixel_array, ds)
    assert rgb16.dtype == np.uint16
    results = clean_image(rgb16)
    assert results and all(r.image.dtype == np.uint8 and r.image.ndim == 2 for r in results)


def test_float_nan_input_does_not_crash() -> None:
    img = np.full((64, 64), np.nan, np.float32)
    img[10:50, 10:50] = 100.0
    (r,) = clean_image(img)
    assert r.image.dtype == np.uint8


def test_pure_noise_is_bounded_and_flagged() -> None:
    """Noise has thousands of candidate components; past the cap they are not all scored."""

    capped = replace(PARAMS, max_scored=300)  # a 600x800 noise frame has ~1,500
    noise = np.random.default_rng(2).integers(0, 256, (600, 800), dtype=np.uint8)
    (r,) = clean_image(noise, params=capped)
    assert "noisy" in r.summary["flags"]  # type: ignore[operator]
    assert float(r.summary["confidence"]) <= 0.5  # type: ignore[arg-type]


def test_odd_regions() -> None:
    from sonopacs.cleaning import Region

    img = np.random.default_rng(3).integers(20, 120, (100, 120), dtype=np.uint8)
    (r,) = clean_image(img, [Region(-10, -10, 500, 500)])  # clipped to the frame
    assert r.offset == (0, 0) and r.image.shape == (100, 120) and r.summary["field_source"] == "regions"
    (r,) = clean_image(img, [Region(50, 50, 40, 40)])  # corners given in the wrong order
    assert r.offset == (40, 40) and r.image.shape == (11, 11)
    # no usable 2D tissue region (M-mode only, or too small): detected from the pixels instead
    for regions in ([Region(0, 0, 119, 99, spatial_format=2)], [Region(0, 0, 3, 3)]):
        (r,) = clean_image(img, regions)
        assert r.summary["field_source"] != "regions"
    # two side-by-side tissue regions plus an overlapping colour-flow region
    results = clean_image(img, [Region(60, 0, 119, 99), Region(0, 0, 59, 99), Region(70, 10, 100, 50, data_type=2)])
    assert [x.offset for x in results] == [(0, 0), (0, 60)]
    assert "doppler" in results[1].summary["flags"] and "doppler" not in results[0].summary["flags"]  # type: ignore[operator]
