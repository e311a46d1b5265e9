"""Lesion mask post-processing and measurement (long/short axis, area, contour).

Long axis = largest distance between contour points (max Feret diameter); short axis = largest
extent perpendicular to it, the way a sonographer places the second caliper. Distances are taken
in mm when the (row, col) pixel spacing is known, so anisotropic pixels are handled.
"""

from __future__ import annotations

import cv2
import numpy as np

from sonopacs.models.types import LesionMeasurement


def lesion_mask(prob: np.ndarray, threshold: float = 0.5, min_fraction: float = 0.001) -> np.ndarray:
    """Largest connected component of prob >= threshold (the one lesion we report), or empty."""
    binary = (prob >= threshold).astype(np.uint8)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if n <= 1:
        return np.zeros(prob.shape, bool)
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if stats[k, cv2.CC_STAT_AREA] < min_fraction * prob.size:
        return np.zeros(prob.shape, bool)
    m = lab == k
    # fill holes: a lesion is one region; echogenic foci inside it are part of it
    filled = m.astype(np.uint8)
    contours, _ = cv2.findContours(filled, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(filled, contours, -1, 1, thickness=-1)
    return filled.astype(bool)


def measure_lesion(mask: np.ndarray, spacing_mm: tuple[float, float] | None = None,
                   max_contour_points: int = 200) -> LesionMeasurement | None:
    """Measure the lesion in ``mask`` (bool HxW); None when the mask is empty."""
    if not mask.any():
        return None
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cnt = max(contours, key=cv2.contourArea)[:, 0, :].astype(np.float64)  # (x, y)
    pts = cnt[:, ::-1]  # (row, col)
    sr, sc = spacing_mm if spacing_mm else (1.0, 1.0)
    scale = np.array([sr, sc])
    hull = cv2.convexHull(cnt.astype(np.float32))[:, 0, ::-1].astype(np.float64)  # (row, col)
    if len(hull) < 2:
        hull = np.vstack([pts[:1], pts[:1]])
    phys = hull * scale
    d = np.linalg.norm(phys[:, None, :] - phys[None, :, :], axis=2)
    i, j = np.unravel_index(int(np.argmax(d)), d.shape)
    long_phys = float(d[i, j])
    a, b = hull[i], hull[j]
    u = (phys[j] - phys[i]) / max(long_phys, 1e-9)
    normal = np.array([-u[1], u[0]])
    allp = pts * scale
    proj = (allp - phys[i]) @ normal
    k_lo, k_hi = int(np.argmin(proj)), int(np.argmax(proj))
    short_phys = float(proj[k_hi] - proj[k_lo])
    # short-axis endpoints: through the widest perpendicular chord, drawn at its midpoint along u
    along = (allp[[k_lo, k_hi]] - phys[i]) @ u
    mid = phys[i] + u * float(along.mean())
    s0 = (mid + normal * proj[k_lo]) / scale
    s1 = (mid + normal * proj[k_hi]) / scale
    area_px = int(mask.sum())
    step = max(1, len(pts) // max_contour_points)
    contour = [(float(r), float(c)) for r, c in pts[::step]]
    long_px = float(np.linalg.norm(a - b))
    short_px = float(np.linalg.norm(s1 - s0))
    known = spacing_mm is not None
    return LesionMeasurement(
        area_px=area_px,
        long_axis_px=long_px,
        short_axis_px=short_px,
        long_axis_endpoints=((float(a[0]), float(a[1])), (float(b[0]), float(b[1]))),
        short_axis_endpoints=((float(s0[0]), float(s0[1])), (float(s1[0]), float(s1[1]))),
        contour=contour,
        long_axis_mm=long_phys if known else None,
        short_axis_mm=short_phys if known else None,
        area_mm2=area_px * sr * sc if known else None,
    )
