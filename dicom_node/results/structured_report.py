"""TID 1500 Measurement Report (Comprehensive SR) for one study: one group per analysed image.

Images with a lesion get a planar ROI (TID 1410) whose polyline is in the SOURCE image's pixels;
images without one get an image-level group (TID 1501). A last group summarises the study by its
most suspicious image. Every free text states that this is an AI result for assistance only.
"""

from __future__ import annotations

from highdicom.sr import (
    AlgorithmIdentification,
    ComprehensiveSR,
    DeviceObserverIdentifyingAttributes,
    FindingSite,
    GraphicTypeValues,
    ImageRegion,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    SourceImageForMeasurementGroup,
    SourceImageForRegion,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from sonopacs.dicom_node.results.geometry import polyline_xy
from sonopacs.dicom_node.results.types import (
    DISCLAIMER,
    REPORT_SERIES_DESCRIPTION,
    ImageFinding,
    ResultIdentity,
)

FINDING_CODES = {
    "normal": Code("17621005", "SCT", "Normal"),
    "benign": Code("30807003", "SCT", "Benign"),
    "malignant": Code("21594007", "SCT", "Malignant"),
}
FINDING = Code("121071", "DCM", "Finding")
OVERALL = Code("111413", "DCM", "Overall Assessment")
PROBABILITY_OF_CANCER = Code("111047", "DCM", "Probability of cancer")
NO_UNITS = Code("1", "UCUM", "no units")
MM = Code("mm", "UCUM", "millimeter")
MASS = Code("4147007", "SCT", "Mass")
BREAST = Code("76752008", "SCT", "Breast")
PROCEDURE = Code("47079000", "SCT", "Ultrasonography of breast")
LATERALITY = {"L": Code("7771000", "SCT", "Left"), "R": Code("24028007", "SCT", "Right")}


def build_structured_report(
    findings: list[ImageFinding],
    identity: ResultIdentity,
    series_uid: str,
    series_number: int,
    instance_number: int = 1,
    sop_instance_uid: str | None = None,
) -> Dataset:
    """The study's Comprehensive SR; findings must all belong to one study and be non-empty."""
    if not findings:
        raise ValueError("a report needs at least one analysed image")
    first = findings[0]
    algorithm = AlgorithmIdentification(name=first.model_name, version=first.model_version)
    groups: list[MeasurementsAndQualitativeEvaluations | PlanarROIMeasurementsAndQualitativeEvaluations]
    groups = [_image_group(f, i + 1, algorithm, identity) for i, f in enumerate(findings)]
    groups.append(_summary_group(findings, algorithm, identity))
    report = MeasurementReport(
        observation_context=_observation_context(first, identity),
        procedure_reported=PROCEDURE,
        imaging_measurements=groups,
    )
    evidence = _unique_sources(findings)
    sr = ComprehensiveSR(
        evidence=evidence,
        content=report,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or identity.new_uid(),
        instance_number=instance_number,
        manufacturer=identity.manufacturer,
        is_complete=True,
        is_final=False,
        is_verified=False,
    )
    sr.SeriesDescription = REPORT_SERIES_DESCRIPTION
    sr.ManufacturerModelName = identity.model_name
    setattr(sr, "SoftwareVersions", [identity.software_version, f"{first.model_name} {first.model_version}"])  # noqa: B010
    for keyword in ("StudyDescription", "InstitutionName"):
        if keyword in first.source and keyword not in sr:
            setattr(sr, keyword, getattr(first.source, keyword))
    return sr


def _unique_sources(findings: list[ImageFinding]) -> list[Dataset]:
    seen: dict[str, Dataset] = {}
    for f in findings:
        seen.setdefault(str(f.source.SOPInstanceUID), f.source)
    return list(seen.values())


def _observation_context(finding: ImageFinding, identity: ResultIdentity) -> ObservationContext:
    root = identity.uid_root if identity.uid_root.endswith(".") else identity.uid_root + "."
    device = DeviceObserverIdentifyingAttributes(
        uid=root + "1.1",  # stable: the same device on every report
        name=f"sonopacs ({DISCLAIMER})",
        manufacturer_name=identity.manufacturer,
        model_name=f"{finding.model_name} {finding.model_version}"[:64],
    )
    return ObservationContext(
        observer_device_context=ObserverContext(
            observer_type=codes.cid270.Device, observer_identifying_attributes=device
        )
    )


def _finding_sites(finding: ImageFinding) -> list[FindingSite]:
    side = str(getattr(finding.source, "ImageLaterality", "") or getattr(finding.source, "Laterality", ""))
    return [FindingSite(BREAST, laterality=LATERALITY.get(side.strip()))]


def _frames(finding: ImageFinding) -> list[int] | None:
    return [finding.frame_number] if finding.frame_number is not None else None


def _measurements(finding: ImageFinding) -> list[Measurement]:
    """Probability and axes; the algorithm is identified once, on the enclosing group."""
    out = [
        Measurement(
            name=PROBABILITY_OF_CANCER,
            value=round(float(finding.malignancy_probability), 4),
            unit=NO_UNITS,
        )
    ]
    for name, value in ((codes.SCT.LongAxis, finding.long_axis_mm), (codes.SCT.ShortAxis, finding.short_axis_mm)):
        if value is not None and finding.has_lesion:
            out.append(Measurement(name=name, value=round(float(value), 2), unit=MM))
    return out


def _image_group(
    finding: ImageFinding, index: int, algorithm: AlgorithmIdentification, identity: ResultIdentity
) -> MeasurementsAndQualitativeEvaluations | PlanarROIMeasurementsAndQualitativeEvaluations:
    label = f"image {getattr(finding.source, 'InstanceNumber', index)}"
    evaluations = [QualitativeEvaluation(FINDING, FINDING_CODES[finding.label])]
    if finding.has_lesion:
        region = ImageRegion(
            graphic_type=GraphicTypeValues.POLYLINE,
            graphic_data=polyline_xy(finding.contour),
            source_image=SourceImageForRegion.from_source_image(finding.source, _frames(finding)),
        )
        return PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(
                uid=identity.new_uid(), identifier=f"AI lesion, {label} ({DISCLAIMER})"
            ),
            referenced_region=region,
            finding_type=MASS,
            algorithm_id=algorithm,
            finding_sites=_finding_sites(finding),
            measurements=_measurements(finding),
            qualitative_evaluations=evaluations,
        )
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=identity.new_uid(), identifier=f"AI image finding, {label} ({DISCLAIMER})"
        ),
        algorithm_id=algorithm,
        finding_sites=_finding_sites(finding),
        measurements=_measurements(finding),
        qualitative_evaluations=evaluations,
        source_images=[SourceImageForMeasurementGroup.from_source_image(finding.source, _frames(finding))],
    )


def most_suspicious(findings: list[ImageFinding]) -> ImageFinding:
    return max(findings, key=lambda f: float(f.malignancy_probability))


def _summary_group(
    findings: list[ImageFinding], algorithm: AlgorithmIdentification, identity: ResultIdentity
) -> MeasurementsAndQualitativeEvaluations:
    top = most_suspicious(findings)
    label = f"image {getattr(top.source, 'InstanceNumber', '')}".strip()
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=identity.new_uid(),
            identifier=f"AI study summary: most suspicious is {label} ({DISCLAIMER})",
        ),
        algorithm_id=algorithm,
        finding_sites=_finding_sites(top),
        measurements=[
            Measurement(
                name=PROBABILITY_OF_CANCER,
                value=round(float(top.malignancy_probability), 4),
                unit=NO_UNITS,
            )
        ],
        qualitative_evaluations=[QualitativeEvaluation(OVERALL, FINDING_CODES[top.label])],
        source_images=[SourceImageForMeasurementGroup.from_source_image(top.source, _frames(top))],
    )


def disclaimer_present(sr: Dataset) -> bool:
    """Cheap self-check used by tests: the disclaimer appears in the content tree."""
    return DISCLAIMER in str(sr.ContentSequence)

