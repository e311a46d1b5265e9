"""Input validation and conversion to the 8-bit grey + chroma planes the detectors work on."""

from __future__ import annotations

import cv2
import numpy as np

MIN_SIDE = 8  # below this there is no image to clean, only a mistake upstream


def validate(image: object, max_pixels: int) -> np.ndarray:
    """Refuse what cannot be an ultrasound frame, with a message that says what was wrong."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"clean_image expects a numpy array, got {type(image).__name__}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]  # RGBA from PNG: alpha carries no ultrasound
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"clean_image expects HxW or HxWx3 pixels, got shape {image.shape}")
    h, w = image.shape[:2]
    if h < MIN_SIDE or w < MIN_SIDE:
        raise ValueError(f"image {h}x{w} is too small to clean (minimum {MIN_SIDE}x{MIN_SIDE})")
    if h * w > max_pixels:
        raise ValueError(f"image {h}x{w} has {h * w} pixels, over max_pixels={max_pixels}; refusing it")
    if image.dtype == np.bool_ or not (np.issubdtype(image.dtype, np.integer)
                                       or np.issubdtype(image.dtype, np.floating)):
        raise ValueError(f"clean_image expects uint8 or uint16 pixels, got dtype {image.dtype}")
    return image


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Bring wider pixels to 0..255.

    Colour (HxWx3) is scaled by its bit depth (2^bits - 1 from the largest value): 16-bit RGB comes
    from palette LUTs or RGB scanners and is 8-bit display data scaled up, so its contrast must not
    change. Grey is windowed on its own 0.5-99.5 percentiles: 16-bit grey ultrasound often uses only
    8-12 of its bits, and a plain /257 would leave a black image.
    """
    if image.dtype == np.uint8:
        return image
    data = image.astype(np.float32)
    finite = np.isfinite(data)
    if not finite.all():
        data = np.where(finite, data, 0.0)
    lo_all, hi_all = float(data.min()), float(data.max())
    if lo_all >= 0 and hi_all <= 255:
        return np.clip(data + 0.5, 0, 255).astype(np.uint8)
    if data.ndim == 3 and lo_all >= 0:
        full = 2.0 ** np.ceil(np.log2(hi_all + 1.0)) - 1.0
        return np.clip(data * (255.0 / full) + 0.5, 0, 255).astype(np.uint8)
    step = max(1, int(np.sqrt(data.size / 250_000)))
    sample = data[::step, ::step]
    lo, hi = np.percentile(sample, [0.5, 99.5])
    if hi <= lo:
        lo, hi = float(sample.min()), float(sample.max())
    if hi <= lo:
        return np.zeros(image.shape, dtype=np.uint8)
    out = (data - lo) * (255.0 / (hi - lo))
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def grey_and_chroma(image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Grey level (BT.601 luma) and chroma (max-min over RGB), or None when the frame is grey.

    Chroma separates overlay colours (green text, yellow markers) and Doppler from B-mode.
    An RGB frame whose three channels are equal is treated as grey.
    """
    if image.ndim == 2:
        return image, None
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    r, g, b = cv2.split(image)
    chroma = cv2.subtract(cv2.max(cv2.max(r, g), b), cv2.min(cv2.min(r, g), b))
    if cv2.minMaxLoc(chroma)[1] <= 12:
        return grey, None
    return grey, chroma


def rgb_max(image: np.ndarray) -> np.ndarray:
    """Largest of R, G, B per pixel (HSV 'value'): how bright a coloured pixel is."""
    r, g, b = cv2.split(image)
    return cv2.max(cv2.max(r, g), b)
