"""Realistic synthetic ultrasound DICOM for tests: US Image Storage with ultrasound regions in cm."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    UltrasoundImageStorage,
    generate_uid,
)

TEST_UID_ROOT = "1.2.826.0.1.3680043.8.498."


def synthetic_bmode(rows: int = 480, cols: int = 640, seed: int = 0) -> np.ndarray:
    """Speckled tissue with a dark oval 'lesion' and burned-in white text bars outside the field."""
    rng = np.random.default_rng(seed)
    img = (rng.gamma(2.0, 30.0, size=(rows, cols))).clip(0, 255).astype(np.uint8)
    yy, xx = np.mgrid[0:rows, 0:cols]
    cy, cx = rows * 0.55, cols * 0.5
    lesion = ((yy - cy) / (rows * 0.12)) ** 2 + ((xx - cx) / (cols * 0.1)) ** 2 <= 1
    img[lesion] = (img[lesion] * 0.2).astype(np.uint8)
    img[:40, :] = 0
    img[10:22, 20:200] = 255  # a burned-in "text" line above the field
    return img


def us_dataset(
    pixels: np.ndarray,
    *,
    study_uid: str,
    series_uid: str,
    instance_number: int = 1,
    patient_id: str = "TEST-0001",
    patient_name: str = "TEST^PATIENT",
    accession: str = "ACC0001",
    spacing_cm: float = 0.01,
    region: tuple[int, int, int, int] | None = None,
) -> Dataset:
    """A single-frame Ultrasound Image Storage dataset (MONOCHROME2 or RGB, explicit VR LE)."""
    rows, cols = pixels.shape[:2]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(prefix=TEST_UID_ROOT)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = UltrasoundImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    now = datetime.now()
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.AccessionNumber = accession
    ds.Modality = "US"
    ds.Manufacturer = "TestVendor"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "US BREAST"
    ds.SeriesDescription = "B-mode"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.PatientOrientation = ""
    ds.BurnedInAnnotation = "YES"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "", "0001"]
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    if pixels.ndim == 3:
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
    else:
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
    x0, y0, x1, y1 = region if region is not None else (0, 40, cols - 1, rows - 1)
    reg = Dataset()
    reg.RegionSpatialFormat = 1
    reg.RegionDataType = 1
    reg.RegionFlags = 0
    reg.RegionLocationMinX0, reg.RegionLocationMinY0 = x0, y0
    reg.RegionLocationMaxX1, reg.RegionLocationMaxY1 = x1, y1
    reg.PhysicalUnitsXDirection = reg.PhysicalUnitsYDirection = 3  # cm
    reg.PhysicalDeltaX = reg.PhysicalDeltaY = spacing_cm
    reg.ReferencePixelX0 = reg.ReferencePixelY0 = 0
    ds.SequenceOfUltrasoundRegions = Sequence([reg])
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def write_us_study(
    folder: Path, n_images: int = 4, rows: int = 480, cols: int = 640, seed: int = 0, **kwargs: object
) -> list[Path]:
    """Write a multi-image US study (one series) and return the file paths."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = generate_uid(prefix=TEST_UID_ROOT)
    series_uid = generate_uid(prefix=TEST_UID_ROOT)
    paths = []
    for i in range(n_images):
        ds = us_dataset(
            synthetic_bmode(rows, cols, seed=seed + i),
            study_uid=study_uid,
            series_uid=series_uid,
            instance_number=i + 1,
            **kwargs,  # type: ignore[arg-type]
        )
        path = folder / f"US{i + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_ct_instance(path: Path) -> Path:
    """A tiny CT image: a SOP class sonopacs must refuse."""
    ds = us_dataset(np.zeros((16, 16), np.uint8), study_uid=generate_uid(), series_uid=generate_uid())
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.Modality = "CT"
    del ds.SequenceOfUltrasoundRegions
    ds.save_as(path, enforce_file_format=True)
    return path
