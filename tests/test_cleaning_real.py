"""clean_image on real scanner DICOM from pydicom-data: fields, dual view, Doppler, removed overlays."""

from __future__ import annotations

import numpy as np
import pytest

from sonopacs.cleaning import CleanResult, Region, clean_image, crop_to_field

pydicom = pytest.importorskip("pydicom")
data = pytest.importorskip("pydicom.data")


def _load(name: str) -> tuple[np.ndarray, list[Region]]:
    """First frame as RGB/grey uint8 (palette colour applied, as a caller would) and its regions."""
    from pydicom.pixels import apply_color_lut

    path = data.get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} not in pydicom-data")
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        arr = arr[0]
    if ds.PhotometricInterpretation == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)  # 16-bit RGB: clean_image windows it
    regions = [
        Region(int(r.RegionLocationMinX0), int(r.RegionLocationMinY0), int(r.RegionLocationMaxX1),
               int(r.RegionLocationMaxY1), int(r.RegionSpatialFormat), int(r.RegionDataType))
        for r in ds.get("SequenceOfUltrasoundRegions", [])
    ]
    return arr, regions


def _check_contract(res: CleanResult) -> None:
    assert res.image.dtype == np.uint8 and res.image.ndim == 2
    assert res.annotation_mask.shape == res.image.shape and res.annotation_mask.dtype == bool
    s = res.summary
    for key in ("pixels_removed", "fraction_removed", "kinds", "flags", "field_source", "confidence"):
        assert key in s
    assert s["pixels_removed"] == int(res.annotation_mask.sum())
    assert 0.0 <= float(s["confidence"]) <= 1.0  # type: ignore[arg-type]


def test_aloka_dual_view_gives_two_fields_at_region_offsets() -> None:
    arr, regions = _load("gdcm-US-ALOKA-16.dcm")
    results = clean_image(arr, regions)
    assert len(results) == 2
    assert [r.offset for r in results] == [(24, 32), (24, 336)]
    assert [r.image.shape for r in results] == [(392, 304), (392, 304)]
    for r in results:
        _check_contract(r)
        assert "dual_view" in r.summary["flags"]  # type: ignore[operator]
        assert r.summary["field_source"] == "regions"


def test_aloka_green_text_inside_field_is_removed() -> None:
    """'127/128' and '20Hz' are burned into the left field's top-right corner, 'L0' in green."""
    arr, regions = _load("gdcm-US-ALOKA-16.dcm")
    left = clean_image(arr, regions)[0]
    text_box = left.annotation_mask[10:36, 215:300]  # crop coordinates of '127/128 / 20Hz'
    assert text_box.sum() > 100
    grey = arr.astype(np.float32).mean(axis=2)[24:416, 32:336][10:36, 215:300]
    # where the white text was, the cleaned image is no longer white
    was_text = text_box & (grey > grey.max() * 0.9)
    assert was_text.sum() > 30
    assert np.percentile(left.image[10:36, 215:300][was_text], 90) < 120


def test_philips_ob_region_crop_and_caliper_removed() -> None:
    arr, regions = _load("OBXXXX1A.dcm")
    results = clean_image(arr, regions)  # the second region is a waveform, not a field
    assert len(results) == 1
    r = results[0]
    _check_contract(r)
    assert r.offset == (60, 120)
    # the '+ ... +' caliper pair near (row 290-302, col 455-505) in the source
    y, x = r.offset
    assert r.annotation_mask[288 - y:305 - y, 452 - x:505 - x].sum() > 10
    # the ultrasound arc itself (rows 70-150, cols 340-560) is kept
    assert r.annotation_mask[75 - y:140 - y, 360 - x:540 - x].mean() < 0.02


def test_ge_power_doppler_is_flagged_not_hidden() -> None:
    arr, _ = _load("US1_UNCR.dcm")
    r = clean_image(arr)[0]
    _check_contract(r)
    assert "doppler" in r.summary["flags"]  # type: ignore[operator]
    assert float(r.summary["confidence"]) < 0.8  # type: ignore[arg-type]


def test_field_detected_from_pixels_for_sector_image() -> None:
    """SonoSite cardiac sector without regions: the crop holds the sector, not the side text."""
    arr, regions = _load("color3d_jpeg_baseline.dcm")
    r = clean_image(arr)[0]
    _check_contract(r)
    assert r.summary["field_source"] == "detected"
    tissue = [reg for reg in regions if reg.spatial_format == 1][0]
    y, x = r.offset
    h, w = r.image.shape
    # overlaps the scanner's own region for most of its area and drops the right-hand text column
    inter = max(0, min(x + w, tissue.x1) - max(x, tissue.x0)) * max(0, min(y + h, tissue.y1) - max(y, tissue.y0))
    assert inter / ((tissue.x1 - tissue.x0) * (tissue.y1 - tissue.y0)) > 0.6
    assert x + w < 600
    # the sector's black top corners are outside the field mask, its middle inside
    assert r.field_mask is not None and r.field_mask.shape == r.image.shape
    assert not r.field_mask[0, 0] and not r.field_mask[0, -1] and r.field_mask[h // 2, w // 2]


def test_crop_to_field_matches_clean_image_offset() -> None:
    arr, regions = _load("gdcm-US-ALOKA-16.dcm")
    crop, offset = crop_to_field(arr, regions)
    assert offset == (24, 32) and crop.shape[:2] == (392, 304)


def test_aloka_grey_bar_region_is_removed() -> None:
    """The file declares its grey bar as a region (data type 13) inside the left field."""
    arr, regions = _load("gdcm-US-ALOKA-16.dcm")
    assert any(r.data_type == 13 for r in regions)
    left = clean_image(arr, regions)[0]
    assert "scale_bar" in left.summary["kinds"]  # type: ignore[operator]
    bar = (slice(40 - 24, 104 - 24), slice(32 - 32, 64 - 32))  # region (32,40)-(63,103) in crop coords
    assert left.annotation_mask[bar].mean() > 0.95
    assert left.image[bar].mean() < 40  # filled with the black around it, not a smeared white
