"""Draw the AI result on the full original frame (heat map, lesion contour, axes) above a banner band.

The frame keeps the source geometry (rows x columns) and its top-left corner, so the Secondary
Capture lines up with the original when a viewer links or flips between them. The banner sits in
a band of its own below the frame, never over the scanner's burned-in text, and its lines are
wrapped to the frame width so nothing is cut off at the right edge.
"""

from __future__ import annotations

import cv2
import numpy as np

from sonopacs.dicom_node.results.types import DISCLAIMER, ImageFinding

CONTOUR_RGB = (255, 220, 0)  # yellow: visible on grey and on Doppler colour
AXIS_RGB = (0, 255, 255)
HEAT_ALPHA = 0.35
BAND_RGB = (24, 24, 24)
TEXT_RGB = (255, 255, 255)
DISCLAIMER_RGB = (255, 200, 80)
FONT = cv2.FONT_HERSHEY_SIMPLEX
MARGIN = 4  # pixels left and right of the text
MIN_SCALE, MAX_SCALE = 0.3, 0.6  # Hershey scale: legible at 100 px wide, not shouting at 1000 px


def to_rgb(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2:
        return np.repeat(frame[:, :, None], 3, axis=2).astype(np.uint8)
    return np.ascontiguousarray(frame[:, :, :3]).astype(np.uint8)


def banner_lines(finding: ImageFinding) -> list[str]:
    """The banner text, ASCII only (Hershey fonts); the last line is always the disclaimer."""
    model = f"model {finding.model_name} {finding.model_version}"
    if not finding.assessed:
        reason = finding.not_assessed_reason or "no reason given"
        return [f"AI: not assessed: {reason}", model, DISCLAIMER]
    size = ""
    if finding.long_axis_mm is not None and finding.short_axis_mm is not None:
        size = f", {finding.long_axis_mm:.1f} x {finding.short_axis_mm:.1f} mm"
    lines = [f"AI: {finding.label.upper()}, P(malignant) {finding.malignancy_probability:.2f}{size}"]
    if finding.likelihood_category:
        lines.append(f"AI category {finding.likelihood_category} (not BI-RADS)")
    flagged = [name for name, suspicious in finding.decisions.items() if suspicious]
    if flagged:
        op = "suspicious at " + ", ".join(flagged)
    elif finding.decisions:
        op = "not suspicious at " + ", ".join(finding.decisions)
    else:
        op = "no operating point"
    lines.append(f"{op}; {model}")
    lines.append(DISCLAIMER)
    return lines


def render_overlay(finding: ImageFinding, heatmap: bool = True) -> np.ndarray:
    """RGB uint8: the source frame (same rows/columns, same origin) with the banner band below it.

    A finding that was not assessed gets no heat map, contour or axes: only the reason. A normal
    result gets no heat map either: its map explains "normal", but a warm patch on a normal image
    reads as a finding pointed at, which the normal decision exists to withhold.
    """
    image = to_rgb(finding.frame).copy()
    if finding.assessed:
        draw_result(image, finding, heatmap)
    return np.vstack([image, render_band(banner_lines(finding), image.shape[1])])


def shows_heatmap(finding: ImageFinding, heatmap: bool) -> bool:
    """Whether the overlay blends the heat map: asked for (``pipeline.heatmap``), an assessed lesion
    result, and a map in the frame's geometry. The SC's derivation text says the same."""
    return (heatmap and finding.assessed and finding.label != "normal" and finding.heatmap is not None
            and finding.heatmap.shape == finding.frame.shape[:2])


def draw_result(image: np.ndarray, finding: ImageFinding, heatmap: bool) -> None:
    """Heat map, lesion contour and axes, in place, in source pixel coordinates."""
    if shows_heatmap(finding, heatmap):
        assert finding.heatmap is not None
        image[:] = blend_heatmap(image, finding.heatmap)
    thickness = max(1, round(min(image.shape[:2]) / 300))
    if finding.has_lesion:
        pts = np.array([[c, r] for r, c in finding.contour], np.float32).round().astype(np.int32)
        cv2.polylines(image, [pts], True, CONTOUR_RGB, thickness, cv2.LINE_AA)
    for axis in (finding.long_axis, finding.short_axis):
        if axis is not None:
            (r0, c0), (r1, c1) = axis
            cv2.line(image, (round(c0), round(r0)), (round(c1), round(r1)), AXIS_RGB, 1, cv2.LINE_AA)


def blend_heatmap(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """Jet-coloured heat map blended where it is warm, so cold areas keep the original pixels."""
    h = np.clip(np.nan_to_num(heat.astype(np.float32)), 0, 1)
    colour = cv2.applyColorMap((h * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    alpha = (HEAT_ALPHA * np.clip((h - 0.2) / 0.8, 0, 1))[:, :, None]
    return (image * (1 - alpha) + colour * alpha).round().astype(np.uint8)


def render_band(lines: list[str], cols: int) -> np.ndarray:
    """The banner band for a frame `cols` wide: every line wrapped so it fits, nothing clipped."""
    scale = max(MIN_SCALE, min(MAX_SCALE, cols / 1000))
    width = max(1, cols - 2 * MARGIN)
    rows: list[tuple[str, bool]] = []
    for i, text in enumerate(lines):
        last = i == len(lines) - 1
        rows.extend((part, last) for part in wrap(text, width, scale))
    (_, h), base = cv2.getTextSize("Ag", FONT, scale, 1)
    step = h + base + 3
    band = np.empty((step * len(rows) + 4, cols, 3), np.uint8)
    band[:] = BAND_RGB
    for n, (text, last) in enumerate(rows):
        y = 2 + (n + 1) * step - base - 1
        colour = DISCLAIMER_RGB if last else TEXT_RGB
        cv2.putText(band, text, (MARGIN, y), FONT, scale, colour, 1, cv2.LINE_AA)
    return band


def text_width(text: str, scale: float) -> int:
    return int(cv2.getTextSize(text, FONT, scale, 1)[0][0])


def wrap(text: str, width: int, scale: float) -> list[str]:
    """Greedy word wrap to `width` pixels; a word longer than the width is cut between characters."""
    out: list[str] = []
    line = ""
    for word in text.split():
        candidate = f"{line} {word}" if line else word
        if text_width(candidate, scale) <= width:
            line = candidate
            continue
        if line:
            out.append(line)
        line = ""
        while text_width(word, scale) > width and len(word) > 1:
            cut = len(word) - 1
            while cut > 1 and text_width(word[:cut], scale) > width:
                cut -= 1
            out.append(word[:cut])
            word = word[cut:]
        line = word
    if line or not out:
        out.append(line)
    return out
