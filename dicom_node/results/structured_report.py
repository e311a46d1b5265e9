"""TID 1500 Measurement Report (Comprehensive SR) for one study, shaped so viewers can read it.

Layout (and why):
- Each lesion is ONE TID 1410 planar ROI group: a closed POLYLINE in the SOURCE image's pixels,
  the finding (Mass), the benign/malignant call and the AI likelihood category as qualitative
  evaluations, probability of cancer and long/short axis (TID 1419), the algorithm, and a Comment
  that Cornerstone3D/OHIF show as the outline's label. Its Tracking Identifier starts with
  "Cornerstone3DTools@^0.1.0:PlanarFreehandROI" so OHIF maps it to its freehand-ROI tool, and the
  outline is repeated under the first NUM because that is where Cornerstone's adapters look.
- Images without an outline (normal, no lesion, not assessed) and the study summary go to the
  report-level "Qualitative Evaluations" container (TID 1500 row 12), never into a measurement
  group without coordinates: OHIF 3.13 fails on those ("reading 'ReferencedSOPSequence'").
Every free text states that this is an AI result for assistance only.
"""

from __future__ import annotations

from collections.abc import Sequence
from copy import deepcopy

from highdicom.sr import (
    AlgorithmIdentification,
    CodeContentItem,
    ComprehensiveSR,
    ContainerContentItem,
    ContentSequence,
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
    RelationshipTypeValues,
    SourceImageForRegion,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as sr_codes

from sonopacs.dicom_node.results import codes
from sonopacs.dicom_node.results.geometry import polyline_xy
from sonopacs.dicom_node.results.types import (
    DISCLAIMER,
    REPORT_SERIES_DESCRIPTION,
    ImageFinding,
    ResultIdentity,
)

# Cornerstone3D's tag + tool name; the adapters accept any identifier that starts with it.
CORNERSTONE_FREEHAND = "Cornerstone3DTools@^0.1.0:PlanarFreehandROI"

MeasurementGroup = MeasurementsAndQualitativeEvaluations | PlanarROIMeasurementsAndQualitativeEvaluations


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
    groups: list[MeasurementGroup] = []
    for number, finding in enumerate((f for f in findings if has_outline(f)), start=1):
        groups.append(_lesion_group(finding, number, algorithm, identity))
    sources = _unique_sources(findings)
    report = _measurement_report(_observation_context(first, identity), sources, groups, _report_evaluations(findings))
    sr = ComprehensiveSR(
        evidence=sources,
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
    sr.CodingSchemeIdentificationSequence = [codes.coding_scheme_identification()]
    for keyword in ("StudyDescription", "InstitutionName"):
        if keyword in first.source and keyword not in sr:
            setattr(sr, keyword, getattr(first.source, keyword))
    return sr


def has_outline(finding: ImageFinding) -> bool:
    """Only an assessed image with a lesion contour gets a planar ROI, and only where a reference
    can name its frame: a later frame of a single-frame-class object would be drawn on frame 1."""
    return finding.assessed and finding.has_lesion and not _unreferenceable_frame(finding)


def _unreferenceable_frame(finding: ImageFinding) -> bool:
    return finding.frame_number is None and finding.frame_index > 0


def most_suspicious(findings: list[ImageFinding]) -> ImageFinding:
    """The assessed image with the highest P(malignant) (any image if none was assessed)."""
    assessed = [f for f in findings if f.assessed] or findings
    return max(assessed, key=lambda f: float(f.malignancy_probability))


def disclaimer_present(sr: Dataset) -> bool:
    """Cheap self-check used by tests: the disclaimer appears in the content tree."""
    return DISCLAIMER in str(sr.ContentSequence)


def _measurement_report(
    context: ObservationContext,
    sources: list[Dataset],
    groups: list[MeasurementGroup],
    evaluations: ContainerContentItem,
) -> MeasurementReport:
    """TID 1500 with row 6 (Imaging Measurements) only when there is a lesion, and row 12 always.

    highdicom 0.28 builds rows 1-6 but not row 12 and insists on one measurement group; a study
    without any lesion therefore gets a placeholder group that is removed again (row 6 is optional
    when row 12 is present).
    """
    placeholder = not groups
    if placeholder:
        groups = [MeasurementsAndQualitativeEvaluations(TrackingIdentifier(identifier="placeholder"))]
    report = MeasurementReport(
        observation_context=context,
        procedure_reported=codes.PROCEDURE_REPORTED,
        imaging_measurements=groups,
        referenced_images=sources,  # Image Library: OHIF lists the SR's images from it
    )
    content = report[0].ContentSequence
    if placeholder:
        keep = [item for item in content if item.ConceptNameCodeSequence[0].CodeValue != sr_codes.DCM.ImagingMeasurements.value]
        content.clear()
        content.extend(keep)
    content.append(evaluations)
    return report


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
            observer_type=sr_codes.cid270.Device, observer_identifying_attributes=device
        )
    )


def _finding_sites(finding: ImageFinding) -> list[FindingSite]:
    side = str(getattr(finding.source, "ImageLaterality", "") or getattr(finding.source, "Laterality", ""))
    return [FindingSite(codes.BREAST, laterality=codes.LATERALITY.get(side.strip()))]


def _frames(finding: ImageFinding) -> list[int] | None:
    return [finding.frame_number] if finding.frame_number is not None else None


def _image_label(finding: ImageFinding) -> str:
    number = getattr(finding.source, "InstanceNumber", None)
    frame = f", frame {finding.frame_number}" if finding.frame_number is not None else ""
    return f"image {number if number is not None else '?'}{frame} ({finding.source.SOPInstanceUID})"


