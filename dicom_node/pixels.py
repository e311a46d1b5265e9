"""Decode ultrasound frames to display-ready uint8 arrays, whatever the transfer syntax or colour model.

Why uint8 grey or RGB: cleaning, the models and the overlay all work on what the sonographer saw
on screen, so MONOCHROME1 is inverted, YBR and palette colour become RGB and 16-bit data is windowed
(VOI LUT when present, else a robust percentile window) once, here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_voi_lut, pixel_array

SUPPORTED_PHOTOMETRIC = {
    "MONOCHROME1",
    "MONOCHROME2",
    "RGB",
    "YBR_FULL",
    "YBR_FULL_422",
    "YBR_RCT",
    "YBR_ICT",
    "YBR_PARTIAL_420",
    "PALETTE COLOR",
}


class PixelReadError(ValueError):
    """The pixel data cannot be turned into frames; the message is the skip/failure reason."""


@dataclass
class Frames:
    """The frames chosen for analysis with their 0-based indices in the source object."""

    images: list[np.ndarray]  # each HxW or HxWx3 uint8
    indices: list[int]
    number_of_frames: int
    photometric: str


def frame_count(ds: Dataset) -> int:
    return int(getattr(ds, "NumberOfFrames", 1) or 1)


def select_frames(n_frames: int, max_frames: int) -> list[int]:
    """Up to max_frames evenly spaced 0-based indices including the first and the last frame."""
    if n_frames <= 0:
        return []
    if n_frames <= max_frames:
        return list(range(n_frames))
    if max_frames == 1:
        return [n_frames // 2]
    return sorted({int(round(v)) for v in np.linspace(0, n_frames - 1, max_frames)})


def read_frames(ds: Dataset, max_frames: int = 8) -> Frames:
    """Decode up to max_frames evenly spaced frames of ds (which must include the pixel data)."""
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise PixelReadError("no pixel data")
    photometric = str(getattr(ds, "PhotometricInterpretation", "")).strip().upper()
    if photometric not in SUPPORTED_PHOTOMETRIC:
        raise PixelReadError(f"unsupported photometric interpretation {photometric or 'missing'}")
    n = frame_count(ds)
    indices = select_frames(n, max_frames)
    images = [read_frame(ds, index) for index in indices]
    return Frames(images=images, indices=indices, number_of_frames=n, photometric=photometric)


def read_frame(ds: Dataset, index: int) -> np.ndarray:
    """One frame (0-based) as display uint8, e.g. to draw the overlay on the frame that was analysed."""
    photometric = str(getattr(ds, "PhotometricInterpretation", "")).strip().upper()
    if photometric not in SUPPORTED_PHOTOMETRIC:
        raise PixelReadError(f"unsupported photometric interpretation {photometric or 'missing'}")
    try:
        raw = pixel_array(ds, index=index if frame_count(ds) > 1 else None)
    except Exception as exc:  # noqa: BLE001 - decoder errors of any type become one reason
        raise PixelReadError(f"cannot decode frame {index}: {exc}") from exc
    return to_display(raw, ds, photometric)


def to_display(arr: np.ndarray, ds: Dataset, photometric: str) -> np.ndarray:
    """One decoded frame -> uint8 grey (HxW) or RGB (HxWx3) as it is meant to be displayed."""
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        return _window(rgb) if rgb.dtype != np.uint8 else rgb
    if arr.ndim == 3:
        # pydicom already converted YBR_* to RGB (as_rgb=True is its default).
        return arr if arr.dtype == np.uint8 else _window(arr)
    if arr.ndim != 2:
        raise PixelReadError(f"unexpected frame shape {arr.shape}")
    grey = arr
    has_voi = "WindowCenter" in ds or "VOILUTSequence" in ds
    if has_voi and int(getattr(ds, "BitsStored", 8)) > 8:
        grey = apply_voi_lut(arr, ds)
    grey = grey if grey.dtype == np.uint8 else _window(grey)
    if photometric == "MONOCHROME1":
        grey = 255 - grey
    return grey


def _window(arr: np.ndarray) -> np.ndarray:
    """Map any numeric array to uint8 over its 0.5-99.5 percentile range (robust to hot pixels)."""
    data = arr.astype(np.float32)
    step = max(1, int(np.sqrt(data.size / 250_000)))
    lo, hi = np.percentile(data.reshape(-1)[::step], [0.5, 99.5])
    if hi <= lo:
        lo, hi = float(data.min()), float(data.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.clip((data - lo) * (255.0 / (hi - lo)), 0, 255).round().astype(np.uint8)
