"""Result objects (SC, SR, PR, SEG): dciodvfy-clean, rendered by DCMTK, and readable through Orthanc."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest

from sonopacs.dicom_node.results.geometry import polyline_xy
from sonopacs.dicom_node.results.overlay_render import render_overlay
from sonopacs.dicom_node.results.presentation_state import build_presentation_state
from sonopacs.dicom_node.results.secondary_capture import build_secondary_capture
from sonopacs.dicom_node.results.segmentation import build_segmentation
from sonopacs.dicom_node.results.structured_report import build_structured_report
from sonopacs.dicom_node.results.types import DISCLAIMER, ImageFinding, ResultIdentity
from tests.conftest import requires_dciodvfy, requires_dcmtk
from tests.support.findings import dciodvfy, ellipse_finding
from tests.support.orthanc import Orthanc
from tests.support.pixelmed import pixelmed, requires_pixelmed
from tests.support.sr_study import mixed_study, normal_study
from tests.support.us_realistic import write_realistic_study

UID_ROOT = "1.2.826.0.1.3680043.10.1471."
IDENTITY = ResultIdentity(uid_root=UID_ROOT, software_version="test")


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One of each object from a 2-image study (grey uncompressed + JPEG YBR_FULL_422 colour)."""
    folder = tmp_path_factory.mktemp("results")
    sources = write_realistic_study(folder / "study", n_images=2, jpeg_every=2)
    grey, colour = ellipse_finding(sources[0]), ellipse_finding(sources[1], label="benign", p=0.2)
    colour.contour = []  # an image without a lesion: SR image-level group, PR text only
    out: dict[str, Path] = {"source_grey": sources[0], "source_colour": sources[1]}
    sc_series = IDENTITY.new_uid()
    for name, finding in (("grey", grey), ("colour", colour)):
        sc = build_secondary_capture(finding, render_overlay(finding), IDENTITY, sc_series, 9101, 1)
        pr = build_presentation_state(finding, IDENTITY, IDENTITY.new_uid(), 9301, 1)
        for kind, ds in (("sc", sc), ("pr", pr)):
            out[f"{kind}_{name}"] = folder / f"{kind}_{name}.dcm"
            ds.save_as(out[f"{kind}_{name}"], enforce_file_format=True)
    seg = build_segmentation(grey, pydicom.dcmread(sources[0]), IDENTITY, IDENTITY.new_uid(), 9401, 1)
    assert seg is not None
    out["seg"] = folder / "seg.dcm"
    seg.save_as(out["seg"], enforce_file_format=True)
    sr = build_structured_report([grey, colour], IDENTITY, IDENTITY.new_uid(), 9201)
    out["sr"] = folder / "sr.dcm"
    sr.save_as(out["sr"], enforce_file_format=True)
    out["sr_mixed"] = mixed_study(folder / "mixed").sr  # two lesions, a normal and a not-assessed image
    out["sr_normal"] = normal_study(folder / "normal").sr  # no lesion: no measurement group at all
    return out


@requires_dciodvfy
@pytest.mark.parametrize("kind", ["sc_grey", "sc_colour", "pr_grey", "pr_colour", "seg", "sr", "sr_mixed", "sr_normal"])
def test_every_object_passes_dciodvfy_without_errors(objects: dict[str, Path], kind: str) -> None:
    errors, _warnings = dciodvfy(objects[kind])
    assert errors == []


@requires_pixelmed
@pytest.mark.parametrize("kind", ["sr", "sr_mixed", "sr_normal"])
def test_every_sr_passes_pixelmed_without_errors(objects: dict[str, Path], kind: str) -> None:
    errors, warnings, text = pixelmed(objects[kind], "DicomSRValidator")
    assert "Found Root Template TID_1500 (MeasurementReport)" in text
    assert errors == []
    # PixelMed 20220618's TID 1410 has no qualitative-evaluation rows and no Comment row, so those
    # items (Classification, AI likelihood category, Cornerstone's label) are "not in template".
    assert all("Content Item not in template" in w for w in warnings), warnings


@requires_pixelmed
@pytest.mark.xfail(
    strict=True,
    reason="PixelMed and dciodvfy disagree on this SEG (tried 2026-12-04): PixelMed wants General Series "
    "Laterality, which dciodvfy then calls 'present when condition unsatisfied'; PixelMed wants the Derivation "
    "Image Sequence in the shared group as well as per frame, which dciodvfy (and PS3.3 C.7.6.16) forbid. "
    "We keep the dciodvfy-clean form.",
)
def test_seg_passes_pixelmed_without_errors(objects: dict[str, Path]) -> None:
    # PixelMed's DicomInstanceValidator (Debian build) knows the Segmentation IOD but not SC or PR.
    errors, _warnings, text = pixelmed(objects["seg"], "DicomInstanceValidator")
    assert "Found Segmentation IOD" in text
    assert errors == []


