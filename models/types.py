"""The contract of models.Analyzer that the pipeline, CLI and dashboard rely on."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

CLASSES = ("normal", "benign", "malignant")


@dataclass
class LesionMeasurement:
    """Lesion size from the mask; mm values are None when the pixel spacing is unknown."""

    area_px: int
    long_axis_px: float
    short_axis_px: float
    long_axis_endpoints: tuple[tuple[float, float], tuple[float, float]]  # ((row, col), (row, col))
    short_axis_endpoints: tuple[tuple[float, float], tuple[float, float]]
    contour: list[tuple[float, float]]  # closed polyline (row, col) in the analysed image's pixels
    long_axis_mm: float | None = None
    short_axis_mm: float | None = None
    area_mm2: float | None = None


@dataclass
class AnalysisResult:
    probabilities: dict[str, float]  # calibrated and prior-shifted, keys CLASSES, sum to 1
    label: str  # "normal" when no lesion is found, else the likelier of benign / malignant
    malignancy_probability: float
    decisions: dict[str, bool]  # operating point name -> "suspicious for malignancy"
    mask: np.ndarray  # HxW bool, same geometry as the input image
    heatmap: np.ndarray  # HxW float32 in [0, 1], Grad-CAM, same geometry as the input; all zeros where normal or not assessed
    lesion: LesionMeasurement | None
    uncertainty: float  # spread of the malignancy probability (ensemble / TTA)
    model_name: str
    model_version: str
    extra: dict[str, object] = field(default_factory=dict)
    # Scope gate (see docs/architecture.md): False where the image is not one the model can vouch for.
    assessed: bool = True
    not_assessed_reason: str | None = None
    # "1", "3", "4A", "4B", "4C", "5" from the calibrated P(malignant); None where not assessed.
    likelihood_category: str | None = None
    # The primary network's pooled features the scope gate measured (mirror-averaged): what
    # ``calibrate`` pools into the bank, kept so that no second network pass is needed for them.
    scope_features: np.ndarray | None = field(default=None, repr=False)
