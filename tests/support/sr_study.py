"""A small study and its SR for the SR reader tests: two lesions, a normal image, a not-assessed one.

Shared by the OHIF (node) and highdicom tests so both read exactly the same kind of report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

from sonopacs.dicom_node.results.structured_report import build_structured_report
from sonopacs.dicom_node.results.types import ImageFinding, ResultIdentity
from tests.support.findings import ellipse_finding
from tests.support.us_realistic import write_realistic_study

IDENTITY = ResultIdentity(uid_root="1.2.826.0.1.3680043.10.1471.", software_version="test")


@dataclass
class SRStudy:
    sources: list[Path]
    findings: list[ImageFinding]
    sr: Path

    @property
    def lesions(self) -> list[ImageFinding]:
        return [f for f in self.findings if f.assessed and f.has_lesion]


def mixed_study(folder: Path) -> SRStudy:
    """Malignant lesion (grey), benign lesion (JPEG colour), normal image, not-assessed image."""
    sources = write_realistic_study(folder / "study", n_images=4, jpeg_every=2)
    malignant = ellipse_finding(sources[0], label="malignant", p=0.81)
    malignant.likelihood_category = "4C"
    benign = ellipse_finding(sources[1], label="benign", p=0.12)
    benign.likelihood_category = "3"
    normal = ellipse_finding(sources[2], label="normal", p=0.02)
    normal.contour, normal.likelihood_category = [], "1"
    skipped = ellipse_finding(sources[3], label="normal", p=0.0)
    skipped.contour, skipped.assessed, skipped.not_assessed_reason = [], False, "colour Doppler image"
    return _write(folder, sources, [malignant, benign, normal, skipped])


def normal_study(folder: Path) -> SRStudy:
    """No lesion anywhere: the report has no measurement group at all."""
    sources = write_realistic_study(folder / "study", n_images=1)
    normal = ellipse_finding(sources[0], label="normal", p=0.03)
    normal.contour, normal.likelihood_category = [], "1"
    return _write(folder, sources, [normal])


def cine_study(folder: Path, frame_index: int = 2) -> SRStudy:
    """One multi-frame (JPEG YBR) source with a lesion on one frame."""
    from tests.support.dicom_factory import synthetic_bmode, us_dataset
    from tests.support.us_realistic import to_jpeg_ybr422

    frames = np.stack([np.repeat(synthetic_bmode(seed=s)[:, :, None], 3, 2) for s in range(3)])
    ds = us_dataset(frames[0, :, :, 0], study_uid=generate_uid(), series_uid=generate_uid())
    to_jpeg_ybr422(ds, frames)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cine.dcm"
    ds.save_as(path, enforce_file_format=True)
    finding = ellipse_finding(path, frame_index=frame_index, label="malignant", p=0.7)
    finding.likelihood_category = "4B"
    return _write(folder, [path], [finding])


def _write(folder: Path, sources: list[Path], findings: list[ImageFinding]) -> SRStudy:
    sr = build_structured_report(findings, IDENTITY, IDENTITY.new_uid(), 9201)
    path = folder / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    return SRStudy(sources=sources, findings=findings, sr=path)
