"""Softcopy Presentation State: the lesion contour and a short label as graphic annotations.

Colour sources get a Colour Softcopy PS; DICOM only allows that for three-sample images, so
grey sources get a Grayscale Softcopy PS carrying the same annotation layer.

Unlike the Secondary Capture, the viewer draws these over the untouched original (e.g. Weasis),
so the radiologist can toggle them.
"""

from __future__ import annotations

import logging
from importlib import resources
from typing import Any

from highdicom import ModalityLUTTransformation, RescaleTypeValues
from highdicom.pr import (
    AnnotationUnitsValues,
    ColorSoftcopyPresentationState,
    GraphicAnnotation,
    GraphicLayer,
    GraphicObject,
    GraphicTypeValues,
    GrayscaleSoftcopyPresentationState,
    SoftcopyVOILUTTransformation,
    TextObject,
)
from pydicom.dataset import Dataset

from sonopacs.dicom_node.results.geometry import polyline_xy
from sonopacs.dicom_node.results.types import (
    DISCLAIMER,
    PR_SERIES_DESCRIPTION,
    ImageFinding,
    ResultIdentity,
    result_text,
)

log = logging.getLogger(__name__)


def build_presentation_state(
    finding: ImageFinding,
    identity: ResultIdentity,
    series_uid: str,
    series_number: int,
    instance_number: int,
    sop_instance_uid: str | None = None,
) -> Dataset:
    """A presentation state referencing the source image (and frame) with the AI contour layer."""
    layer = GraphicLayer(layer_name="SONOPACS_AI", order=1, description=DISCLAIMER)
    rows, cols = int(finding.source.Rows), int(finding.source.Columns)
    graphics = []
    if finding.assessed and finding.has_lesion:
        graphics.append(
            GraphicObject(
                graphic_type=GraphicTypeValues.POLYLINE,
                graphic_data=polyline_xy(finding.contour),
                units=AnnotationUnitsValues.PIXEL,
            )
        )
    text = TextObject(
        text_value=f"{result_text(finding)} ({finding.model_name} {finding.model_version}). {DISCLAIMER}",
        units=AnnotationUnitsValues.PIXEL,
        bounding_box=(2.0, 2.0, float(cols - 2), float(min(rows - 2, 40))),
    )
    annotation = GraphicAnnotation(
        referenced_images=[finding.source],
        graphic_layer=layer,
        referenced_frame_number=finding.frame_number,
        graphic_objects=graphics or None,
        text_objects=[text],
    )
    common: dict[str, Any] = dict(
        referenced_images=[finding.source],
        **identity.derived_object_kwargs(series_uid, series_number, sop_instance_uid, instance_number),
        graphic_annotations=[annotation],
        graphic_layers=[layer],
    )
    pr: Dataset
    if int(getattr(finding.source, "SamplesPerPixel", 1) or 1) == 3:
        pr = ColorSoftcopyPresentationState(icc_profile=_icc_profile(finding.source), **common)
    else:
        pr = _grayscale(finding.source, common)
    if "Laterality" not in pr:
        # Type 2C (breast is paired): the source's, else empty for unknown
        pr.Laterality = str(getattr(finding.source, "Laterality", "") or "")
    pr.SeriesDescription = PR_SERIES_DESCRIPTION
    return pr


def _grayscale(source: Dataset, common: dict[str, Any]) -> Dataset:
    """A Grayscale PS with the source's own LUTs, else identity LUTs over the stored bit range.

    highdicom copies the Modality and VOI LUTs from the source; it reads a multi-frame source's
    from functional groups that a classic US cine (a palette-colour Philips loop) does not have,
    and it cannot read some LUT encodings. The annotation layer is what matters here, so such a
    source gets an identity rescale and a window over its full stored range instead.
    """
    try:
        return GrayscaleSoftcopyPresentationState(**common)
    except (AttributeError, TypeError, ValueError, KeyError) as exc:
        log.info("presentation state: source LUTs not usable (%s); identity LUTs used", exc)
    bits = int(getattr(source, "BitsStored", 8) or 8)
    return GrayscaleSoftcopyPresentationState(
        modality_lut_transformation=ModalityLUTTransformation(
            rescale_intercept=0.0, rescale_slope=1.0, rescale_type=RescaleTypeValues.US
        ),
        voi_lut_transformations=[
            SoftcopyVOILUTTransformation(window_center=float(2 ** (bits - 1)), window_width=float(2**bits))
        ],
        **common,
    )


def _icc_profile(source: Dataset) -> bytes:
    """The source's ICC profile, else sRGB (what Doppler and RGB captures assume).

    highdicom accepts only input/colour-space profiles ("scnr"/"spac"); it ships such an sRGB
    profile, which is used when the source has none or one of another class.
    """
    if "ICCProfile" in source and bytes(source.ICCProfile)[12:16] in (b"scnr", b"spac"):
        return bytes(source.ICCProfile)
    return (resources.files("highdicom") / "_icc_profiles" / "sRGB_v4_ICC_preference.icc").read_bytes()
