"""A second, zoomed look at the lesion the first look found.

Why: the networks see a whole field shrunk to their input size, so a small lesion is a few dozen
pixels there. Cropping the field around the found region and running the same networks on the crop
shows the lesion at several times the resolution. At a site the networks never saw, the crop's class
logits averaged with the whole field's told benign from malignant better, and the crop's lesion
probability drew closer outlines (model card, "Second look"). Whether a lesion is present stays the
first look's decision: on the crop alone the networks did not separate normal tissue from lesions
any better.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class SecondLook:
    """Where to look again: a square whose side is the found region's longer side / ``fraction``,
    at least ``min_side`` image pixels, moved inside the image. No second look where that square
    would cover more than ``max_cover`` of the image: the first look saw it at that scale already."""

    fraction: float = 0.5
    min_side: int = 48
    max_cover: float = 0.6

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"second_look.fraction must be in (0, 1], not {self.fraction}")
        if not 0.0 < self.max_cover <= 1.0:
            raise ValueError(f"second_look.max_cover must be in (0, 1], not {self.max_cover}")

    def crop(self, found: np.ndarray) -> tuple[slice, slice] | None:
        """The (rows, columns) to look at again around ``found``, or None."""
        ys, xs = np.nonzero(found)
        if len(ys) == 0:
            return None
        h, w = found.shape
        extent = max(int(ys.max() - ys.min()) + 1, int(xs.max() - xs.min()) + 1)
        side = max(self.min_side, int(round(extent / self.fraction)))
        y0 = int(np.clip(round((ys.min() + ys.max()) / 2 - side / 2), 0, max(0, h - side)))
        x0 = int(np.clip(round((xs.min() + xs.max()) / 2 - side / 2), 0, max(0, w - side)))
        y1, x1 = min(h, y0 + side), min(w, x0 + side)
        if (y1 - y0) * (x1 - x0) > self.max_cover * h * w:
            return None
        return slice(y0, y1), slice(x0, x1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> SecondLook | None:
        """The manifest's ``second_look`` (None or absent: no second look)."""
        if not d:
            return None
        return cls(float(d.get("fraction", cls.fraction)), int(d.get("min_side", cls.min_side)),
                   float(d.get("max_cover", cls.max_cover)))
