"""A running sonopacs (`sonopacs serve`: listener + worker + stability monitor) wired to an Orthanc PACS,
for end-to-end tests and the pipeline benchmark."""

from __future__ import annotations

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


def sr_findings(sr: pydicom.Dataset) -> dict[str, tuple[str, float]]:
    """Per source SOP Instance UID: (finding meaning, probability of cancer) from a TID 1500 SR."""
    out: dict[str, tuple[str, float]] = {}
    measurements = sr.ContentSequence[-1]  # Imaging Measurements container
    for group in measurements.ContentSequence:
        items = list(_walk(group.ContentSequence))
        named = {i.ConceptNameCodeSequence[0].CodeMeaning: i for i in items}
        if "Finding" not in named or "Probability of cancer" not in named:
            continue
        finding = [
            i
            for i in items
            if i.ValueType == "CODE" and i.ConceptNameCodeSequence[0].CodeMeaning == "Finding"
        ]
        label = next(
            i.ConceptCodeSequence[0].CodeMeaning
            for i in finding
            if i.ConceptCodeSequence[0].CodeValue != "4147007"
        )
        image = next(i for i in items if i.ValueType == "IMAGE")
        uid = image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        prob = float(named["Probability of cancer"].MeasuredValueSequence[0].NumericValue)
        out[str(uid)] = (label.lower(), prob)
    return out


def _walk(seq: Any) -> Iterator[pydicom.Dataset]:
    for item in seq:
        yield item
        if "ContentSequence" in item:
            yield from _walk(item.ContentSequence)
