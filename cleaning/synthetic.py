"""Burn realistic scanner annotations into clean ultrasound images, with the exact mask of what was drawn.

Why: the benchmark needs ground truth for what an annotation detector should find, and model training
can use the same generator as augmentation (so a model never learns "caliper means lesion").
"""

from __future__ import annotations

import glob
import string
from collections.abc import Callable, Sequence
from functools import lru_cache

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

KINDS: tuple[str, ...] = ("text", "caliper", "dotted_line", "arrow", "body_marker", "text_box", "ruler")

# Colours real scanners use for overlays: white and greys, yellow, green, cyan, orange.
_COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 255, 255),
    (255, 255, 0),
    (0, 255, 0),
    (0, 255, 255),
    (255, 160, 0),
    (120, 200, 255),
)

_WORDS: tuple[str, ...] = (
    "MAMA DIREITA", "MAMA ESQUERDA", "QSE", "QIE", "QSI", "QII", "RT BREAST", "LT BREAST", "L LOQ",
    "R UOQ", "12 O'CLOCK", "2 CM FN", "RADIAL", "ANTIRADIAL", "TRANS", "SAG", "AXILLA", "Dist 1.23 cm",
    "D1 0.84cm", "D2 1.52cm", "Gn 60", "DR 72", "11cm", "28Hz", "L12-5", "MI 1.1", "TIS 0.4", "LESION",
    "CYST?", "1", "2", "A", "B", "Frq 12.0", "FR 19Hz", "Depth 4.0", "ROI", "Vol 0.6 ml",
)


@lru_cache(maxsize=1)
def _font_files() -> tuple[str, ...]:
    """TrueType/OpenType fonts found on the system; empty means we draw with OpenCV's Hershey fonts."""
    found: list[str] = []
    for pattern in ("/usr/share/fonts/**/*.ttf", "/usr/share/fonts/**/*.otf"):
        found.extend(glob.glob(pattern, recursive=True))
    keep = [f for f in sorted(found) if "Math" not in f and "Fallback" not in f]
    return tuple(keep)


@lru_cache(maxsize=64)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def _random_text(rng: np.random.Generator) -> str:
    if rng.random() < 0.7:
        return str(rng.choice(_WORDS))
    n = int(rng.integers(2, 10))
    alphabet = string.ascii_uppercase + string.digits + " .:/"
    return "".join(rng.choice(list(alphabet), size=n)).strip() or "X"


def _draw_text(alpha: np.ndarray, rng: np.random.Generator, x: int, y: int, text: str | None = None) -> None:
    """Text with a random font and size (PIL TrueType or Hershey), antialiased into the alpha layer."""
    h, w = alpha.shape
    text = text or _random_text(rng)
    fonts = _font_files()
    if fonts and rng.random() < 0.7:
        size = int(rng.integers(10, 29))
        font = _font(str(rng.choice(list(fonts))), size)
        layer = Image.new("L", (w, h), 0)
        ImageDraw.Draw(layer).text((x, y), text, fill=255, font=font)
        np.maximum(alpha, np.asarray(layer, dtype=np.float32) / 255.0, out=alpha)
    else:
        face = int(rng.choice([cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_DUPLEX,
                               cv2.FONT_HERSHEY_COMPLEX_SMALL]))
        scale = float(rng.uniform(0.35, 0.9))
        thickness = int(rng.integers(1, 3))
        _cv_draw(alpha, lambda a: cv2.putText(a, text, (x, y + 12), face, scale, 255, thickness, cv2.LINE_AA))


def _cv_draw(alpha: np.ndarray, draw: Callable[[np.ndarray], object]) -> None:
    layer = np.zeros(alpha.shape, dtype=np.uint8)
    draw(layer)
    np.maximum(alpha, layer.astype(np.float32) / 255.0, out=alpha)


def _draw_caliper(alpha: np.ndarray, rng: np.random.Generator, x: int, y: int) -> None:
    """'+' or 'x' caliper marks, 5-15 px arms, 1-2 px strokes."""
    r = int(rng.integers(3, 9))
    t = int(rng.choice([1, 1, 2]))
    if rng.random() < 0.6:
        _cv_draw(alpha, lambda a: (cv2.line(a, (x - r, y), (x + r, y), 255, t, cv2.LINE_AA),
                                   cv2.line(a, (x, y - r), (x, y + r), 255, t, cv2.LINE_AA)))
    else:
        _cv_draw(alpha, lambda a: (cv2.line(a, (x - r, y - r), (x + r, y + r), 255, t, cv2.LINE_AA),
                                   cv2.line(a, (x - r, y + r), (x + r, y - r), 255, t, cv2.LINE_AA)))


def _draw_dotted_line(alpha: np.ndarray, rng: np.random.Generator, x: int, y: int) -> None:
    """A measurement: two calipers joined by a dotted (or dashed) line, as in BUSI and Philips images."""
    h, w = alpha.shape
    length = rng.uniform(30, max(31.0, 0.6 * min(h, w)))
    angle = rng.uniform(0, np.pi)
    x2 = int(np.clip(x + length * np.cos(angle), 0, w - 1))
    y2 = int(np.clip(y + length * np.sin(angle), 0, h - 1))
    n = max(2, int(np.hypot(x2 - x, y2 - y) / rng.uniform(4, 9)))
    dot = int(rng.choice([1, 1, 2]))
    for i in range(1, n):
        px = round(x + (x2 - x) * i / n)
        py = round(y + (y2 - y) * i / n)
        layer = np.zeros(alpha.shape, np.uint8)
        cv2.circle(layer, (px, py), dot, 255, -1, cv2.LINE_AA)
        np.maximum(alpha, layer.astype(np.float32) / 255.0, out=alpha)
    _draw_caliper(alpha, rng, x, y)
    _draw_caliper(alpha, rng, x2, y2)


