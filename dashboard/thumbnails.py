"""PNG thumbnails of our Secondary Capture overlays, rendered server-side from the DICOM pixel data.

The browser never sees the DICOM file (its header carries PHI); only downscaled pixels leave.
Rendered thumbnails are cached in memory by path and modification time.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image

MAX_SIDE = 480
_CACHE_SIZE = 128
_cache: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
_lock = threading.Lock()


class ThumbnailError(ValueError):
    """The file is missing or its pixels cannot be shown."""


def to_uint8(pixels: np.ndarray, photometric: str = "") -> np.ndarray:
    """Window the full range to 0-255 (SC overlays are already 8-bit; this also covers 16-bit)."""
    arr = pixels.astype(np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
    out = arr.clip(0, 255).astype(np.uint8)
    if photometric == "MONOCHROME1":
        out = 255 - out
    return out


def render_png(path: Path, max_side: int = MAX_SIDE) -> bytes:
    """First frame of a DICOM image as a PNG no larger than max_side on its long edge."""
    from pydicom import dcmread
    from pydicom.pixels import apply_color_lut, convert_color_space

    try:
        stat = path.stat()
    except OSError as exc:
        raise ThumbnailError("result file is missing from storage") from exc
    key = (str(path), stat.st_mtime_ns, max_side)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    try:
        ds = dcmread(path)
        pixels = ds.pixel_array
    except Exception as exc:
        raise ThumbnailError(f"cannot decode pixel data: {type(exc).__name__}") from exc
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        pixels = pixels[0]
    photometric = str(getattr(ds, "PhotometricInterpretation", ""))
    if photometric.startswith("YBR"):
        pixels = convert_color_space(pixels, photometric, "RGB")
    elif photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, ds)
    img = Image.fromarray(to_uint8(pixels, photometric) if pixels.dtype != np.uint8 or photometric == "MONOCHROME1" else pixels)
    img.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    data = buf.getvalue()
    with _lock:
        _cache[key] = data
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return data


def resolve_in_storage(root: Path, stored: str) -> Path:
    """A result's file: relative paths are under the storage root; nothing outside it is served."""
    base = root.resolve()
    path = Path(stored)
    path = (path if path.is_absolute() else base / path).resolve()
    if not path.is_relative_to(base):
        raise ThumbnailError("result file is outside the storage root")
    return path
