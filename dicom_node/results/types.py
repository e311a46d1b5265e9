"""Plain inputs of the result writers: one analysed image in SOURCE frame geometry, and our identity.

Kept free of models/cleaning types so dicom_node stays a leaf; the worker maps crop coordinates
back to the full source frame before building these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

DISCLAIMER = "AI result, for assistance only, not for diagnosis"
MANUFACTURER = "sonopacs"
OVERLAY_SERIES_DESCRIPTION = "sonopacs AI overlay"
REPORT_SERIES_DESCRIPTION = "sonopacs AI report"
PR_SERIES_DESCRIPTION = "sonopacs AI annotation"
SEG_SERIES_DESCRIPTION = "sonopacs AI segmentation"

Point = tuple[float, float]  # (row, column) in source frame pixels


@dataclass
class ImageFinding:
    """The analysis of one source frame, every coordinate in that frame's pixels."""

    source: Dataset  # header of the original instance (pixel data not needed)
    frame_index: int  # 0-based frame of the source that was analysed
    frame: np.ndarray  # the full decoded frame, uint8 HxW or HxWx3 (display values)
    label: str
    probabilities: dict[str, float]
    malignancy_probability: float
    decisions: dict[str, bool]  # operating point -> suspicious for malignancy
    model_name: str
    model_version: str
    mask: np.ndarray | None = None  # bool HxW, full frame
    heatmap: np.ndarray | None = None  # float32 HxW in [0, 1], full frame
    contour: list[Point] = field(default_factory=list)  # closed polyline
    long_axis: tuple[Point, Point] | None = None
    short_axis: tuple[Point, Point] | None = None
    long_axis_mm: float | None = None
    short_axis_mm: float | None = None
    area_mm2: float | None = None
    uncertainty: float | None = None
    # Scope gate: an image we cannot vouch for (not 2D B-mode breast ultrasound, colour Doppler, ...)
    # is not assessed: no contour, no label shown, the reason instead.
    assessed: bool = True
    not_assessed_reason: str | None = None
    # AI likelihood category from P(malignant): "1" (no lesion found), "3", "4A", "4B", "4C", "5";
    # None where not assessed. Labelled "AI likelihood category, not a BI-RADS assessment" wherever shown.
    likelihood_category: str | None = None

    @property
    def is_multiframe(self) -> bool:
        """The source holds more than one frame (whatever its SOP class says)."""
        return int(getattr(self.source, "NumberOfFrames", 1) or 1) > 1

    @property
    def frame_number(self) -> int | None:
        """1-based Referenced Frame Number where the source's SOP class is a multi-frame one, else None.

        Decided by SOP class, not Number of Frames: references to an instance of a single-frame class
        (US Image, SC Image) carry no frame number even when a scanner put several frames in it.
        """
        return self.frame_index + 1 if is_multiframe_class(self.source) else None

    @property
    def has_lesion(self) -> bool:
        return len(self.contour) >= 3


# Multi-frame storage classes whose references take a Referenced Frame Number (PS3.3 C.7.6.6).
MULTIFRAME_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image
        "1.2.840.10008.5.1.4.1.1.3",  # Ultrasound Multi-frame Image (Retired)
        "1.2.840.10008.5.1.4.1.1.7.1",  # Multi-frame Single Bit SC
        "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte SC
        "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word SC
        "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color SC
        "1.2.840.10008.5.1.4.1.1.6.2",  # Enhanced US Volume
    }
)
SINGLE_FRAME_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image
        "1.2.840.10008.5.1.4.1.1.6",  # Ultrasound Image (Retired)
        "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image
    }
)


def is_multiframe_class(source: Dataset) -> bool:
    """Whether the source's SOP class is a multi-frame IOD (highdicom's answer for classes not listed)."""
    sop_class = str(getattr(source, "SOPClassUID", "") or "")
    if sop_class in MULTIFRAME_SOP_CLASSES:
        return True
    if sop_class in SINGLE_FRAME_SOP_CLASSES or not sop_class:
        return False
    from highdicom._standard_utils import is_multiframe_image

    try:
        return bool(is_multiframe_image(source))
    except (KeyError, AttributeError):
        return int(getattr(source, "NumberOfFrames", 1) or 1) > 1


@dataclass(frozen=True)
class ResultIdentity:
    """Who made the objects; UIDs are generated under our root so we can recognise them later."""

    uid_root: str
    software_version: str = "0.1.0"
    manufacturer: str = MANUFACTURER
    model_name: str = "sonopacs"

    def new_uid(self) -> str:
        root = self.uid_root if self.uid_root.endswith(".") else self.uid_root + "."
        return str(generate_uid(prefix=root))

    def derived_object_kwargs(
        self, series_uid: str, series_number: int, sop_instance_uid: str | None, instance_number: int
    ) -> dict[str, Any]:
        """The highdicom arguments that name us as the device on a PR or SEG (content labelled AI)."""
        return {
            "series_instance_uid": series_uid,
            "series_number": series_number,
            "sop_instance_uid": sop_instance_uid or self.new_uid(),
            "instance_number": instance_number,
            "manufacturer": self.manufacturer,
            "manufacturer_model_name": self.model_name,
            "software_versions": self.software_version,
            "device_serial_number": "0",
            "content_label": "SONOPACS_AI",
            "content_description": DISCLAIMER[:64],
        }


def result_text(finding: ImageFinding) -> str:
    """The one-line result that SC comments and PR annotations carry: the finding, or why not assessed."""
    if not finding.assessed:
        return f"AI: not assessed: {finding.not_assessed_reason or 'no reason given'}"
    text = f"AI: {finding.label}, P(malignant) {finding.malignancy_probability:.2f}"
    if finding.likelihood_category:
        text += f", AI likelihood category {finding.likelihood_category} (not a BI-RADS assessment)"
    return text
