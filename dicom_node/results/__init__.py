"""DICOM result objects (Secondary Capture, TID 1500 SR, colour presentation state, SEG) built with highdicom."""

from sonopacs.dicom_node.results.types import DISCLAIMER, ImageFinding, ResultIdentity

__all__ = ["DISCLAIMER", "ImageFinding", "ResultIdentity"]
