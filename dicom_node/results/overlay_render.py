"""Draw the AI result on the full original frame: heat map, lesion contour, axes and a banner.

The output keeps the source geometry (rows x columns) so the Secondary Capture lines up with the
original when a viewer links or flips between them.
"""

from __future__ import annotations

import cv2
import numpy as np

from sonopacs.dicom_node.results.types import DISCLAIMER, ImageFinding

CONTOUR_RGB = (255, 220, 0)  # yellow: visible on grey and on Doppler colour
AXIS_RGB = (0, 255, 255)
HEAT_ALPHA = 0.35


def to_rgb(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2:
        return np.repeat(frame[:, :, None], 3, axis=2).astype(np.uint8)
    return np.ascontiguousarray(frame[:, :, :3]).astype(np.uint8)


def banner_lines(finding: ImageFinding) -> list[str]:
    """The banner text; ASCII only (Hershey fonts) and short enough for a 320-pixel-wide image."""
    flagged = [name for name, suspicious in finding.decisions.items() if suspicious]
    if flagged:
        op = "suspicious at " + ", ".join(flagged)
    elif finding.decisions:
        op = "not suspicious at " + ", ".join(finding.decisions)
    else:
        op = "no operating point"
    size = ""
    if finding.long_axis_mm is not None and finding.short_axis_mm is not None:
        size = f"  {finding.long_axis_mm:.1f} x {finding.short_axis_mm:.1f} mm"
    return [
        f"AI: {finding.label.upper()}  P(malignant) {finding.malignancy_probability:.2f}{size}",
        f"{op}; model {finding.model_name} {finding.model_version}",
        DISCLAIMER,
    ]


def render_overlay(finding: ImageFinding, heatmap: bool = True) -> np.ndarray:
    """RGB uint8 image, same rows/columns as the source frame."""
    image = to_rgb(finding.frame).copy()
    if heatmap and finding.heatmap is not None and finding.heatmap.shape == image.shape[:2]:
        image = blend_heatmap(image, finding.heatmap)
    thickness = max(1, round(min(image.shape[:2]) / 300))
    if finding.has_lesion:
        pts = np.array([[c, r] for r, c in finding.contour], np.float32).round().astype(np.int32)
        cv2.polylines(image, [pts], True, CONTOUR_RGB, thickness, cv2.LINE_AA)
    for axis in (finding.long_axis, finding.short_axis):
        if axis is not None:
            (r0, c0), (r1, c1) = axis
            cv2.line(image, (round(c0), round(r0)), (round(c1), round(r1)), AXIS_RGB, 1, cv2.LINE_AA)
    draw_banner(image, banner_lines(finding))
    return image


def blend_heatmap(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """Jet-coloured heat map blended where it is warm, so cold areas keep the original pixels."""
    h = np.clip(np.nan_to_num(heat.astype(np.float32)), 0, 1)
    colour = cv2.applyColorMap((h * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    alpha = (HEAT_ALPHA * np.clip((h - 0.2) / 0.8, 0, 1))[:, :, None]
    return (image * (1 - alpha) + colour * alpha).round().astype(np.uint8)


def draw_banner(image: np.ndarray, lines: list[str]) -> None:
    """Text on a dark band at the bottom of the frame, scaled to the frame width."""
    rows, cols = image.shape[:2]
    font = cv2.FONT_HERSHEY_SIMPLEX
    longest = max(lines, key=len)
    (w, _), _ = cv2.getTextSize(longest, font, 1.0, 1)
    scale = max(0.3, min(0.8, (cols - 12) / max(w, 1)))
    thickness = 1
    (_, h), base = cv2.getTextSize("Ag", font, scale, thickness)
    step = h + base + 4
    top = max(0, rows - step * len(lines) - 4)
    band = image[top:rows]
    band[:] = (band * 0.35).astype(np.uint8)
    for i, text in enumerate(lines):
        y = top + (i + 1) * step - base
        colour = (255, 255, 255) if i < len(lines) - 1 else (255, 200, 80)
        cv2.putText(image, text, (6, y), font, scale, colour, thickness, cv2.LINE_AA)
