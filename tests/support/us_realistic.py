"""Test images wrapped as realistic ultrasound DICOM: a scanner-like frame (black border, header text,
calipers burned into the field), a region in cm, and JPEG Baseline YBR_FULL_422 or uncompressed.

Tissue comes from the shared BUSI development images when present (the model then has something
real to look at), else from the synthetic B-mode generator.
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, UltrasoundMultiFrameImageStorage, generate_uid

from tests.support.dicom_factory import TEST_UID_ROOT, synthetic_bmode, us_dataset

BUSI = Path("/work/shared/datasets/busi")
BUSI_PICKS = ["malignant/malignant (1).png", "benign/benign (1).png", "malignant/malignant (10).png", "normal/normal (1).png"]
FIELD = (80, 48, 559, 431)  # x0, y0, x1, y1 of the ultrasound region in a 480x640 frame
SPACING_CM = 0.0085


def tissue_images(n: int) -> list[np.ndarray]:
    """n grey uint8 tissue images (BUSI when available, else synthetic)."""
    out = []
    for i in range(n):
        path = BUSI / BUSI_PICKS[i % len(BUSI_PICKS)]
        if path.exists():
            out.append(np.asarray(Image.open(path).convert("L")))
        else:
            out.append(synthetic_bmode(384, 480, seed=i)[40:])
    return out


def scanner_frame(tissue: np.ndarray, seed: int = 0) -> np.ndarray:
    """A 480x640 grey frame: tissue in FIELD, header text above it, calipers and a label inside."""
    x0, y0, x1, y1 = FIELD
    frame = np.zeros((480, 640), np.uint8)
    frame[y0 : y1 + 1, x0 : x1 + 1] = cv2.resize(tissue, (x1 - x0 + 1, y1 - y0 + 1), interpolation=cv2.INTER_AREA)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(frame, "BREAST LT 2:00 4CMFN", (8, 20), font, 0.5, 255, 1, cv2.LINE_AA)
    cv2.putText(frame, "L12-5 12MHz  GN 50  D 4.0cm", (8, 40), font, 0.45, 230, 1, cv2.LINE_AA)
    rng = np.random.default_rng(seed)
    cx, cy = x0 + 40 + int(rng.integers(0, 60)), y0 + 30 + int(rng.integers(0, 40))
    for dx, dy in ((0, 0), (90, 0)):
        cv2.drawMarker(frame, (cx + dx, cy + dy), 255, cv2.MARKER_CROSS, 9, 1)
    cv2.putText(frame, "RAD", (x1 - 60, y1 - 12), font, 0.5, 255, 1, cv2.LINE_AA)
    return frame


def write_realistic_study(
    folder: Path, n_images: int = 4, jpeg_every: int = 2, tissue: list[np.ndarray] | None = None
) -> list[Path]:
    """One study, one series; every `jpeg_every`-th image is JPEG Baseline YBR_FULL_422 (RGB).

    `tissue` overrides the images wrapped (default: tissue_images(n_images)).
    """
    folder.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid = generate_uid(prefix=TEST_UID_ROOT), generate_uid(prefix=TEST_UID_ROOT)
    paths = []
    for i, image in enumerate(tissue if tissue is not None else tissue_images(n_images)):
        frame = scanner_frame(image, seed=i)
        ds = us_dataset(
            frame,
            study_uid=study_uid,
            series_uid=series_uid,
            instance_number=i + 1,
            spacing_cm=SPACING_CM,
            region=FIELD,
        )
        ds.Laterality = "L"
        ds.BodyPartExamined = "BREAST"
        if jpeg_every and i % jpeg_every == 1:
            to_jpeg_ybr422(ds, np.repeat(frame[:, :, None], 3, axis=2))
        path = folder / f"US{i + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def to_jpeg_ybr422(ds: object, rgb: np.ndarray, quality: int = 92) -> None:
    """Replace ds's pixels by JPEG Baseline (Process 1) YBR_FULL_422 frames encoded with Pillow.

    rgb is HxWx3 or NxHxWx3 uint8; Pillow's subsampling=1 is 4:2:2.
    """
    frames = rgb[None] if rgb.ndim == 3 else rgb
    fragments = []
    for frame in frames:
        buf = io.BytesIO()
        Image.fromarray(frame, "RGB").save(buf, format="JPEG", quality=quality, subsampling=1)
        fragments.append(buf.getvalue())
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit  # type: ignore[attr-defined]
    ds.SamplesPerPixel = 3  # type: ignore[attr-defined]
    ds.PhotometricInterpretation = "YBR_FULL_422"  # type: ignore[attr-defined]
    ds.PlanarConfiguration = 0  # type: ignore[attr-defined]
    ds.LossyImageCompression = "01"  # type: ignore[attr-defined]
    ds.LossyImageCompressionMethod = "ISO_10918_1"  # type: ignore[attr-defined]
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)  # type: ignore[attr-defined]
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage  # type: ignore[attr-defined]
        ds.FrameTime = 33.3  # type: ignore[attr-defined]
        ds.FrameIncrementPointer = 0x00181063  # type: ignore[attr-defined]
    ds.PixelData = encapsulate(fragments)  # type: ignore[attr-defined]
    ds["PixelData"].VR = "OB"  # type: ignore[index]
    ds["PixelData"].is_undefined_length = True  # type: ignore[index]
