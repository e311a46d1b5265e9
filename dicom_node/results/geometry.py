"""Contour helpers shared by SR, PR and SEG: DICOM 2D graphic coordinates from (row, col) points."""

from __future__ import annotations

import cv2
import numpy as np

from sonopacs.dicom_node.results.types import Point


def polyline_xy(contour: list[Point], max_points: int = 256) -> np.ndarray:
    """Closed (column, row) polyline in DICOM image coordinates (TLHC of the first pixel is 0,0).

    Pixel centres sit at +0.5; the polyline is simplified to at most max_points vertices and
    repeats its first point at the end, as SCOORD/graphic POLYLINE ROIs require.
    """
    pts = np.asarray([[c, r] for r, c in contour], dtype=np.float32)
    if len(pts) > 2 and np.allclose(pts[0], pts[-1]):
        pts = pts[:-1]
    epsilon = 0.5
    while len(pts) > max_points:
        pts = cv2.approxPolyDP(pts.reshape(-1, 1, 2), epsilon, True).reshape(-1, 2).astype(np.float32)
        epsilon *= 1.5
    xy = pts.astype(np.float64) + 0.5
    return np.vstack([xy, xy[:1]])


def point_xy(point: Point) -> tuple[float, float]:
    return (float(point[1]) + 0.5, float(point[0]) + 0.5)
