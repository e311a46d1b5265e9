"""Decide which received instances the pipeline analyses; everything else is skipped with a reason.

Our own results must never be analysed again (a PACS routing them back would loop forever), so
they are recognised by UID root, manufacturer and series description before anything else.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

from sonopacs.dicom_node.regions import UltrasoundRegion, read_regions

OUR_MANUFACTURER = "sonopacs"
OUR_SERIES_PREFIX = "sonopacs"
OWN_RESULT_REASON = "sonopacs result (our own output is never analysed)"

US_IMAGE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound Image Storage",
    "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame Image Storage",
    "1.2.840.10008.5.1.4.1.1.6": "Ultrasound Image Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.3": "Ultrasound Multi-frame Image Storage (Retired)",
}
SC_IMAGE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image Storage",
}
MIN_SIDE = 64


def is_our_result(ds: Dataset, uid_root: str) -> bool:
    """True for anything sonopacs produced (any of three independent marks)."""
    return has_our_marks(
        uid_root,
        uids=(str(getattr(ds, "SOPInstanceUID", "")), str(getattr(ds, "SeriesInstanceUID", ""))),
        manufacturer=getattr(ds, "Manufacturer", None),
        series_description=getattr(ds, "SeriesDescription", None),
    )


def has_our_marks(
    uid_root: str, *, uids: tuple[str, ...], manufacturer: object, series_description: object
) -> bool:
    """The marks themselves, for callers that hold header fields rather than a Dataset (ingest)."""
    root = uid_root if uid_root.endswith(".") else uid_root + "."
    if any(uid.startswith(root) for uid in uids):
        return True
    if str(manufacturer or "").strip().lower() == OUR_MANUFACTURER:
        return True
    return str(series_description or "").strip().lower().startswith(OUR_SERIES_PREFIX)


def skip_reason(ds: Dataset, uid_root: str) -> str | None:
    """None when ds is a 2D ultrasound (or US secondary capture) image we can analyse, else why not.

    Works on a header read with stop_before_pixels; pixel decoding errors are reported later.
    """
    if is_our_result(ds, uid_root):
        return OWN_RESULT_REASON
    sop_class = str(getattr(ds, "SOPClassUID", ""))
    modality = str(getattr(ds, "Modality", "")).upper()
    if sop_class in SC_IMAGE_CLASSES:
        if modality not in ("US", "OT", ""):
            return f"secondary capture of modality {modality}, not ultrasound"
    elif sop_class not in US_IMAGE_CLASSES:
        name = getattr(getattr(ds, "SOPClassUID", None), "name", sop_class) or "unknown"
        return f"not a 2D ultrasound image (SOP class {name})"
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if samples not in (1, 3):
        return f"{samples} samples per pixel"
    rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
    if rows < MIN_SIDE or cols < MIN_SIDE:
        return f"image {rows}x{cols} is too small (minimum {MIN_SIDE}x{MIN_SIDE})"
    regions = read_regions(ds)
    if regions and not any(r.spatial_format == 1 for r in regions):
        return "no 2D image region (M-mode, spectral Doppler or waveform only)"
    return None


# Scope gate, header evidence: an image we can read but the model must not assess ("not assessed",
# not "skipped": the radiologist gets an SC saying so). Pixel content is judged in models.scope.
BREAST_BODY_PARTS = {"BREAST", "BREASTS", "MAMMA", "MAMMARY", "MAMMARYGLAND", "BREAST_AXILLA", "AXILLA"}
BREAST_REGION_CODES = {"76752008", "T-04000", "80248007", "T-04005", "91470000", "T-D8104"}  # breast, breast
# structure, axilla (SNOMED CT and SRT)
SPATIAL_FORMATS = {2: "M-mode", 3: "spectral", 4: "waveform"}
DATA_TYPES = {2: "colour flow", 3: "PW spectral Doppler", 4: "CW spectral Doppler", 5: "Doppler mean trace",
              6: "Doppler mode trace", 7: "Doppler max trace", 8: "volume trace", 9: "Doppler volume trace",
              10: "ECG trace",
              11: "pulse trace", 12: "phonocardiogram trace", 14: "colour bar", 15: "integrated backscatter",
              16: "area trace", 17: "d(area)/dt trace", 18: "physiological trace"}


def scope_reason(ds: Dataset) -> str | None:
    """Why the header says this is not a 2D B-mode breast ultrasound image, or None.

    Evidence: Body Part Examined / Anatomic Region Sequence naming something other than the breast
    (absent: no evidence), a Modality other than US on an ultrasound SOP class, and the ultrasound
    regions (``region_scope_reason``).
    """
    sop_class = str(getattr(ds, "SOPClassUID", ""))
    modality = str(getattr(ds, "Modality", "") or "").upper()
    if sop_class in US_IMAGE_CLASSES and modality not in ("US", ""):
        return f"modality {modality}, not ultrasound"
    body = str(getattr(ds, "BodyPartExamined", "") or "").strip().upper().replace(" ", "")
    if body and body not in BREAST_BODY_PARTS:
        return f"body part examined is {body}, not breast"
    for item in getattr(ds, "AnatomicRegionSequence", None) or []:
        code = str(getattr(item, "CodeValue", "") or "")
        if code and code not in BREAST_REGION_CODES:
            meaning = str(getattr(item, "CodeMeaning", "") or code)
            return f"anatomic region is {meaning}, not breast"
    try:
        regions = read_regions(ds)
    except Exception:  # noqa: BLE001 - unreadable regions are the cleaning's business, not evidence
        regions = []
    return region_scope_reason(regions)


def region_scope_reason(regions: list[UltrasoundRegion]) -> str | None:
    """Why the ultrasound regions say this is not a 2D B-mode image (Doppler, M-mode, traces), or None."""
    for r in regions:
        if r.spatial_format in SPATIAL_FORMATS:
            return f"ultrasound region of {SPATIAL_FORMATS[r.spatial_format]} format (not 2D B-mode)"
        if r.data_type in DATA_TYPES:
            return f"ultrasound region of type {DATA_TYPES[r.data_type]} (not 2D B-mode)"
    return None
