"""Deterministic preprocessing shared by training, evaluation and the Analyzer.

The model sees a square, aspect-preserving letterbox of the cleaned image: the long side is
resized to ``size`` and the short side zero-padded symmetrically (ultrasound geometry must not be
stretched: a lesion's taller-than-wide shape is itself a malignancy sign). The MONAI transforms do
the resize and pad; ``Letterbox`` records how to map outputs back to the input's own pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from monai.transforms import Compose, Resize, ScaleIntensityRange, SpatialPad


def to_gray(image: np.ndarray) -> np.ndarray:
    """uint8 HxW from HxW, HxWx1, HxWx3 or HxWx4 input (colour Doppler becomes luminance)."""
    img = np.asarray(image)
    if img.ndim == 3:
        if img.shape[2] == 1:
            img = img[..., 0]
        elif img.shape[2] >= 3:
            img = cv2.cvtColor(np.ascontiguousarray(img[..., :3]), cv2.COLOR_RGB2GRAY)
        else:
            raise ValueError(f"unsupported channel count {img.shape}")
    if img.ndim != 2:
        raise ValueError(f"expected a 2D image, got shape {image.shape}")
    if img.dtype != np.uint8:
        img = img.astype(np.float32)
        lo, hi = float(img.min()), float(img.max())
        img = ((img - lo) / max(hi - lo, 1e-6) * 255.0).round().astype(np.uint8)
    return img


@dataclass(frozen=True)
class Letterbox:
    """Where an HxW image lies inside the size x size model input."""

    height: int
    width: int
    size: int

    @property
    def scale(self) -> float:
        return self.size / max(self.height, self.width)

    @property
    def inner(self) -> tuple[int, int]:
        """(rows, cols) of the resized image inside the padded square."""
        return (max(1, round(self.height * self.scale)), max(1, round(self.width * self.scale)))

    @property
    def pad(self) -> tuple[int, int]:
        """(top, left) padding, as MONAI's symmetric SpatialPad places it."""
        ih, iw = self.inner
        return ((self.size - ih) // 2, (self.size - iw) // 2)

    @property
    def fill(self) -> float:
        """The image's share of the padded square: a share of the image times this is a share of
        the model's input frame, the frame training measures mask areas in."""
        ih, iw = self.inner
        return ih * iw / (self.size * self.size)

    def unletterbox(self, arr: np.ndarray, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
        """Map a size x size model output back to the input's HxW pixel geometry."""
        (ih, iw), (top, left) = self.inner, self.pad
        crop = np.ascontiguousarray(arr[top : top + ih, left : left + iw])
        return cv2.resize(crop, (self.width, self.height), interpolation=interpolation)


def _resize_pad(size: int, mode: str) -> Compose:
    return Compose(
        [
            Resize(spatial_size=size, size_mode="longest", mode=mode, anti_aliasing=mode == "area"),
            SpatialPad(spatial_size=(size, size), method="symmetric"),
        ]
    )


def letterbox_image(gray: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """uint8 HxW -> uint8 size x size letterbox (MONAI Resize longest side + symmetric pad)."""
    box = Letterbox(gray.shape[0], gray.shape[1], size)
    t = torch.from_numpy(gray.astype(np.float32))[None]
    out = _resize_pad(size, "area" if box.scale < 1 else "bilinear")(t)
    arr = np.asarray(out[0]).round().clip(0, 255).astype(np.uint8)
    return arr, box


def letterbox_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Bool HxW -> uint8 {0,1} size x size with the same geometry as ``letterbox_image``."""
    t = torch.from_numpy(mask.astype(np.float32))[None]
    out = _resize_pad(size, "bilinear")(t)
    return (np.asarray(out[0]) >= 0.5).astype(np.uint8)


INTENSITY_SCALE = ScaleIntensityRange(a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0, clip=True)


def to_model_input(letterboxed: np.ndarray) -> torch.Tensor:
    """uint8 size x size -> float tensor 1 x size x size in [0, 1].

    Bit-identical to ``INTENSITY_SCALE`` (MONAI ``ScaleIntensityRange`` 0..255 -> 0..1, checked in
    the tests) but one plain tensor op: the MetaTensor round trip cost ~10 ms per image on the CPU.
    """
    t = torch.from_numpy(np.ascontiguousarray(letterboxed)).float()[None]
    return ((t - 0.0) / 255.0).clamp_(0.0, 1.0)


def equalise_batch(x: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """Histogram equalisation of each image's non-black pixels (B x 1 x H x W in [0, 1] -> same).

    Why: every pixel becomes its mid-rank among the image's non-black pixels, so any monotone change
    of grey levels (a scanner's gain, dynamic range or gamma) gives the same input. Black stays black:
    the letterbox padding and the frame around the field must not take part in the ranking. MONAI's
    ``HistogramNormalize`` equalises one NumPy image at a time with one given mask; this runs on the
    batch tensor inside the network, each image's own non-black pixels its mask.
    """
    q = (x.clamp(0.0, 1.0) * (bins - 1)).round().long().flatten(1)
    counts = torch.zeros(q.shape[0], bins, dtype=x.dtype, device=x.device)
    counts.scatter_add_(1, q, torch.ones_like(q, dtype=x.dtype))
    counts[:, 0] = 0.0  # black is not counted, so its mid-rank below is 0: black stays black
    cdf = counts.cumsum(1)
    mid_rank = (cdf - counts / 2) / cdf[:, -1:].clamp(min=1.0)
    return mid_rank.gather(1, q).view_as(x)


def normalize_batch(x: torch.Tensor, mean: float = 0.25, std: float = 0.25) -> torch.Tensor:
    """Fixed standardisation applied inside the network wrapper ([0,1] -> roughly zero mean)."""
    return (x - mean) / std