def _draw_arrow(alpha: np.ndarray, rng: np.random.Generator, x: int, y: int) -> None:
    length = rng.uniform(15, 45)
    angle = rng.uniform(0, 2 * np.pi)
    x2 = int(x + length * np.cos(angle))
    y2 = int(y + length * np.sin(angle))
    t = int(rng.integers(1, 3))
    _cv_draw(alpha, lambda a: cv2.arrowedLine(a, (x2, y2), (x, y), 255, t, cv2.LINE_AA, tipLength=0.35))


def _draw_body_marker(alpha: np.ndarray, rng: np.random.Generator, x: int, y: int) -> None:
    """Breast pictogram: a circle with a nipple dot and a probe bar across it, sometimes a clock label."""
    r = int(rng.integers(10, 22))
    angle = rng.uniform(0, np.pi)
    dx, dy = int(0.8 * r * np.cos(angle)), int(0.8 * r * np.sin(angle))
    px, py = x + int(rng.integers(-r // 2, r // 2 + 1)), y + int(rng.integers(-r // 2, r // 2 + 1))
    _cv_draw(alpha, lambda a: (cv2.circle(a, (x, y), r, 255, 1, cv2.LINE_AA),
                               cv2.circle(a, (x, y), max(1, r // 6), 255, -1, cv2.LINE_AA),
                               cv2.line(a, (px - dx, py - dy), (px + dx, py + dy), 255, 3, cv2.LINE_AA)))
    if rng.random() < 0.5:
        _draw_text(alpha, rng, x - r, y + r + 2, text=str(rng.choice(["R", "L", "RT", "LT", "12", "3", "9"])))


def _draw_text_box(alpha: np.ndarray, rng: np.random.Generator, x: int, y: int) -> None:
    """A measurement results box: outline plus one to three lines of text."""
    lines = int(rng.integers(1, 4))
    bw, bh = int(rng.integers(70, 160)), 8 + 18 * lines
    _cv_draw(alpha, lambda a: cv2.rectangle(a, (x, y), (x + bw, y + bh), 255, 1, cv2.LINE_AA))
    for i in range(lines):
        _draw_text(alpha, rng, x + 4, y + 3 + 18 * i, text=str(rng.choice(_WORDS[16:])))


def _draw_ruler(alpha: np.ndarray, rng: np.random.Generator, x: int, y: int) -> None:
    """Depth scale: a column of short ticks, every 1 cm-ish, near an image edge."""
    h, w = alpha.shape
    x = int(rng.choice([int(rng.integers(2, 12)), w - int(rng.integers(6, 16))]))
    step = int(rng.integers(15, 45))
    tick = int(rng.integers(3, 8))
    layer = np.zeros(alpha.shape, np.uint8)
    for yy in range(int(rng.integers(5, 20)), h - 5, step):
        cv2.line(layer, (x, yy), (x + tick, yy), 255, 1, cv2.LINE_AA)
    np.maximum(alpha, layer.astype(np.float32) / 255.0, out=alpha)


_DRAWERS: dict[str, Callable[[np.ndarray, np.random.Generator, int, int], None]] = {
    "text": _draw_text,
    "caliper": _draw_caliper,
    "dotted_line": _draw_dotted_line,
    "arrow": _draw_arrow,
    "body_marker": _draw_body_marker,
    "text_box": _draw_text_box,
    "ruler": _draw_ruler,
}


def burn_in_annotations(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    n: int | None = None,
    kinds: Sequence[str] = KINDS,
    colour: bool | None = None,
    min_change: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (annotated copy of image, HxW bool mask of the pixels the annotations changed).

    `image` is HxW or HxWx3 uint8. Annotations get random kinds, positions, sizes, fonts and
    intensities (grey 170-255 or a scanner colour). Grey input stays grey unless `colour` is True
    (None: 30% chance), in which case the result is HxWx3. The mask holds the pixels that the
    drawing visibly changed: by at least `min_change` grey levels in some channel (an annotation
    drawn in grey 200 over tissue at 200 changes nothing and is not in the mask).
    """
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError("burn_in_annotations expects an HxW or HxWx3 uint8 image")
    h, w = image.shape[:2]
    if colour is None:
        colour = bool(rng.random() < 0.3)
    out = image.astype(np.float32)
    if colour and out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    count = int(rng.integers(2, 7)) if n is None else n
    for _ in range(count):
        kind = str(rng.choice(list(kinds)))
        alpha = np.zeros((h, w), dtype=np.float32)
        x = int(rng.integers(0, max(1, w - 20)))
        y = int(rng.integers(0, max(1, h - 20)))
        _DRAWERS[kind](alpha, rng, x, y)
        value: np.ndarray | float
        if out.ndim == 3 and colour:
            value = np.array(_COLOURS[int(rng.integers(len(_COLOURS)))], dtype=np.float32)
            value = value * rng.uniform(0.75, 1.0)
        else:
            value = float(rng.uniform(170, 255))
        a = alpha[:, :, None] if out.ndim == 3 else alpha
        out = out * (1.0 - a) + a * value
    result = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    before = image if image.ndim == result.ndim else np.repeat(image[:, :, None], 3, axis=2)
    change = np.abs(result.astype(np.int16) - before.astype(np.int16))
    mask = (change.max(axis=2) if change.ndim == 3 else change) >= min_change
    return result, mask
