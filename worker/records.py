"""Typed records the pipeline stages hand to each other through `clean.json` and `analysis.json`.

A stage writes a `StageManifest`; the next one reads it back validated, so a renamed or missing
key fails loudly at the stage boundary instead of as a KeyError deep inside publishing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sonopacs.dicom_node.storage import write_durably

Point = tuple[float, float]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class LesionRecord(_Record):
    """The measured lesion of one analysed field, in the field's (cropped) pixel space."""

    area_px: int
    long_axis_px: float
    short_axis_px: float
    long_axis_endpoints: tuple[Point, Point]
    short_axis_endpoints: tuple[Point, Point]
    contour: list[Point]
    long_axis_mm: float | None
    short_axis_mm: float | None
    area_mm2: float | None


class AnalysisRecord(_Record):
    """A models.AnalysisResult without its arrays (mask and heat map are stored beside it)."""

    label: str
    probabilities: dict[str, float]
    malignancy_probability: float
    decisions: dict[str, bool]
    operating_points: dict[str, float] = Field(default_factory=dict)
    uncertainty: float
    model_name: str
    model_version: str
    lesion: LesionRecord | None = None
    # scope gate and likelihood category (models.AnalysisResult / docs/architecture.md)
    assessed: bool = True
    not_assessed_reason: str | None = None
    likelihood_category: str | None = None


class FieldRecord(_Record):
    """One cleaned ultrasound field of one frame of one instance (the unit the model sees)."""

    order: int
    instance_id: int | None = None  # None for `sonopacs analyze` inputs, which have no database row
    sop_instance_uid: str | None = None
    frame_index: int
    field_index: int
    offset: tuple[int, int]
    spacing_mm: tuple[float, float] | None
    summary: dict[str, Any]
    file: str | None = None
    analysis: AnalysisRecord | None = None

    def analysed(self) -> AnalysisRecord:
        if self.analysis is None:
            raise RuntimeError(f"field {self.order} has no analysis: the analyze stage did not complete")
        return self.analysis


class StageManifest(_Record):
    """What one stage of one generation produced: its fields, counts, or the generation it kept."""

    generation: int
    items: list[FieldRecord] = Field(default_factory=list)
    counts: dict[str, int] = Field(default_factory=dict)
    kept_generation: int | None = None


def write_manifest(path: Path, manifest: StageManifest) -> None:
    write_durably(path, manifest.model_dump_json(indent=1).encode())


def read_manifest(path: Path) -> StageManifest:
    if not path.exists():
        raise RuntimeError(f"{path.name} is missing: the previous stage did not complete for this generation")
    return StageManifest.model_validate_json(path.read_text())


def jsonable(value: Any) -> Any:
    """Numpy scalars and arrays inside a cleaning summary, as plain JSON values."""
    return json.loads(json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