def test_secondary_capture_lines_up_with_and_points_at_the_original(objects: dict[str, Path]) -> None:
    src = pydicom.dcmread(objects["source_grey"])
    sc = pydicom.dcmread(objects["sc_grey"])
    # the source frame on top (same origin and columns), the banner band below it
    assert (sc.Columns, sc.SamplesPerPixel, sc.PhotometricInterpretation) == (src.Columns, 3, "RGB")
    assert src.Rows < sc.Rows <= src.Rows + 200
    assert sc.StudyInstanceUID == src.StudyInstanceUID and sc.SeriesInstanceUID != src.SeriesInstanceUID
    assert sc.PatientID == src.PatientID and sc.PatientName == src.PatientName
    assert sc.AccessionNumber == src.AccessionNumber
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert sc.BurnedInAnnotation == "YES" and sc.Manufacturer == "sonopacs"
    assert sc.SeriesDescription == "sonopacs AI overlay"
    assert sc.SOPInstanceUID.startswith(UID_ROOT) and sc.SeriesInstanceUID.startswith(UID_ROOT)
    assert DISCLAIMER in sc.DerivationDescription
    # tissue outside the lesion, banner and heat map is the original pixel value
    assert np.array_equal(sc.pixel_array[100, 100], np.repeat(src.pixel_array[100, 100], 3))


def test_heat_map_is_drawn_for_a_lesion_result_and_not_for_a_normal_one(objects: dict[str, Path]) -> None:
    """A warm patch on a normal image reads as a finding pointed at: the normal result's overlay
    shows the original frame untouched, the lesion result's the heat map around its lesion."""
    finding = ellipse_finding(objects["source_grey"])
    frame = np.repeat(finding.frame[:, :, None], 3, axis=2) if finding.frame.ndim == 2 else finding.frame
    rows = frame.shape[0]
    lesion = render_overlay(finding)[:rows]
    near = (finding.heatmap > 0.5) & ~finding.mask  # warm, outside the lesion: changed by the heat map alone
    assert (np.abs(lesion.astype(int) - frame.astype(int)).max(axis=2)[near] > 0).mean() > 0.9
    finding.label, finding.contour, finding.long_axis, finding.short_axis = "normal", [], None, None
    assert np.array_equal(render_overlay(finding)[:rows], frame)
    assert np.array_equal(render_overlay(finding, heatmap=True)[:rows], frame)


def test_sc_derivation_names_only_what_is_drawn(objects: dict[str, Path]) -> None:
    """The SC's Derivation Description says what the overlay shows: a normal result claimed no
    contour or heat map that is not there, and a heat map switched off is not named."""
    finding = ellipse_finding(objects["source_grey"])

    def derivation(heatmap: bool) -> str:
        rgb = render_overlay(finding, heatmap=heatmap)
        return str(build_secondary_capture(finding, rgb, IDENTITY, IDENTITY.new_uid(), 9101, 1,
                                           heatmap=heatmap).DerivationDescription)

    assert "with lesion contour and Grad-CAM heat map" in derivation(True)
    assert "with lesion contour;" in derivation(False)
    finding.label, finding.contour, finding.long_axis, finding.short_axis = "normal", [], None, None
    for heatmap in (True, False):
        text = derivation(heatmap)
        assert "no lesion found (nothing drawn on it)" in text
        assert "contour" not in text and "heat map" not in text and DISCLAIMER in text


def test_sr_polyline_is_in_source_pixel_coordinates(objects: dict[str, Path]) -> None:
    sr = pydicom.dcmread(objects["sr"])
    src = pydicom.dcmread(objects["source_grey"])
    finding = ellipse_finding(objects["source_grey"])
    scoords = [item for item in _walk(sr.ContentSequence) if item.ValueType == "SCOORD"]
    # one lesion (the colour image had none): the TID 1410 region, repeated under the first NUM
    assert [s.RelationshipType for s in scoords] == ["INFERRED FROM", "CONTAINS"]
    for scoord in scoords:
        assert scoord.GraphicType == "POLYLINE"
        assert np.allclose(np.asarray(scoord.GraphicData).reshape(-1, 2), polyline_xy(finding.contour), atol=1e-3)
        image = scoord.ContentSequence[0].ReferencedSOPSequence[0]
        assert image.ReferencedSOPInstanceUID == src.SOPInstanceUID
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert {i.ReferencedSOPInstanceUID for i in evidence.ReferencedSOPSequence} == {
        src.SOPInstanceUID,
        pydicom.dcmread(objects["source_colour"], stop_before_pixels=True).SOPInstanceUID,
    }
    assert sr.PatientID == src.PatientID and sr.StudyInstanceUID == src.StudyInstanceUID


