"""Hand-made ImageFinding inputs for the result-writer tests (an ellipse lesion in source pixels).

These exercise the DICOM writers only; the pipeline and `analyze` tests use the shipped model.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import cv2
import numpy as np
import pydicom

from sonopacs.dicom_node.pixels import read_frame
from sonopacs.dicom_node.results.types import ImageFinding


def ellipse_finding(path: Path, frame_index: int = 0, label: str = "malignant", p: float = 0.81) -> ImageFinding:
    ds = pydicom.dcmread(path)
    frame = read_frame(ds, frame_index)
    rows, cols = frame.shape[:2]
    rr, cc = np.mgrid[0:rows, 0:cols]
    cy, cx, ry, rx = rows * 0.55, cols * 0.5, rows * 0.12, cols * 0.1
    mask = ((rr - cy) / ry) ** 2 + ((cc - cx) / rx) ** 2 <= 1
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    contour = [(float(pt[0][1]), float(pt[0][0])) for pt in max(contours, key=len)]
    others = (1 - p) / 2
    return ImageFinding(
        source=ds,
        frame_index=frame_index,
        frame=frame,
        label=label,
        probabilities={"normal": others, "benign": others, "malignant": p},
        malignancy_probability=p,
        decisions={"default": p >= 0.5, "high_sensitivity": p >= 0.2},
        model_name="test-writer",
        model_version="0.0",
        mask=mask,
        heatmap=np.exp(-(((rr - cy) / (2 * ry)) ** 2 + ((cc - cx) / (2 * rx)) ** 2)).astype(np.float32),
        contour=contour,
        long_axis=((cy, cx - rx), (cy, cx + rx)),
        short_axis=((cy - ry, cx), (cy + ry, cx)),
        long_axis_mm=2 * rx * 0.1,
        short_axis_mm=2 * ry * 0.1,
    )


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) reported by dicom3tools' dciodvfy for one file."""
    # it echoes attribute values in their own character set: decode leniently
    out = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True, errors="replace", timeout=60)
    lines = (out.stdout + out.stderr).splitlines()
    return [x for x in lines if x.startswith("Error")], [x for x in lines if x.startswith("Warning")]
