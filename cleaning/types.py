"""The contract between cleaning and its callers (training, inference, the pipeline)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Region:
    """One ultrasound region in source pixel coordinates (from the Sequence of Ultrasound Regions).

    Bounds are inclusive, like RegionLocationMinX0..MaxY1. Spacing is in mm per pixel when the
    region's physical units are cm (DICOM gives cm; callers convert), else None.
    """

    x0: int
    y0: int
    x1: int
    y1: int
    spatial_format: int = 1  # 1 = 2D tissue
    data_type: int = 1  # 1 = tissue
    spacing_mm: tuple[float, float] | None = None  # (row spacing, column spacing)


@dataclass
class CleanResult:
    """A cleaned field of view; (offset_y, offset_x) maps its pixels back to the source frame."""

    image: np.ndarray  # cropped, annotations inpainted; HxW uint8 or HxWx3 uint8
    offset: tuple[int, int]  # (row, column) of the crop's top-left in the source frame
    annotation_mask: np.ndarray  # HxW bool, in crop coordinates: pixels that were removed
    spacing_mm: tuple[float, float] | None = None
    summary: dict[str, object] = field(default_factory=dict)
    # HxW bool in crop coordinates: inside the imaging sector/rectangle (all True for DICOM regions,
    # whose box is the field); lets training ignore the black corners of a sector crop
    field_mask: np.ndarray | None = None
    # summary keys: pixels_removed, fraction_removed, kinds (list[str]), flags (list[str]:
    # doppler, dual_view, text_in_field, ...), field_source ("regions" | "detected" | "whole"), confidence