def test_sr_carries_codes_measurements_algorithm_and_disclaimer(objects: dict[str, Path]) -> None:
    sr = pydicom.dcmread(objects["sr"])
    items = list(_walk(sr.ContentSequence))
    codes = {(i.ConceptNameCodeSequence[0].CodeMeaning, i.ConceptCodeSequence[0].CodeValue) for i in items if i.ValueType == "CODE"}
    assert ("Classification", "21594007") in codes  # SNOMED CT malignant (lesion in the grey image)
    assert ("Finding", "4147007") in codes  # the outlined thing is a mass
    assert ("Finding", "21594007") in codes  # study level: the most suspicious image
    assert ("Procedure reported", "363679005") in codes  # a member of CID 100
    nums = {i.ConceptNameCodeSequence[0].CodeMeaning: float(i.MeasuredValueSequence[0].NumericValue) for i in items if i.ValueType == "NUM"}
    assert nums["Long axis"] == pytest.approx(2 * 640 * 0.1 * 0.1, abs=0.01)
    assert nums["Short axis"] == pytest.approx(2 * 480 * 0.12 * 0.1, abs=0.01)
    assert nums["Probability of cancer"] == pytest.approx(81.0)
    texts = {i.ConceptNameCodeSequence[0].CodeMeaning: i.TextValue for i in items if i.ValueType == "TEXT"}
    assert texts["Algorithm Name"] == "test-writer" and texts["Algorithm Version"] == "0.0"
    comments = [i.TextValue for i in items if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeMeaning == "Comment"]
    # the lesion's label, the study summary and the image without a lesion
    assert len(comments) == 3 and all(DISCLAIMER in t for t in comments)
    assert any("no lesion outlined" in t and "AI: benign" in t for t in comments)


@requires_dcmtk
def test_dsrdump_renders_the_report(objects: dict[str, Path]) -> None:
    if shutil.which("dsrdump") is None:
        pytest.skip("dsrdump missing")
    out = subprocess.run(["dsrdump", str(objects["sr"])], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Imaging Measurement Report" in out.stdout and "POLYLINE" in out.stdout
    assert "Probability of cancer" in out.stdout


def test_presentation_state_kind_follows_the_source(objects: dict[str, Path]) -> None:
    grey, colour = pydicom.dcmread(objects["pr_grey"]), pydicom.dcmread(objects["pr_colour"])
    assert grey.SOPClassUID.name == "Grayscale Softcopy Presentation State Storage"
    assert colour.SOPClassUID.name == "Color Softcopy Presentation State Storage"
    graphic = grey.GraphicAnnotationSequence[0].GraphicObjectSequence[0]
    assert graphic.GraphicType == "POLYLINE" and graphic.GraphicAnnotationUnits == "PIXEL"


def test_segmentation_matches_the_mask(objects: dict[str, Path]) -> None:
    import highdicom as hd

    seg = hd.seg.segread(objects["seg"])
    finding = ellipse_finding(objects["source_grey"])
    src_uid = pydicom.dcmread(objects["source_grey"], stop_before_pixels=True).SOPInstanceUID
    assert finding.mask is not None
    mask = seg.get_pixels_by_source_instance([src_uid], segment_numbers=[1])[0, :, :, 0]
    assert np.array_equal(mask.astype(bool), finding.mask)


def test_multiframe_source_references_the_frame(tmp_path: Path) -> None:
    from pydicom.uid import generate_uid

    from tests.support.dicom_factory import synthetic_bmode, us_dataset
    from tests.support.us_realistic import to_jpeg_ybr422

    frames = np.stack([np.repeat(synthetic_bmode(seed=s)[:, :, None], 3, 2) for s in range(3)])
    ds = us_dataset(frames[0, :, :, 0], study_uid=generate_uid(), series_uid=generate_uid())
    to_jpeg_ybr422(ds, frames)
    path = tmp_path / "cine.dcm"
    ds.save_as(path, enforce_file_format=True)
    finding: ImageFinding = ellipse_finding(path, frame_index=2)
    sc = build_secondary_capture(finding, render_overlay(finding), IDENTITY, IDENTITY.new_uid(), 9101, 1)
    assert sc.SourceImageSequence[0].ReferencedFrameNumber == 3
    finding.source = pydicom.dcmread(path, stop_before_pixels=True)
    sr = build_structured_report([finding], IDENTITY, IDENTITY.new_uid(), 9201)
    region = [i for i in _walk(sr.ContentSequence) if i.ValueType == "SCOORD"][0]
    assert region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedFrameNumber == 3
    assert build_segmentation(finding, ds, IDENTITY, IDENTITY.new_uid(), 9401, 1) is None


def test_objects_round_trip_through_orthanc(objects: dict[str, Path], orthanc_factory: Callable[..., Orthanc]) -> None:
    pacs = orthanc_factory()
    ids = {kind: pacs.upload(objects[kind]) for kind in ("source_grey", "sc_grey", "sr", "pr_grey", "seg")}
    for kind, oid in ids.items():
        assert pacs.instance_bytes(oid) == objects[kind].read_bytes(), kind
    tags = pacs.get(f"/instances/{ids['sr']}/simplified-tags")
    assert tags["Modality"] == "SR" and tags["SeriesDescription"] == "sonopacs AI report"
    content = str(tags["ContentSequence"])
    assert "Probability of cancer" in content and "Malignant" in content and "POLYLINE" in content
    study = pacs.get(f"/instances/{ids['sc_grey']}/study")
    assert len(study["Series"]) == 5  # original + SC + SR + PR + SEG in the same study


def _walk(seq: pydicom.Sequence) -> list[pydicom.Dataset]:
    out = []
    for item in seq:
        out.append(item)
        if "ContentSequence" in item:
            out.extend(_walk(item.ContentSequence))
    return out
