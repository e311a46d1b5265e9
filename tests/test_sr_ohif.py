"""OHIF 3.13 reads our SR: its own SR extension loads it and Cornerstone3D's adapters hydrate it.

tests/ohif/load_sr.cjs runs, in node, OHIF's @ohif/extension-cornerstone-dicom-sr SOP class
handler (display set, load, measurement extraction, isRehydratable, read-only SR annotations added
to Cornerstone3D tools' state), its hydrateStructuredReport (what "track measurements" runs), and
@cornerstonejs/adapters' MeasurementReport.generateToolState, on the SR as dcmjs reads it.
Packages are pinned in tests/ohif/package-lock.json and installed by .ci/run (npm ci). Not
exercised: React rendering, the viewport, OHIF's real measurement/display-set services (the
harness passes recorders).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pydicom
import pytest

from sonopacs.dicom_node.results.geometry import polyline_xy
from sonopacs.dicom_node.results.types import DISCLAIMER
from tests.support.sr_study import SRStudy, cine_study, mixed_study, normal_study

HARNESS = Path(__file__).parent / "ohif"

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")


def ohif_load(study: SRStudy) -> dict[str, Any]:
    if not (HARNESS / "node_modules" / "@ohif" / "extension-cornerstone-dicom-sr").is_dir():
        pytest.fail("OHIF packages missing: run `npm ci` in tests/ohif (done by .ci/run)")
    cmd = ["node", "--experimental-require-module", "--no-warnings", str(HARNESS / "load_sr.cjs"), str(study.sr)]
    out = subprocess.run(cmd + [str(p) for p in study.sources], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[SRStudy, dict[str, Any]]:
    study = mixed_study(tmp_path_factory.mktemp("ohif_mixed"))
    return study, ohif_load(study)


def test_ohif_loads_the_report_without_errors(mixed: tuple[SRStudy, dict[str, Any]]) -> None:
    _study, found = mixed
    assert "fatal" not in found
    assert found["sopClassHandler"] == "dicom-sr"
    assert found["errors"] == [] and found["warnings"] == []
    assert found["displaySet"] == {"isImagingMeasurementReport": True, "isRehydratable": True, "referencedImages": 4}


def test_every_lesion_outline_is_drawn_on_its_image(mixed: tuple[SRStudy, dict[str, Any]]) -> None:
    study, found = mixed
    lesions = study.lesions
    assert len(lesions) == 2
    # images without an outline are not measurements (they would break OHIF's loader)
    assert len(found["measurements"]) == len(lesions)
    by_uid = {m["ReferencedSOPInstanceUID"]: m for m in found["measurements"]}
    for finding in lesions:
        m = by_uid[str(finding.source.SOPInstanceUID)]
        assert m["loaded"] is True and m["graphicType"] == "POLYLINE"
        assert m["pointsLength"] == len(polyline_xy(finding.contour))
        labels = {x["label"]: x["value"] for x in m["labels"]}
        assert labels["Probability of cancer"] == f"{100 * finding.malignancy_probability:.2f} %"
        assert labels["Long axis"] == f"{finding.long_axis_mm:.2f} mm"
    drawn = [a for a in found["annotations"] if a["toolName"] == "DICOMSRDisplay"]
    assert len(drawn) == len(lesions)
    assert all(a["points"] > 3 and a["label"] for a in drawn)


def test_hydrated_outlines_carry_benign_or_malignant(mixed: tuple[SRStudy, dict[str, Any]]) -> None:
    study, found = mixed
    tools = found["hydration"]
    assert list(tools) == ["PlanarFreehandROI"]
    by_uid = {a["sopInstanceUid"]: a for a in tools["PlanarFreehandROI"]}
    assert set(by_uid) == {str(f.source.SOPInstanceUID) for f in study.lesions}
    for finding in study.lesions:
        annotation = by_uid[str(finding.source.SOPInstanceUID)]
        assert annotation["closed"] is True and annotation["finding"] == "Mass"
        assert annotation["polylinePoints"] == len(polyline_xy(finding.contour)) - 1  # closing point dropped
        assert annotation["label"].startswith(f"AI: {finding.label};")
        assert "AI likelihood category, not a BI-RADS assessment: " + str(finding.likelihood_category) in annotation["label"]
        assert DISCLAIMER in annotation["label"]
        assert annotation["referencedImageId"].endswith(f"/instances/{finding.source.SOPInstanceUID}/frames/1")


def test_ohif_hydration_adds_each_outline_with_its_label(mixed: tuple[SRStudy, dict[str, Any]]) -> None:
    study, found = mixed
    hydration = found["ohifHydration"]
    assert hydration["isHydrated"] is True
    assert hydration["commands"] == ["updateMeasurement"] * len(study.lesions)
    labels = {m["referencedImageId"].split("/instances/")[1].split("/")[0]: m for m in hydration["measurements"]}
    for finding in study.lesions:
        measurement = labels[str(finding.source.SOPInstanceUID)]
        assert measurement["toolName"] == "PlanarFreehandROI" and measurement["finding"] == "Mass"
        assert measurement["label"].startswith(f"AI: {finding.label}; P(malignant) {100 * finding.malignancy_probability:.0f}%")
        assert measurement["points"] == len(polyline_xy(finding.contour)) - 1


def test_a_study_without_lesions_loads_with_no_measurements(tmp_path: Path) -> None:
    found = ohif_load(normal_study(tmp_path))
    assert "fatal" not in found and found["errors"] == [] and found["warnings"] == []
    assert found["displaySet"]["isImagingMeasurementReport"] is True
    assert found["measurements"] == [] and found["annotations"] == [] and found["hydration"] == {}
    assert found["ohifHydration"] == {"isHydrated": False, "measurements": [], "commands": []}


def test_cine_outline_lands_on_its_frame(tmp_path: Path) -> None:
    study = cine_study(tmp_path, frame_index=2)
    found = ohif_load(study)
    assert "fatal" not in found and found["errors"] == []
    (m,) = found["measurements"]
    assert m["loaded"] is True and m["frameNumber"] == 3
    assert m["ReferencedSOPInstanceUID"] == _uid(study.sources[0])
    (annotation,) = found["hydration"]["PlanarFreehandROI"]
    assert annotation["referencedImageId"].endswith("/frames/3")
