"""Decode ultrasound frames to display-ready uint8 arrays, whatever the transfer syntax or colour model.

Why uint8 grey or RGB: cleaning, the models and the overlay all work on what the sonographer saw
on screen, so MONOCHROME1 is inverted, YBR and palette colour become RGB and 16-bit data is windowed
(VOI LUT when present, else a robust percentile window) once, here.

Nothing is decoded before the header says it fits the pixel limits (``limits``): Rows x Columns x
samples per frame and in all, and for compressed frames the size their own codestream declares
(what the decoder would allocate). Cine is decoded one chosen frame at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels import apply_color_lut, apply_voi_lut, pixel_array

from sonopacs.config.logs import remember_phi
from sonopacs.dicom_node.limits import PixelLimitError, PixelLimits

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


def read_frames(ds: Dataset, max_frames: int = 8, limits: PixelLimits | None = None) -> Frames:
    """Decode up to max_frames evenly spaced frames of ds (which must include the pixel data)."""
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise PixelReadError("no pixel data")
    photometric = str(getattr(ds, "PhotometricInterpretation", "")).strip().upper()
    if photometric not in SUPPORTED_PHOTOMETRIC:
        raise PixelReadError(f"unsupported photometric interpretation {photometric or 'missing'}")
    check_limits(ds, limits)
    n = frame_count(ds)
    indices = select_frames(n, max_frames)
    images = [read_frame(ds, index, limits) for index in indices]
    return Frames(images=images, indices=indices, number_of_frames=n, photometric=photometric)


def check_limits(ds: Dataset, limits: PixelLimits | None = None) -> None:
    """Refuse (PixelReadError) what the header says is over the pixel limits, before any decode."""
    _remember_phi(ds)
    limits = limits or PixelLimits()
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise PixelReadError(f"Rows/Columns/SamplesPerPixel unusable: {exc}") from exc
    try:
        limits.check(rows, cols, samples, frame_count(ds))
    except PixelLimitError as exc:
        raise PixelReadError(f"not decoded: {exc}") from exc


def _remember_phi(ds: Dataset) -> None:
    """This process reads these values now: keep them out of every log line (config.logs)."""
    for keyword in ("PatientName", "PatientID", "AccessionNumber"):
        try:
            remember_phi(ds.get(keyword))
        except Exception:  # noqa: BLE001 - an undecodable value cannot be printed either
            continue


def _check_codestream(ds: Dataset, index: int, limits: PixelLimits) -> None:
    """A compressed frame's own header must fit the limits and match Rows/Columns before decoding."""
    if "PixelData" not in ds or not ds.file_meta.get("TransferSyntaxUID", None):
        return
    if not ds.file_meta.TransferSyntaxUID.is_encapsulated:
        return
    try:
        frame = get_frame(ds.PixelData, index, number_of_frames=frame_count(ds))
    except Exception as exc:  # noqa: BLE001 - a broken fragment structure is a reason, not a crash
        raise PixelReadError(f"cannot find frame {index}: {exc}") from exc
    try:
        limits.check_codestream(bytes(frame[: 1 << 16]), int(ds.Rows), int(ds.Columns))
    except PixelLimitError as exc:
        raise PixelReadError(f"frame {index} not decoded: {exc}") from exc


def read_frame(ds: Dataset, index: int, limits: PixelLimits | None = None) -> np.ndarray:
    """One frame (0-based) as display uint8, e.g. to draw the overlay on the frame that was analysed."""
    photometric = str(getattr(ds, "PhotometricInterpretation", "")).strip().upper()
    if photometric not in SUPPORTED_PHOTOMETRIC:
        raise PixelReadError(f"unsupported photometric interpretation {photometric or 'missing'}")
    limits = limits or PixelLimits()
    check_limits(ds, limits)
    _check_codestream(ds, index, limits)
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
