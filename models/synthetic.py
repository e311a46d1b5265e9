"""Synthetic burned-in annotations (text, calipers, dotted lines, markers) for augmentation.

Uses ``cleaning.synthetic.burn_in_annotations`` when the cleaning package provides it; otherwise a
small private renderer. Stamps are drawn once on the CPU into a bank of masks that the batched
augmentation pastes onto images on whatever device training runs.
"""

from __future__ import annotations

import cv2
import numpy as np

_WORDS = ["RT", "LT", "BREAST", "L BR", "R BR", "2:00", "10 CM FN", "AXILLA", "TRV", "SAG", "LONG", "RAD",
          "ARAD", "12MHz", "D 2.31cm", "1 0.84cm", "GAIN 54", "DR 60", "FR 18", "L 4.1 mm"]


def _fallback_burn_in(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw a few text labels, '+' calipers with a dotted line, and small markers."""
    img = image.copy()
    h, w = img.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    scale = max(h, w) / 256.0
    for _ in range(int(rng.integers(1, 4))):
        txt = str(rng.choice(_WORDS))
        org = (int(rng.integers(0, max(1, w - 60 * scale))), int(rng.integers(int(12 * scale), h)))
        fs = float(rng.uniform(0.3, 0.55)) * scale
        cv2.putText(mask, txt, org, cv2.FONT_HERSHEY_SIMPLEX, fs, 255, max(1, round(scale)), cv2.LINE_AA)
    if rng.random() < 0.7:
        p1 = rng.uniform([0.15 * w, 0.15 * h], [0.85 * w, 0.85 * h])
        p2 = p1 + rng.normal(0, 0.2 * max(h, w), 2)
        arm = int(rng.integers(3, 6) * scale)
        for p in (p1, p2):
            x, y = int(p[0]), int(p[1])
            if rng.random() < 0.5:
                cv2.line(mask, (x - arm, y), (x + arm, y), 255, max(1, round(scale)))
                cv2.line(mask, (x, y - arm), (x, y + arm), 255, max(1, round(scale)))
            else:
                cv2.drawMarker(mask, (x, y), 255, cv2.MARKER_TILTED_CROSS, 2 * arm, max(1, round(scale)))
        if rng.random() < 0.6:
            n = int(np.linalg.norm(p2 - p1) / (4 * scale)) + 2
            for t in np.linspace(0, 1, n)[::2]:
                q = p1 + t * (p2 - p1)
                cv2.circle(mask, (int(q[0]), int(q[1])), max(1, round(scale)), 255, -1)
    if rng.random() < 0.3:
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        cv2.drawMarker(mask, (x, y), 255, cv2.MARKER_TRIANGLE_UP, int(8 * scale), max(1, round(scale)))
    val = int(rng.integers(160, 256))
    sel = mask > 0
    if img.ndim == 3:
        img[sel] = val
    else:
        img[sel] = np.maximum(img[sel], (mask[sel].astype(np.float32) / 255 * val).astype(np.uint8))
    return img, sel


def burn_in(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(image with annotations, bool mask of annotation pixels)."""
    try:
        from cleaning.synthetic import burn_in_annotations
    except ImportError:
        return _fallback_burn_in(image, rng)
    try:
        img, mask = burn_in_annotations(image, rng)
    except Exception:  # a broken generator must not stop training: use ours
        return _fallback_burn_in(image, rng)
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
