"""End to end: Orthanc (the hospital PACS) pushes a realistic US study to a running sonopacs and ends up
holding our Secondary Capture series and TID 1500 SR, whose findings equal `sonopacs analyze`."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from sonopacs.config import Settings
from tests.support.net import free_port, wait_until
from tests.support.orthanc import Orthanc
from tests.support.render import render_sr_png, sc_png
from tests.support.sonopacs_proc import analyzer_or_skip, results_in_orthanc, sonopacs_serve, sr_findings
from tests.support.us_realistic import write_realistic_study

pytestmark = [pytest.mark.orthanc, pytest.mark.slow]

LABELS = {"normal": "normal", "benign": "benign", "malignant": "malignant"}


def test_pacs_study_comes_back_with_overlays_and_report_equal_to_analyze(
    tmp_path: Path, make_settings: Callable[..., Settings], orthanc_factory: Callable[..., Orthanc]
) -> None:
    port = free_port()
    pacs = orthanc_factory(modalities={"sonopacs": ("SONOPACS", "127.0.0.1", port)})
    settings = make_settings(
        dicom={"port": port, "host": "127.0.0.1"},
        study={"stable_seconds": 2, "poll_seconds": 0.2},
        export={"host": "127.0.0.1", "port": pacs.dicom_port, "ae_title": pacs.ae_title, "backoff_base_seconds": 1},
        dashboard={"port": free_port()},
    )
    analyzer_or_skip(settings)
    files = write_realistic_study(tmp_path / "study", n_images=4, jpeg_every=2)  # 2 uncompressed, 2 JPEG 422
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    for f in files:
        pacs.upload(f)
    orthanc_study = pacs.post_json("/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": study_uid}})[0]

    with sonopacs_serve(settings, tmp_path / "serve"):
        pacs.push_study("sonopacs", orthanc_study)

        def complete() -> dict[str, list[str]] | None:
            found = results_in_orthanc(pacs, study_uid)
            return found if len(found["OT"]) == 4 and len(found["SR"]) == 1 else None

        found = wait_until(complete, timeout=150, interval=1.0)
    assert isinstance(found, dict)

    # the report and overlays as the PACS holds them
    sr = pydicom.dcmread(io.BytesIO(pacs.instance_bytes(found["SR"][0])))
    sr_tags = pacs.get(f"/instances/{found['SR'][0]}/simplified-tags")
    assert "Probability of cancer" in json.dumps(sr_tags["ContentSequence"])
    pacs_findings = sr_findings(sr)
    originals = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}
    assert set(pacs_findings) == set(originals)
    scs = [pydicom.dcmread(io.BytesIO(pacs.instance_bytes(i))) for i in found["OT"]]
    assert {str(sc.SourceImageSequence[0].ReferencedSOPInstanceUID) for sc in scs} == set(originals)
    assert len({sc.SeriesInstanceUID for sc in scs}) == 1 and all(sc.StudyInstanceUID == study_uid for sc in scs)

    # `sonopacs analyze` on the same files gives the same findings
    from sonopacs.worker.single_analysis import analyze_files

    results = analyze_files(settings, files, tmp_path / "analyze")
    for path, record in zip(files, results, strict=True):
        assert "error" not in record, record
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        label, prob, precision = pacs_findings[uid]
        assert label == LABELS[record["label"]]
        assert prob == pytest.approx(record["malignancy_probability"], abs=precision)

    # look at one SC and the SR as a radiologist would (headless Chromium when available)
    shots = tmp_path / "shots"
    shots.mkdir()
    sc_png(scs[0], shots / "sc_overlay.png")
    (shots / "sr.dcm").write_bytes(pacs.instance_bytes(found["SR"][0]))
    if shutil.which("dsr2html") and shutil.which("chromium"):
        png = render_sr_png(shots / "sr.dcm", shots / "sr_report.png")
        assert png.stat().st_size > 10_000
