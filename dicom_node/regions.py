"""Sequence of Ultrasound Regions -> plain region records with pixel spacing in mm.

Plain data (not cleaning.Region) so that dicom_node stays independent; worker converts.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

UNITS_CM = 3  # PhysicalUnitsX/YDirection: 3 = cm
SPATIAL_2D = 1  # RegionSpatialFormat: 1 = 2D (tissue or flow)


@dataclass(frozen=True)
class UltrasoundRegion:
    """One region; bounds inclusive in source pixels, spacing_mm = (row, column) or None."""

    x0: int
    y0: int
    x1: int
    y1: int
    spatial_format: int
    data_type: int
    spacing_mm: tuple[float, float] | None

    @property
    def area(self) -> int:
        return max(0, self.x1 - self.x0 + 1) * max(0, self.y1 - self.y0 + 1)

    def contains(self, row: float, col: float) -> bool:
        return self.x0 <= col <= self.x1 and self.y0 <= row <= self.y1


def read_regions(ds: Dataset) -> list[UltrasoundRegion]:
    """All regions of ds, clipped to the image; an absent sequence gives an empty list."""
    rows, cols = int(getattr(ds, "Rows", 0)), int(getattr(ds, "Columns", 0))
    out = []
    for item in getattr(ds, "SequenceOfUltrasoundRegions", None) or []:
        try:
            x0, y0 = int(item.RegionLocationMinX0), int(item.RegionLocationMinY0)
            x1, y1 = int(item.RegionLocationMaxX1), int(item.RegionLocationMaxY1)
        except (AttributeError, TypeError, ValueError):
            continue
        if cols and rows:
            x0, x1 = max(0, x0), min(cols - 1, x1)
            y0, y1 = max(0, y0), min(rows - 1, y1)
        if x1 <= x0 or y1 <= y0:
            continue
        out.append(
            UltrasoundRegion(
                x0=x0,
                y0=y0,
                x1=x1,
                y1=y1,
                spatial_format=int(getattr(item, "RegionSpatialFormat", 0) or 0),
                data_type=int(getattr(item, "RegionDataType", 0) or 0),
                spacing_mm=_spacing_mm(item),
            )
        )
    return out


def _spacing_mm(item: Dataset) -> tuple[float, float] | None:
    """(row, column) spacing in mm when both directions are in cm and positive, else None."""
    try:
        ux, uy = int(item.PhysicalUnitsXDirection), int(item.PhysicalUnitsYDirection)
        dx, dy = abs(float(item.PhysicalDeltaX)), abs(float(item.PhysicalDeltaY))
    except (AttributeError, TypeError, ValueError):
        return None
    if ux != UNITS_CM or uy != UNITS_CM or dx <= 0 or dy <= 0:
        return None
    return (dy * 10.0, dx * 10.0)


def tissue_regions(regions: list[UltrasoundRegion]) -> list[UltrasoundRegion]:
    """The 2D image regions (B-mode, colour flow), largest first."""
    return sorted((r for r in regions if r.spatial_format == SPATIAL_2D), key=lambda r: -r.area)


def spacing_at(regions: list[UltrasoundRegion], row: float, col: float) -> tuple[float, float] | None:
    """Spacing of the 2D region containing (row, col), else of the largest 2D region, else None."""
    candidates = tissue_regions(regions)
    for region in candidates:
        if region.contains(row, col) and region.spacing_mm is not None:
            return region.spacing_mm
    return next((r.spacing_mm for r in candidates if r.spacing_mm is not None), None)
