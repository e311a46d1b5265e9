"""Pixel-count limits, checked from headers before anything is decoded (decompression bombs).

Why here and not in the decoder: a 4.5 KB JPEG may claim 16000 x 65500 pixels, and every decoder
allocates the whole frame before it finds out the data is missing. So the door (listener), the
worker's pixel reader and the one-off analysis all ask the same two questions first: how many
samples does one frame claim (the data set's Rows/Columns, and the compressed codestream's own
frame header, which a decoder trusts over the data set), and how many does the whole object claim.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from sonopacs.config.settings import DicomSettings

# 4096 x 4096 RGB: the largest real ultrasound frame; a cine may have many such frames.
DEFAULT_MAX_FRAME_SAMPLES = 4096 * 4096 * 3
DEFAULT_MAX_TOTAL_SAMPLES = 1024**3


class PixelLimitError(ValueError):
    """The object claims more pixels than the configured limits; the message is the reason."""


@dataclass(frozen=True)
class PixelLimits:
    """Samples (rows x columns x samples per pixel) allowed per frame and for the whole object."""

    max_frame_samples: int = DEFAULT_MAX_FRAME_SAMPLES
    max_total_samples: int = DEFAULT_MAX_TOTAL_SAMPLES

    @classmethod
    def of(cls, dicom: DicomSettings) -> PixelLimits:
        """The configured limits (dicom.max_frame_samples, dicom.max_pixel_samples)."""
        return cls(max_frame_samples=dicom.max_frame_samples, max_total_samples=dicom.max_pixel_samples)

    def check(self, rows: int, columns: int, samples_per_pixel: int = 1, frames: int = 1) -> None:
        """Raise PixelLimitError when one frame or the whole object is over the limits."""
        spp, n = max(samples_per_pixel, 1), max(frames, 1)
        per_frame = rows * columns * spp
        if per_frame > self.max_frame_samples:
            raise PixelLimitError(
                f"frame of {rows}x{columns}x{spp} samples over limit {self.max_frame_samples}"
            )
        if per_frame * n > self.max_total_samples:
            raise PixelLimitError(
                f"pixel matrix {rows}x{columns}x{n}x{spp} over limit {self.max_total_samples}"
            )

    def check_codestream(self, fragment: bytes, rows: int, columns: int) -> None:
        """The frame size a compressed codestream declares must fit the limits and match the data set.

        A decoder allocates what the codestream says, not what Rows/Columns say, so a small data set
        header in front of a huge JPEG frame header is refused too. Unknown formats pass (RLE has no
        size of its own: its decoder uses Rows/Columns, already checked).
        """
        size = codestream_size(fragment)
        if size is None:
            return
        c_rows, c_cols, components = size
        try:
            self.check(c_rows, c_cols, components)
        except PixelLimitError as exc:
            raise PixelLimitError(f"compressed frame header: {exc}") from exc
        if (c_rows, c_cols) != (rows, columns) and c_rows != 0:
            raise PixelLimitError(
                f"compressed frame is {c_rows}x{c_cols}, data set says {rows}x{columns}"
            )


# JPEG Start-Of-Frame markers (baseline, extended, progressive, lossless, JPEG-LS SOF55);
# 0xC4 (DHT), 0xC8 (JPG) and 0xCC (DAC) share the range but are not frames.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RSTn: no length field
_SCAN_LIMIT = 1 << 16  # a frame header sits within the first few KB; never walk a whole fragment


def codestream_size(data: bytes) -> tuple[int, int, int] | None:
    """(rows, columns, components) from a JPEG / JPEG-LS / JPEG 2000 frame header, else None."""
    if data.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    if data.startswith(b"\xff\x4f\xff\x51"):
        return _j2k_size(data, 2)
    if data[4:8] == b"jP  ":  # a JP2 file wrapper: find the codestream box
        at = data.find(b"\xff\x4f\xff\x51", 0, _SCAN_LIMIT)
        return _j2k_size(data, at + 2) if at >= 0 else None
    return None


def _jpeg_size(data: bytes) -> tuple[int, int, int] | None:
    pos, end = 2, min(len(data), _SCAN_LIMIT)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if marker in _JPEG_SOF:
            if pos + 10 > len(data):
                return None
            _precision, rows, cols, components = struct.unpack_from(">BHHB", data, pos + 4)
            return rows, cols, components
        if marker == 0xDA or length < 2:  # start of scan before any frame header: not ours to judge
            return None
        pos += 2 + length
    return None


def _j2k_size(data: bytes, siz: int) -> tuple[int, int, int] | None:
    """SIZ marker segment at ``siz`` (its 0xFF51): Lsiz, Rsiz, Xsiz, Ysiz, XOsiz, YOsiz, 4 tile sizes, Csiz."""
    if siz + 40 > len(data):
        return None
    xsiz, ysiz, xo, yo = struct.unpack_from(">IIII", data, siz + 6)
    (components,) = struct.unpack_from(">H", data, siz + 38)
    return ysiz - yo, xsiz - xo, components


def check_fragments(limits: PixelLimits, fragments: Iterable[bytes], rows: int, columns: int) -> None:
    """check_codestream for every fragment that starts a codestream (one per frame, usually)."""
    for fragment in fragments:
        limits.check_codestream(fragment, rows, columns)
