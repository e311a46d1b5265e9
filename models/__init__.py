"""MONAI networks, training, evaluation and inference. Pure numpy/torch: no DICOM, no database."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sonopacs.models.types import CLASSES, AnalysisResult, LesionMeasurement

if TYPE_CHECKING:
    from sonopacs.models.analyzer import Analyzer

__all__ = ["CLASSES", "AnalysisResult", "Analyzer", "LesionMeasurement"]


def __getattr__(name: str) -> Any:
    # lazy: importing sonopacs.models.types must not pull in torch/MONAI
    if name == "Analyzer":
        from sonopacs.models.analyzer import Analyzer

        return Analyzer
    raise AttributeError(name)
