"""Reading ultrasound pixels: every photometric interpretation and transfer syntax we claim, frames, regions."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from sonopacs.dicom_node.eligibility import is_our_result, skip_reason
from sonopacs.dicom_node.pixels import PixelReadError, read_frames, select_frames
from sonopacs.dicom_node.regions import read_regions, spacing_at, tissue_regions
from tests.support.dicom_factory import synthetic_bmode, us_dataset, write_ct_instance
from tests.support.us_realistic import to_jpeg_ybr422

UID_ROOT = "1.2.826.0.1.3680043.10.1471."

# pydicom-data ultrasound files: (name, expected ndim of a display frame, number of frames)
SAMPLES = [
    ("US1_UNCR.dcm", 3, 1),  # RGB, uncompressed
    ("examples_ybr_color.dcm", 3, 30),  # JPEG Baseline YBR_FULL_422, multi-frame
    ("examples_palette.dcm", 3, 1),  # PALETTE COLOR 8 bit
    ("gdcm-US-ALOKA-16.dcm", 3, 1),  # PALETTE COLOR 16 bit, implicit VR
    ("OBXXXX1A_rle_2frame.dcm", 3, 2),  # RLE, palette, multi-frame
    ("US1_J2KR.dcm", 3, 1),  # JPEG 2000 lossless YBR_RCT
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", 2, 1),  # JPEG lossless MONOCHROME2
    ("ExplVR_BigEnd.dcm", 3, 1),  # big endian RGB
]


def _sample(name: str) -> Path:
    data = pytest.importorskip("pydicom.data")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return Path(data.get_testdata_file(name))
        except Exception as exc:  # noqa: BLE001
            pytest.skip(f"pydicom-data sample {name} unavailable: {exc}")


@pytest.mark.parametrize(("name", "ndim", "n_frames"), SAMPLES)
def test_reads_public_ultrasound_samples(name: str, ndim: int, n_frames: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(_sample(name))
    frames = read_frames(ds, max_frames=4)
    assert frames.number_of_frames == n_frames
    assert frames.indices == select_frames(n_frames, 4)
    for image in frames.images:
        assert image.dtype == np.uint8
        assert image.ndim == ndim
        assert image.shape[:2] == (ds.Rows, ds.Columns)
        assert image.max() > image.min()  # not blank after colour conversion / windowing


def test_select_frames_is_evenly_spaced_and_bounded() -> None:
    assert select_frames(1, 8) == [0]
    assert select_frames(5, 8) == [0, 1, 2, 3, 4]
    assert select_frames(120, 4) == [0, 40, 79, 119]
    assert select_frames(10, 1) == [5]
    assert len(select_frames(1000, 8)) == 8


def _grey_ds(pixels: np.ndarray) -> pydicom.Dataset:
    return us_dataset(pixels, study_uid=generate_uid(), series_uid=generate_uid())


def test_monochrome1_is_inverted_for_display() -> None:
    pixels = synthetic_bmode(128, 160)
    ds = _grey_ds(pixels)
    ds.PhotometricInterpretation = "MONOCHROME1"
    (image,) = read_frames(ds).images
    assert np.array_equal(image, 255 - pixels)


def test_sixteen_bit_grey_is_windowed_to_uint8() -> None:
    pixels = (synthetic_bmode(128, 160).astype(np.uint16) * 15) + 20
    ds = _grey_ds(pixels.astype(np.uint8))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelData = pixels.tobytes()
    (image,) = read_frames(ds).images
    assert image.dtype == np.uint8 and image.shape == pixels.shape
    assert np.corrcoef(image.ravel(), pixels.ravel())[0, 1] > 0.99


def test_ybr_full_is_converted_to_rgb() -> None:
    from pydicom.pixels import convert_color_space

    rgb = np.stack([synthetic_bmode(96, 128, seed=s) for s in range(3)], axis=2)
    ds = _grey_ds(rgb)
    ds.PhotometricInterpretation = "YBR_FULL"
    ds.PixelData = convert_color_space(rgb, "RGB", "YBR_FULL").astype(np.uint8).tobytes()
    (image,) = read_frames(ds).images
    assert np.abs(image.astype(int) - rgb.astype(int)).max() <= 2


def test_jpeg_baseline_ybr_full_422_multiframe_reads_selected_frames() -> None:
    frames = np.stack([np.repeat(synthetic_bmode(120, 160, seed=s)[:, :, None], 3, 2) for s in range(6)])
    ds = _grey_ds(frames[0, :, :, 0])
    to_jpeg_ybr422(ds, frames)
    read = read_frames(ds, max_frames=3)
    assert read.number_of_frames == 6 and read.indices == [0, 2, 5]
    for index, image in zip(read.indices, read.images, strict=True):
        assert image.shape == (120, 160, 3)
        # lossy, but clearly the right frame: closer to its own original than to any other
        errors = [np.abs(image.astype(int) - f.astype(int)).mean() for f in frames]
        assert int(np.argmin(errors)) == index


def test_missing_pixel_data_and_unknown_photometric_are_reported() -> None:
    ds = _grey_ds(synthetic_bmode(64, 64))
    ds.PhotometricInterpretation = "HSV"
    with pytest.raises(PixelReadError, match="photometric"):
        read_frames(ds)
    del ds.PixelData
    with pytest.raises(PixelReadError, match="no pixel data"):
        read_frames(ds)


def test_regions_give_spacing_in_mm_only_for_cm_units() -> None:
    ds = us_dataset(synthetic_bmode(), study_uid=generate_uid(), series_uid=generate_uid(), spacing_cm=0.012)
    (region,) = read_regions(ds)
    assert region.spacing_mm == pytest.approx((0.12, 0.12))
    assert (region.x0, region.y0, region.x1, region.y1) == (0, 40, 639, 479)
    assert spacing_at([region], 100, 100) == pytest.approx((0.12, 0.12))
    ds.SequenceOfUltrasoundRegions[0].PhysicalUnitsXDirection = 0  # no units
    assert read_regions(ds)[0].spacing_mm is None


def test_dual_view_and_doppler_regions() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(_sample("gdcm-US-ALOKA-16.dcm"), stop_before_pixels=True)
    regions = read_regions(ds)
    assert len(tissue_regions(regions)) == 2
    assert all(r.spacing_mm == pytest.approx((0.3827, 0.3827), abs=1e-3) for r in tissue_regions(regions))


def test_eligibility_refuses_what_is_not_2d_ultrasound(tmp_path: Path) -> None:
    ct = pydicom.dcmread(write_ct_instance(tmp_path / "ct.dcm"))
    assert "not a 2D ultrasound" in (skip_reason(ct, UID_ROOT) or "")
    us = us_dataset(synthetic_bmode(), study_uid=generate_uid(), series_uid=generate_uid())
    assert skip_reason(us, UID_ROOT) is None
    us.SequenceOfUltrasoundRegions[0].RegionSpatialFormat = 3  # spectral only
    assert "no 2D image region" in (skip_reason(us, UID_ROOT) or "")


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("SOPInstanceUID", UID_ROOT + "1.2.3"),
        ("SeriesInstanceUID", UID_ROOT + "4.5.6"),
        ("Manufacturer", "sonopacs"),
        ("SeriesDescription", "sonopacs AI overlay"),
    ],
)
def test_our_own_results_are_never_analysed(keyword: str, value: str) -> None:
    ds = us_dataset(synthetic_bmode(), study_uid=generate_uid(), series_uid=generate_uid())
    setattr(ds, keyword, value)
    assert is_our_result(ds, UID_ROOT)
    assert "sonopacs result" in (skip_reason(ds, UID_ROOT) or "")
