"""Synthetic burned-in annotations (text, calipers, dotted lines, markers) for augmentation.

Draws with ``sonopacs.cleaning.synthetic.burn_in_annotations``, the generator the cleaner is tested on. Stamps are drawn once on the CPU into a bank of masks that the batched
augmentation pastes onto images on whatever device training runs.
"""

from __future__ import annotations

import numpy as np

from sonopacs.cleaning.synthetic import burn_in_annotations


def burn_in(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(image with annotations, bool mask of annotation pixels)."""
    img, mask = burn_in_annotations(image, rng)
    return np.asarray(img), np.asarray(mask).astype(bool)


def stamp_bank(n: int, size: int, seed: int) -> np.ndarray:
    """n x size x size float32 stamps in [0, 1]: what burn-in draws on a black image."""
    rng = np.random.default_rng(seed)
    bank = np.zeros((n, size, size), np.float32)
    for i in range(n):
        img, mask = burn_in(np.zeros((size, size), np.uint8), rng)
        stamp = img.astype(np.float32) / 255.0 if img.ndim == 2 else img.max(axis=2) / 255.0
        bank[i] = np.where(mask, np.maximum(stamp, 0.6), 0.0)
    return bank
