"""Make a source header fit to be copied into our objects, without touching the original file.

Scanners and old archives send headers that a strict writer refuses: ACR-NEMA times ("15:18:59"),
dates with dots ("1994.11.05"), no Modality, no Patient ID. highdicom copies these attributes into
every SC, SR, PR and SEG, so one such header used to cost the whole study its results. Here the
in-memory header is repaired where the intent is clear (separators dropped), emptied where a Type 2
attribute is unusable, and given the Type 2 patient/study attributes it lacks. What cannot be
repaired (no Study or SOP Instance UID) raises, so the caller fails that one instance with a reason.
"""

from __future__ import annotations

import copy
import re

from highdicom.enum import SpecificCharacterSetValues
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import DA, DT, TM

# Type 2 attributes of the Patient, General Study and General Series modules our objects copy.
_TYPE2_EMPTY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
_REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
# Ultrasound storage classes (current and retired): Modality US when the header has none.
_ULTRASOUND_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.6.1",
    "1.2.840.10008.5.1.4.1.1.3.1",
    "1.2.840.10008.5.1.4.1.1.6",
    "1.2.840.10008.5.1.4.1.1.3",
}
_PARSERS = {"DA": DA, "TM": TM, "DT": DT}
_CHARSETS = frozenset(v.value for v in SpecificCharacterSetValues)  # the terms highdicom writes


# Retired classes old scanners still send, read with the IOD of their successor.
_RETIRED_SUCCESSORS = {
    "1.2.840.10008.5.1.4.1.1.6": "1.2.840.10008.5.1.4.1.1.6.1",
    "1.2.840.10008.5.1.4.1.1.3": "1.2.840.10008.5.1.4.1.1.3.1",
}


def teach_highdicom_retired_classes() -> None:
    """Let highdicom look up the retired ultrasound classes (it raises KeyError "No IOD found").

    highdicom only asks its table whether a referenced class is multi-frame; the retired US
    classes have the modules of their successors, so they are added under the successors' IODs.
    Idempotent; the table is highdicom's cached dict.
    """
    from highdicom._standard_utils import get_sop_class_iod_map

    table = get_sop_class_iod_map()
    for retired, current in _RETIRED_SUCCESSORS.items():
        if retired not in table and current in table:
            table[retired] = table[current]


class SourceHeaderError(ValueError):
    """The header lacks something no result object can be built without."""


def make_conformant(ds: Dataset) -> list[str]:
    """Repair ``ds`` in place (an in-memory copy; the received file is never rewritten).

    Returns a note per change, for the job detail.
    """
    missing = [k for k in _REQUIRED_UIDS if not str(ds.get(k, "") or "").strip()]
    if missing:
        raise SourceHeaderError(f"source header has no {', '.join(missing)}")
    teach_highdicom_retired_classes()
    notes: list[str] = []
    for element in list(ds):
        if element.VR not in _PARSERS or element.value in (None, ""):
            continue
        fixed = _repair(element.VR, element.value)
        if fixed is None:
            notes.append(f"{element.keyword or element.tag}: unusable {element.VR} {element.value!r} emptied")
            if element.keyword in _TYPE2_EMPTY:
                element.value = ""
            else:
                del ds[element.tag]
        elif fixed != element.value:
            notes.append(f"{element.keyword or element.tag}: {element.value!r} read as {fixed!r}")
            element.value = fixed
    for keyword in _TYPE2_EMPTY:
        if keyword not in ds:
            setattr(ds, keyword, "")
            notes.append(f"{keyword} missing (empty)")
    notes.extend(_enumerated(ds))
    if not str(ds.get("Modality", "") or "").strip():
        ds.Modality = "US" if str(ds.SOPClassUID) in _ULTRASOUND_CLASSES else "OT"
        notes.append(f"Modality missing (taken as {ds.Modality})")
    return notes


def _enumerated(ds: Dataset) -> list[str]:
    """Patient Sex and Specific Character Set outside their defined terms (highdicom refuses both)."""
    notes = []
    sex = str(ds.get("PatientSex", "") or "").strip().upper()
    if sex not in ("", "M", "F", "O"):
        fixed = {"MALE": "M", "FEMALE": "F"}.get(sex, "")
        notes.append(f"PatientSex {sex!r} read as {fixed!r}")
        ds.PatientSex = fixed
    charsets = ds.get("SpecificCharacterSet")
    if charsets:
        values = [charsets] if isinstance(charsets, str) else list(charsets)
        if len(values) > 1 and not str(values[0]).strip():
            # an empty first value is the default repertoire (PS3.3 C.12.1.1.2); with code extensions
            # its defined term is ISO 2022 IR 6, which highdicom accepts where it refuses the empty one
            values[0] = "ISO 2022 IR 6"
            ds.SpecificCharacterSet = values
            notes.append("SpecificCharacterSet: empty first value written as ISO 2022 IR 6")
        if any(str(v).strip() and str(v).strip() not in _CHARSETS for v in values):
            # pydicom already decoded the text (falling back where it had to); ours are written in UTF-8
            notes.append(f"SpecificCharacterSet {values!r} unknown, written as ISO_IR 192")
            ds.SpecificCharacterSet = "ISO_IR 192"
    return notes


def _repair(vr: str, value: object) -> str | list[str] | None:
    """The value in DICOM form, or None when it cannot be read as a date/time at all."""
    if isinstance(value, MultiValue | list | tuple):
        parts = [_repair_one(vr, str(v)) for v in value]
        return None if any(p is None for p in parts) else [p for p in parts if p is not None]
    return _repair_one(vr, str(value))


def _repair_one(vr: str, text: str) -> str | None:
    text = text.strip()
    if vr == "TM":
        text = text.replace(":", "")
    elif vr == "DA" and re.fullmatch(r"\d{4}[.\-/]\d{2}[.\-/]\d{2}", text):
        text = re.sub(r"[.\-/]", "", text)
    elif vr == "DT":
        text = re.sub(r"^(\d{4})[.\-/](\d{2})[.\-/](\d{2})", r"\1\2\3", text).replace(":", "")
    try:
        _PARSERS[vr](text)
    except (ValueError, TypeError, OverflowError):
        return None
    return text


def with_current_class(source: Dataset) -> Dataset | None:
    """A copy of a retired-class header under its successor class, or None when it is not retired.

    Some highdicom SR checks know only current image storage classes; the report is built from the
    copy and `restore_classes` then puts the true class back into every reference.
    """
    current = _RETIRED_SUCCESSORS.get(str(getattr(source, "SOPClassUID", "")))
    if current is None:
        return None
    stand_in = copy.deepcopy(source)  # a header (pixel data dropped before the SR): cheap
    stand_in.SOPClassUID = current
    return stand_in


def restore_classes(obj: Dataset, classes: dict[str, str]) -> int:
    """Set ReferencedSOPClassUID back to the true class of each instance in `classes`; returns the count."""
    count = 0
    for element in obj.iterall():
        if element.VR != "SQ":
            continue
        for item in element.value:
            uid = str(item.get("ReferencedSOPInstanceUID", ""))
            if uid in classes and "ReferencedSOPClassUID" in item:
                item.ReferencedSOPClassUID = classes[uid]
                count += 1
    return count
