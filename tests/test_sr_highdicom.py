"""highdicom reads our SR through its own TID 1500 accessors, with codes from the named context groups."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import cast

import highdicom as hd
import numpy as np
import pytest
from pydicom.sr.codedict import codes as sr_codes

from sonopacs.dicom_node.results import codes
from sonopacs.dicom_node.results.geometry import polyline_xy
from sonopacs.dicom_node.results.types import DISCLAIMER
from tests.support.sr_study import SRStudy, mixed_study, normal_study


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> SRStudy:
    return mixed_study(tmp_path_factory.mktemp("hd_mixed"))


def _read(path: Path) -> hd.sr.MeasurementReport:
    sr = hd.sr.srread(path)
    assert isinstance(sr.content, hd.sr.MeasurementReport)
    return sr.content


def _report_evaluations(report: hd.sr.MeasurementReport) -> list[hd.sr.ContentItem]:
    (container,) = [i for i in report[0].ContentSequence if i.name == codes.QUALITATIVE_EVALUATIONS]
    return list(container.ContentSequence)


def test_highdicom_reads_without_warnings(mixed: SRStudy, caplog: pytest.LogCaptureFixture) -> None:
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        report = _read(mixed.sr)
        for group in report.get_planar_roi_measurement_groups():
            group.finding_type, group.get_qualitative_evaluations(), group.get_measurements()
    assert [str(w.message) for w in caught] == []
    assert "more than one Finding" not in caplog.text and caplog.records == []


def test_each_lesion_is_a_planar_roi_with_its_classification(mixed: SRStudy) -> None:
    report = _read(mixed.sr)
    groups = report.get_planar_roi_measurement_groups()
    assert len(groups) == len(mixed.lesions) == 2
    assert report.get_image_measurement_groups() == []  # nothing without an outline in row 6
    regions = {}
    for group in groups:
        assert isinstance(group.roi, hd.sr.ImageRegion)
        regions[str(group.roi.ContentSequence[0].referenced_sop_instance_uid)] = (group, group.roi)
    for finding in mixed.lesions:
        group, region = regions[str(finding.source.SOPInstanceUID)]
        assert group.finding_type == codes.MASS
        assert group.reference_type == sr_codes.DCM.ImageRegion
        assert region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        points = region.value
        assert np.allclose(points, polyline_xy(finding.contour), atol=1e-3) and np.allclose(points[0], points[-1])
        evaluations = {e.name: cast(hd.sr.CodedConcept, e.value) for e in group.get_qualitative_evaluations()}
        assert evaluations[codes.CLASSIFICATION] == codes.CLASS_VALUES[finding.label]
        assert evaluations[codes.LIKELIHOOD_CATEGORY].meaning == f"AI likelihood category {finding.likelihood_category}"
        assert codes.LIKELIHOOD_CATEGORY.meaning == "AI likelihood category, not a BI-RADS assessment"
        measurements = {m.name: m for m in group.get_measurements()}
        probability = measurements[codes.PROBABILITY_OF_CANCER]
        assert probability.value == pytest.approx(100 * finding.malignancy_probability) and probability.unit == codes.PERCENT
        assert measurements[codes.LONG_AXIS].value == pytest.approx(finding.long_axis_mm, abs=0.01)
        assert measurements[codes.SHORT_AXIS].unit == codes.MM
        (site,) = group.finding_sites
        side = str(finding.source.get("ImageLaterality", "") or finding.source.get("Laterality", ""))
        assert site.value == codes.BREAST and site.laterality == codes.LATERALITY[side]


def test_algorithm_identification_is_found_on_every_group(mixed: SRStudy) -> None:
    for group in _read(mixed.sr).get_planar_roi_measurement_groups():
        items = [i for i in group[0].ContentSequence if i.name in (sr_codes.DCM.AlgorithmName, sr_codes.DCM.AlgorithmVersion)]
        algorithm = hd.sr.AlgorithmIdentification.from_sequence(items)
        assert {i.name.meaning: i.value for i in algorithm} == {"Algorithm Name": "test-writer", "Algorithm Version": "0.0"}


def test_images_without_outline_and_the_study_summary_are_report_level_evaluations(mixed: SRStudy) -> None:
    items = _report_evaluations(_read(mixed.sr))
    coded = {i.name: i.value for i in items if i.value_type == hd.sr.ValueTypeValues.CODE}
    assert coded[codes.FINDING] == codes.CLASS_VALUES["malignant"]  # the most suspicious image
    assert coded[codes.LIKELIHOOD_CATEGORY] == codes.LIKELIHOOD_VALUES["4C"]
    texts = [i.value for i in items if i.value_type == hd.sr.ValueTypeValues.TEXT]
    assert all(DISCLAIMER in t for t in texts)
    normal, skipped = mixed.findings[2], mixed.findings[3]
    assert any(str(normal.source.SOPInstanceUID) in t and "no lesion outlined" in t for t in texts)
    assert any(str(skipped.source.SOPInstanceUID) in t and "not assessed: colour Doppler image" in t for t in texts)
    assert not any(str(f.source.SOPInstanceUID) in t for f in mixed.lesions[1:] for t in texts)


def test_a_lesion_free_study_has_no_measurement_group(tmp_path: Path) -> None:
    report = _read(normal_study(tmp_path).sr)
    assert report.get_planar_roi_measurement_groups() == [] and report.get_image_measurement_groups() == []
    names = [i.name for i in report[0].ContentSequence]
    assert sr_codes.DCM.ImagingMeasurements not in names and codes.QUALITATIVE_EVALUATIONS in names
    coded = {i.name: i.value for i in _report_evaluations(report) if i.value_type == hd.sr.ValueTypeValues.CODE}
    assert coded[codes.FINDING] == codes.CLASS_VALUES["normal"]


def test_codes_come_from_the_context_groups_the_templates_name() -> None:
    assert codes.PROCEDURE_REPORTED in sr_codes.cid100  # TID 1500 row 4: CID 100
    assert codes.CLASS_VALUES["benign"] in sr_codes.cid6063 and codes.CLASS_VALUES["malignant"] in sr_codes.cid6063
    assert codes.CLASS_VALUES["normal"] in sr_codes.cid222  # Normality Codes
    assert all(side in sr_codes.cid244 for side in codes.LATERALITY.values())  # Laterality
    assert codes.PROBABILITY_OF_CANCER in sr_codes.cid6048
    assert sr_codes.SCT.LongAxis == codes.LONG_AXIS and sr_codes.SCT.ShortAxis == codes.SHORT_AXIS


def test_a_later_frame_of_a_single_frame_class_object_gets_no_misplaced_outline(tmp_path: Path) -> None:
    import pydicom

    from sonopacs.dicom_node.results.structured_report import build_structured_report
    from tests.support.findings import ellipse_finding
    from tests.support.sr_study import IDENTITY, cine_study

    path = cine_study(tmp_path / "cine").sources[0]
    ds = pydicom.dcmread(path)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.UID("1.2.840.10008.5.1.4.1.1.6.1")  # US Image: one frame by IOD
    ds.save_as(path, enforce_file_format=True)
    first, later = ellipse_finding(path, frame_index=0), ellipse_finding(path, frame_index=1)
    for finding in (first, later):
        finding.likelihood_category = "4C"
        assert finding.frame_number is None  # the IOD cannot name a frame
    out = tmp_path / "sr.dcm"
    build_structured_report([first, later], IDENTITY, IDENTITY.new_uid(), 9201).save_as(out, enforce_file_format=True)
    report = _read(out)
    (group,) = report.get_planar_roi_measurement_groups()  # frame 1 only: a reference without frame is frame 1
    assert group.roi is not None and "ReferencedFrameNumber" not in group.roi.ContentSequence[0].ReferencedSOPSequence[0]
    texts = [i.value for i in _report_evaluations(report) if i.value_type == hd.sr.ValueTypeValues.TEXT]
    assert any("frame 2 of a single-frame object: outline not stored" in t for t in texts)