def _percent(p: float) -> float:
    return round(100.0 * float(p), 2)


def _summary_text(finding: ImageFinding) -> str:
    """One line a radiologist can read in any viewer: class, probability, category, size."""
    parts = [f"AI: {finding.label}", f"P(malignant) {_percent(finding.malignancy_probability):.0f}%"]
    if finding.likelihood_category:
        parts.append(f"{codes.LIKELIHOOD_LABEL}: {finding.likelihood_category}")
    if finding.long_axis_mm is not None and finding.short_axis_mm is not None and finding.has_lesion:
        parts.append(f"{finding.long_axis_mm:.1f} x {finding.short_axis_mm:.1f} mm")
    return "; ".join(parts) + f" ({DISCLAIMER})"


def _evaluations(finding: ImageFinding) -> list[QualitativeEvaluation]:
    out = []
    if finding.label in codes.CLASS_VALUES:
        out.append(QualitativeEvaluation(codes.CLASSIFICATION, codes.CLASS_VALUES[finding.label]))
    if finding.likelihood_category in codes.LIKELIHOOD_VALUES:
        out.append(QualitativeEvaluation(codes.LIKELIHOOD_CATEGORY, codes.LIKELIHOOD_VALUES[finding.likelihood_category]))
    return out


def _measurements(finding: ImageFinding) -> list[Measurement]:
    out = [Measurement(name=codes.PROBABILITY_OF_CANCER, value=_percent(finding.malignancy_probability), unit=codes.PERCENT)]
    for name, value in ((codes.LONG_AXIS, finding.long_axis_mm), (codes.SHORT_AXIS, finding.short_axis_mm)):
        if value is not None:
            out.append(Measurement(name=name, value=round(float(value), 2), unit=codes.MM))
    return out


def _lesion_group(
    finding: ImageFinding, number: int, algorithm: AlgorithmIdentification, identity: ResultIdentity
) -> PlanarROIMeasurementsAndQualitativeEvaluations:
    """One TID 1410 group per lesion: outline, finding, evaluations, numbers and a label."""
    region = ImageRegion(
        graphic_type=GraphicTypeValues.POLYLINE,
        graphic_data=polyline_xy(finding.contour),
        source_image=SourceImageForRegion.from_source_image(finding.source, _frames(finding)),
    )
    group = PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=identity.new_uid(), identifier=f"{CORNERSTONE_FREEHAND} AI lesion {number}"),
        referenced_region=region,
        finding_type=codes.MASS,
        algorithm_id=algorithm,
        finding_sites=_finding_sites(finding),
        measurements=_measurements(finding),
        qualitative_evaluations=_evaluations(finding),
    )
    content = group[0].ContentSequence
    _outline_under_first_number(content)
    content.append(
        TextContentItem(name=codes.COMMENT, value=_summary_text(finding), relationship_type=RelationshipTypeValues.CONTAINS)
    )
    return group


def _outline_under_first_number(content: Sequence[Dataset]) -> None:
    """Repeat the outline as INFERRED FROM under the group's first NUM (TID 300 style).

    Cornerstone3D's adapters (and so OHIF's hydration) look for the region inside the first NUM
    of a group and drop the annotation when it is not there; the group-level SCOORD stays the
    TID 1410 one that highdicom and validators read.
    """
    scoord = next(item for item in content if item.ValueType == "SCOORD")
    number = next(item for item in content if item.ValueType == "NUM")
    copy = deepcopy(scoord)
    copy.RelationshipType = RelationshipTypeValues.INFERRED_FROM.value
    if "ContentSequence" in number:
        number.ContentSequence.append(copy)
    else:
        number.ContentSequence = [copy]


def _report_evaluations(findings: list[ImageFinding]) -> ContainerContentItem:
    """TID 1500 row 12: the study-level AI finding and one line per image without an outline."""
    container = ContainerContentItem(name=codes.QUALITATIVE_EVALUATIONS, relationship_type=RelationshipTypeValues.CONTAINS)
    items: list[CodeContentItem | TextContentItem] = []
    top = most_suspicious(findings)
    if top.assessed:
        if top.label in codes.CLASS_VALUES:
            items.append(CodeContentItem(codes.FINDING, codes.CLASS_VALUES[top.label], RelationshipTypeValues.CONTAINS))
        if top.likelihood_category in codes.LIKELIHOOD_VALUES:
            items.append(
                CodeContentItem(
                    codes.LIKELIHOOD_CATEGORY,
                    codes.LIKELIHOOD_VALUES[top.likelihood_category],
                    RelationshipTypeValues.CONTAINS,
                )
            )
        summary = f"Study summary, most suspicious {_image_label(top)}: {_summary_text(top)}"
    else:
        summary = f"Study summary: no image could be assessed ({DISCLAIMER})"
    items.append(TextContentItem(codes.COMMENT, summary, RelationshipTypeValues.CONTAINS))
    for finding in findings:
        if has_outline(finding):
            continue
        if finding.assessed and finding.has_lesion:  # a frame this object cannot reference
            text = (
                f"{_image_label(finding)}, frame {finding.frame_index + 1} of a single-frame object: "
                f"outline not stored; {_summary_text(finding)}"
            )
        elif finding.assessed:
            text = f"{_image_label(finding)}: no lesion outlined; {_summary_text(finding)}"
        else:
            reason = finding.not_assessed_reason or "outside the model's scope"
            text = f"{_image_label(finding)}: not assessed: {reason} ({DISCLAIMER})"
        items.append(TextContentItem(codes.COMMENT, text, RelationshipTypeValues.CONTAINS))
    container.ContentSequence = ContentSequence(items)
    return container
