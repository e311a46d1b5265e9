"""A running sonopacs (`sonopacs serve`: listener + worker + stability monitor) wired to an Orthanc PACS,
for end-to-end tests and the pipeline benchmark."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydicom
import pytest

from sonopacs.config import Settings
from tests.support.net import wait_for_port
from tests.support.orthanc import Orthanc
from tests.support.worker_proc import sonopacs_process, write_config


def analyzer_or_skip(settings: Settings) -> Any:
    """The shipped Analyzer, or a test skip that says why (weights not committed yet)."""
    from sonopacs.worker.findings import get_analyzer

    try:
        return get_analyzer(settings)
    except (ImportError, AttributeError, OSError, FileNotFoundError, RuntimeError, ValueError) as exc:
        pytest.skip(f"shipped model weights not available: {type(exc).__name__}: {exc}")


@contextmanager
def sonopacs_serve(settings: Settings, workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`sonopacs --config FILE serve` until the block ends (SIGTERM, warm shutdown)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = write_config(settings, workdir / "sonopacs.yaml")
    with sonopacs_process(["--config", str(config), "serve"], workdir / "serve.log", stop_timeout=60) as proc:
        wait_for_port(settings.dicom.port, timeout=60)
        yield proc


def results_in_orthanc(pacs: Orthanc, study_uid: str) -> dict[str, list[str]]:
    """Orthanc instance ids of our SC and SR objects in the study, by modality (OT / SR)."""
    found: dict[str, list[str]] = {"OT": [], "SR": []}
    hits = pacs.post_json("/tools/find", {"Level": "Series", "Query": {"StudyInstanceUID": study_uid}})
    for series_id in hits:
        series = pacs.get(f"/series/{series_id}")
        tags = series["MainDicomTags"]
        if str(tags.get("SeriesDescription", "")).startswith("sonopacs") and tags.get("Modality") in found:
            found[tags["Modality"]].extend(series["Instances"])
    return found


def sr_findings(sr: pydicom.Dataset) -> dict[str, tuple[str, float, float]]:
    """Per source SOP Instance UID: (label, probability of cancer, its precision) from our TID 1500 SR,
    read as highdicom reads it: outlined lesions from their planar ROI groups (Classification and
    Probability of cancer in %), images without an outline from the report-level text lines."""
    import highdicom as hd

    from sonopacs.dicom_node.results import codes

    report = hd.sr.ComprehensiveSR.from_dataset(sr, copy=True).content
    assert isinstance(report, hd.sr.MeasurementReport)
    out: dict[str, tuple[str, float, float]] = {}
    for group in report.get_planar_roi_measurement_groups():
        assert group.roi is not None
        uid = str(group.roi.ContentSequence[0].referenced_sop_instance_uid)
        evaluations = {e.name: e.value for e in group.get_qualitative_evaluations()}
        label = str(getattr(evaluations[codes.CLASSIFICATION], "meaning", "")).lower()
        prob = {m.name: m.value for m in group.get_measurements()}[codes.PROBABILITY_OF_CANCER] / 100
        out[uid] = (label, float(prob), 1e-3)
    (container,) = [i for i in report[0].ContentSequence if i.name == codes.QUALITATIVE_EVALUATIONS]
    for item in container.ContentSequence:
        m = re.search(r"\(([0-9.]+)\)[^;]*: no lesion outlined; AI: (\w+); P\(malignant\) ([0-9.]+)%", str(item.value))
        if item.value_type == hd.sr.ValueTypeValues.TEXT and m:
            out[m.group(1)] = (m.group(2), float(m.group(3)) / 100, 0.006)  # printed as a whole percent
    return out


def _walk(seq: Any) -> Iterator[pydicom.Dataset]:
    for item in seq:
        yield item
        if "ContentSequence" in item:
            yield from _walk(item.ContentSequence)
