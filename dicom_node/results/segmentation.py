"""DICOM SEG (binary) of the lesion mask for single-frame sources, in the source pixel geometry."""

from __future__ import annotations

import numpy as np
from highdicom import AlgorithmIdentificationSequence
from highdicom.seg import Segmentation, SegmentDescription
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from sonopacs.dicom_node.results.types import SEG_SERIES_DESCRIPTION, ImageFinding, ResultIdentity


def build_segmentation(
    finding: ImageFinding,
    source_with_pixels: Dataset,
    identity: ResultIdentity,
    series_uid: str,
    series_number: int,
    instance_number: int,
    sop_instance_uid: str | None = None,
) -> Dataset | None:
    """A one-segment binary SEG, or None when the source is multi-frame, not assessed or has no lesion."""
    if (
        not finding.assessed
        or finding.is_multiframe
        or finding.frame_number is not None
        or finding.mask is None
        or not finding.mask.any()
    ):
        return None
    mask = finding.mask.astype(bool)
    if mask.shape != (int(source_with_pixels.Rows), int(source_with_pixels.Columns)):
        raise ValueError("mask does not match the source geometry")
    algorithm = AlgorithmIdentificationSequence(
        name=finding.model_name,
        family=codes.cid7162.ArtificialIntelligence,
        version=finding.model_version,
    )
    segment = SegmentDescription(
        segment_number=1,
        segment_label="AI lesion",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Mass,
        algorithm_type="AUTOMATIC",
        algorithm_identification=algorithm,
        tracking_uid=identity.new_uid(),
        tracking_id="AI lesion",
    )
    seg = Segmentation(
        source_images=[source_with_pixels],
        pixel_array=mask[np.newaxis],
        segmentation_type="BINARY",
        segment_descriptions=[segment],
        **identity.derived_object_kwargs(series_uid, series_number, sop_instance_uid, instance_number),
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    if "PatientOrientation" not in seg:
        seg.PatientOrientation = getattr(source_with_pixels, "PatientOrientation", "")  # Type 2C
    seg.SeriesDescription = SEG_SERIES_DESCRIPTION
    return seg
