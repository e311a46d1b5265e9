"""Secondary Capture overlay: the source frame with the AI result burned in, as a new series in the study."""

from __future__ import annotations

import numpy as np
from highdicom.sc import SCImage
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from sonopacs.dicom_node.results.overlay_render import shows_heatmap
from sonopacs.dicom_node.results.types import (
    DISCLAIMER,
    OVERLAY_SERIES_DESCRIPTION,
    ImageFinding,
    ResultIdentity,
    result_text,
)

# DICOM CID 7203 "Image Derivation": 113076 Segmentation, plus DCM 113072 "Multiplanar reformatting" no;
# the burned-in result is best described by "Image Processing" (DCM 113850 is not in CID 7203).
DERIVATION_CODE = ("113076", "DCM", "Segmentation")
PURPOSE_CODE = ("121322", "DCM", "Source image for image processing operation")


def build_secondary_capture(
    finding: ImageFinding,
    rgb: np.ndarray,
    identity: ResultIdentity,
    series_uid: str,
    series_number: int,
    instance_number: int,
    sop_instance_uid: str | None = None,
    heatmap: bool = True,
) -> Dataset:
    """An RGB SC Image with patient/study copied from the source and a Source Image Sequence.

    `rgb` is the source frame (same rows, columns and origin) with the banner band below it, as
    ``render_overlay(finding, heatmap)`` drew it: the derivation text names what was drawn.
    """
    src = finding.source
    if rgb.shape[1] != int(src.Columns) or rgb.shape[0] < int(src.Rows):
        raise ValueError(f"overlay {rgb.shape[:2]} does not start with the source {src.Rows}x{src.Columns}")
    sc = SCImage.from_ref_dataset(
        ref_dataset=src,
        pixel_array=np.ascontiguousarray(rgb, dtype=np.uint8),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or identity.new_uid(),
        instance_number=instance_number,
        manufacturer=identity.manufacturer,
        # highdicom insists on an orientation for the PATIENT coordinate system; ultrasound rarely has
        # one, so a placeholder is replaced below by the source's own (usually empty, Type 2) value.
        patient_orientation=_orientation(src) or ("A", "F"),
        laterality=_laterality(src),
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    orientation = _orientation(src)
    setattr(sc, "PatientOrientation", list(orientation) if orientation else "")  # noqa: B010 - typed as list
    if "Laterality" not in sc:
        sc.Laterality = ""  # Type 2C: breast is a paired structure; unknown stays empty
    sc.SeriesDescription = OVERLAY_SERIES_DESCRIPTION
    sc.Modality = "OT"
    sc.ConversionType = "WSD"
    sc.ManufacturerModelName = identity.model_name
    versions = [identity.software_version, f"{finding.model_name} {finding.model_version}"]
    setattr(sc, "SoftwareVersions", versions)  # noqa: B010 - typed as str, a list is a valid multi-value
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BurnedInAnnotation = "YES"
    sc.RecognizableVisualFeatures = "NO"
    sc.DerivationDescription = (_derivation(finding, heatmap) + f" by {finding.model_name} {finding.model_version}")[
        :1024
    ]
    sc.ImageComments = f"{DISCLAIMER}. {result_text(finding)}"[:10240]
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = DERIVATION_CODE
    sc.DerivationCodeSequence = Sequence([code])
    sc.SourceImageSequence = Sequence([source_reference(finding)])
    for keyword in ("StudyDescription", "InstitutionName", "ReferringPhysicianName"):
        if keyword in src and keyword not in sc:
            setattr(sc, keyword, getattr(src, keyword))
    return sc


def _derivation(finding: ImageFinding, heatmap: bool) -> str:
    """What the SC shows, as drawn: a normal result has no contour and no heat map."""
    band = "; result banner in a band below the frame"
    if not finding.assessed:
        return f"{DISCLAIMER}. Source frame{_which_frame(finding)}, not assessed (reason in the banner){band}"
    drawn = [name for name, shown in (("lesion contour", finding.has_lesion),
                                      ("Grad-CAM heat map", shows_heatmap(finding, heatmap))) if shown]
    what = " with " + " and ".join(drawn) if drawn else ", no lesion found (nothing drawn on it)"
    return f"{DISCLAIMER}. Source frame{_which_frame(finding)}{what}{band}"


def _which_frame(finding: ImageFinding) -> str:
    """Names the frame where the reference cannot (several frames in a single-frame class)."""
    if finding.is_multiframe and finding.frame_number is None:
        return f" {finding.frame_index + 1} of {int(finding.source.NumberOfFrames)}"
    return ""


def source_reference(finding: ImageFinding) -> Dataset:
    """One Source Image Sequence item: SOP class/instance of the original and the frame used."""
    ref = Dataset()
    ref.ReferencedSOPClassUID = finding.source.SOPClassUID
    ref.ReferencedSOPInstanceUID = finding.source.SOPInstanceUID
    if finding.frame_number is not None:
        ref.ReferencedFrameNumber = finding.frame_number
    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning = PURPOSE_CODE
    ref.PurposeOfReferenceCodeSequence = Sequence([purpose])
    return ref


def _orientation(src: Dataset) -> tuple[str, str] | None:
    value = getattr(src, "PatientOrientation", None)
    if value and len(value) == 2 and all(value):
        return (str(value[0]), str(value[1]))
    return None


def _laterality(src: Dataset) -> str | None:
    for keyword in ("ImageLaterality", "Laterality"):
        value = str(getattr(src, keyword, "") or "").strip()
        if value in ("L", "R"):
            return value
    return None
