"""Read just enough of a received instance to file it: UIDs and patient/study fields, never the pixels.

The bytes are parsed with ``stop_before_pixels``; the Pixel Data element is then only located and its
extent checked against the bytes received, which is how a truncated transfer is caught without decoding.
What cannot be decoded later is refused here, cheaply: native pixel data whose length does not match
Rows x Columns x samples x bits x frames, and pixel counts over the limits (``limits``), including the
frame size a compressed codestream declares, which is what a decoder would allocate.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import UID

from sonopacs.config.logs import remember_phi
from sonopacs.dicom_node import status
from sonopacs.dicom_node.limits import PixelLimitError, PixelLimits
from sonopacs.dicom_node.pixels import SUPPORTED_PHOTOMETRIC

_PIXEL_TAGS = {(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)}
_ITEM = (0xFFFE, 0xE000)
_SEQUENCE_DELIMITER = (0xFFFE, 0xE0DD)
_UNDEFINED = 0xFFFFFFFF
_VALID_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_PIXEL_DATA = (0x7FE0, 0x0010)
_CODESTREAM_PEEK = 1 << 16  # bytes of each fragment handed to the frame-header parser


class HeaderError(ValueError):
    """The instance cannot be accepted; carries the DICOM status to answer with."""

    def __init__(self, code: int, reason: str, sop_instance_uid: str | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.sop_instance_uid = sop_instance_uid


@dataclass(frozen=True)
class InstanceHeader:
    """The fields the database keeps for an instance, its series and its study."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    patient_id: str | None
    patient_name: str | None
    accession_number: str | None
    study_date: str | None
    study_description: str | None
    modality: str | None
    series_number: int | None
    series_description: str | None
    manufacturer: str | None
    instance_number: int | None
    number_of_frames: int | None
    pixel_samples: int


@dataclass(frozen=True)
class _PixelExtent:
    """Where the pixel data lies in the received bytes: one native value, or fragments."""

    tag: tuple[int, int]
    length: int | None  # native: the defined length; encapsulated: None
    fragments: list[tuple[int, int]]  # encapsulated: (start, length) of each fragment after the offset table


def parse_header(data: bytes, limits: PixelLimits | int) -> InstanceHeader:
    """Parse a Part 10 byte string (preamble, file meta, data set); raise HeaderError when unusable.

    ``limits``: the pixel limits (an int is taken as the total-samples cap, per-frame default).
    """
    if isinstance(limits, int):
        limits = PixelLimits(max_total_samples=limits)
    fp = BytesIO(data)
    try:
        ds = dcmread(fp, stop_before_pixels=True)
        pixel_offset = fp.tell()
        transfer_syntax = UID(str(ds.file_meta.TransferSyntaxUID))
        implicit, little = transfer_syntax.is_implicit_VR, transfer_syntax.is_little_endian
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, AttributeError, struct.error) as exc:
        raise HeaderError(status.CANNOT_UNDERSTAND_UNPARSEABLE, f"unparseable data set: {exc}") from exc
    except Exception as exc:  # pydicom raises a variety of errors on garbage input
        raise HeaderError(status.CANNOT_UNDERSTAND_UNPARSEABLE, f"unparseable data set: {exc!r}") from exc

    # Before anything can fail and be logged: these values must never reach a log line.
    remember_phi(_text(ds, "PatientName", 324), _text(ds, "PatientID", 64), _text(ds, "AccessionNumber", 64))
    sop_instance_uid = _uid(ds, "SOPInstanceUID")
    for keyword in ("SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID"):
        _uid(ds, keyword, sop_instance_uid)

    extent = _check_pixel_data(data, pixel_offset, implicit, little, sop_instance_uid)
    rows, cols = _int(ds, "Rows") or 0, _int(ds, "Columns") or 0
    frames = _int(ds, "NumberOfFrames")
    samples = _int(ds, "SamplesPerPixel") or 1
    pixel_samples = rows * cols * max(frames or 1, 1) * max(samples, 1)
    if rows <= 0 or cols <= 0:
        raise HeaderError(
            status.CANNOT_UNDERSTAND_MISSING_ATTRIBUTE, "Rows/Columns missing or zero", sop_instance_uid
        )
    try:
        limits.check(rows, cols, samples, frames or 1)
        if extent.length is None:
            peeks = (data[start : start + min(length, _CODESTREAM_PEEK)] for start, length in extent.fragments)
            for fragment in peeks:
                limits.check_codestream(fragment, rows, cols)
    except PixelLimitError as exc:
        raise HeaderError(status.CANNOT_UNDERSTAND_TOO_LARGE, str(exc), sop_instance_uid) from exc
    _check_pixel_attributes(ds, sop_instance_uid)
    if extent.length is not None and extent.tag == _PIXEL_DATA:
        _check_native_length(ds, extent.length, sop_instance_uid)

    return InstanceHeader(
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=sop_instance_uid,
        study_instance_uid=str(ds.StudyInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        transfer_syntax_uid=str(transfer_syntax),
        patient_id=_text(ds, "PatientID", 64),
        patient_name=_text(ds, "PatientName", 324),
        accession_number=_text(ds, "AccessionNumber", 64),
        study_date=_text(ds, "StudyDate", 8),
        study_description=_text(ds, "StudyDescription", 128),
        modality=_text(ds, "Modality", 16),
        series_number=_int(ds, "SeriesNumber"),
        series_description=_text(ds, "SeriesDescription", 128),
        manufacturer=_text(ds, "Manufacturer", 64),
        instance_number=_int(ds, "InstanceNumber"),
        number_of_frames=frames,
        pixel_samples=pixel_samples,
    )


def _uid(ds: Dataset, keyword: str, sop_instance_uid: str | None = None) -> str:
    try:
        value = str(ds.get(keyword) or "").strip("\x00 ")
    except Exception:  # noqa: BLE001 - an undecodable value is as good as missing
        value = ""
    if not value:
        raise HeaderError(status.CANNOT_UNDERSTAND_MISSING_ATTRIBUTE, f"{keyword} missing", sop_instance_uid)
    if len(value) > 64 or not _VALID_UID.match(value):
        raise HeaderError(
            status.CANNOT_UNDERSTAND_MISSING_ATTRIBUTE, f"{keyword} is not a valid UID", sop_instance_uid
        )
    return value


def _text(ds: Dataset, keyword: str, limit: int) -> str | None:
    """A header string cleaned for the database: no NULs, clipped to the column width."""
    try:
        value: Any = ds.get(keyword)
    except Exception:  # noqa: BLE001
        return None
    if value is None:
        return None
    text = str(value).replace("\x00", "").strip()
    return text[:limit] or None


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value is not None and str(value).strip() != "" else None
    except Exception:  # noqa: BLE001 - a malformed IS/US value is recorded as unknown
        return None


def _check_pixel_attributes(ds: Dataset, sop_uid: str) -> None:
    """The image pixel attributes any decoder needs, within what DICOM (and pydicom) allow."""
    allocated, stored = _int(ds, "BitsAllocated"), _int(ds, "BitsStored")
    samples = _int(ds, "SamplesPerPixel")
    problems = []
    if samples is not None and samples not in (1, 3):
        problems.append(f"SamplesPerPixel {samples} is not 1 or 3")
    if allocated is not None and allocated not in (1, 8, 16, 32, 64):
        problems.append(f"BitsAllocated {allocated} is not 1, 8, 16, 32 or 64")
    if stored is not None and allocated is not None and not 1 <= stored <= allocated:
        problems.append(f"BitsStored {stored} is not within 1..BitsAllocated")
    if "NumberOfFrames" in ds and not ((frames := _int(ds, "NumberOfFrames")) and frames > 0):
        problems.append(f"NumberOfFrames {str(ds.get('NumberOfFrames'))[:16]!r} is not a positive integer")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in SUPPORTED_PHOTOMETRIC:  # the worker could not decode it: never a Success
        problems.append(f"PhotometricInterpretation {photometric[:16] or 'missing'!r} is not one we can decode")
    wanted = 3 if photometric.startswith(("RGB", "YBR")) else 1
    if photometric in SUPPORTED_PHOTOMETRIC and samples is not None and samples != wanted:
        problems.append(f"{photometric} needs SamplesPerPixel {wanted}, not {samples}")
    if photometric == "PALETTE COLOR" and not all(
        f"{c}PaletteColorLookupTableDescriptor" in ds
        and (f"{c}PaletteColorLookupTableData" in ds or f"Segmented{c}PaletteColorLookupTableData" in ds)
        for c in ("Red", "Green", "Blue")
    ):
        problems.append("PALETTE COLOR without its lookup tables")
    if problems:
        raise HeaderError(status.CANNOT_UNDERSTAND_MISSING_ATTRIBUTE, "; ".join(problems), sop_uid)


def _check_native_length(ds: Dataset, length: int, sop_uid: str) -> None:
    """Native pixel data must hold exactly what the image attributes describe (plus one pad byte)."""
    for keyword in ("BitsAllocated", "SamplesPerPixel", "PhotometricInterpretation"):
        if keyword not in ds:
            raise HeaderError(status.CANNOT_UNDERSTAND_MISSING_ATTRIBUTE, f"{keyword} missing", sop_uid)
    try:
        expected = get_expected_length(ds, unit="bytes")
    except Exception as exc:  # noqa: BLE001 - malformed image attributes of any kind
        raise HeaderError(
            status.CANNOT_UNDERSTAND_MISSING_ATTRIBUTE, f"image attributes unusable: {exc}", sop_uid
        ) from exc
    if not isinstance(expected, int):  # e.g. NumberOfFrames sent with a text VR: "2" * rows * ...
        raise HeaderError(status.CANNOT_UNDERSTAND_MISSING_ATTRIBUTE, "image attributes of the wrong VR", sop_uid)
    # As pydicom's decoder judges it: short data cannot be decoded; a few trailing bytes are padding
    # it drops (PS3.5 8.1.1), accepted; a whole frame or more too much means the attributes are wrong
    # (frames, samples, bits) and the image would be decoded as something it is not.
    frames = max(_int(ds, "NumberOfFrames") or 1, 1)
    frame_bytes = max(expected // frames, 1)
    too_short = length < expected
    too_long = length - expected >= frame_bytes
    if str(ds.get("PhotometricInterpretation", "")).strip() == "YBR_FULL_422":
        too_long = too_long or length >= expected // 2 * 3  # full-size YBR: pydicom refuses it too
    if too_short or too_long:
        raise HeaderError(
            status.CANNOT_UNDERSTAND_PIXEL_LENGTH,
            f"Pixel Data is {length} bytes, the image attributes need {expected}",
            sop_uid,
        )


def _check_pixel_data(data: bytes, offset: int, implicit: bool, little: bool, sop_uid: str) -> _PixelExtent:
    """Pixel Data must be present and complete: a defined length must fit, fragments must be terminated."""
    end = len(data)
    if offset + 8 > end:
        raise HeaderError(
            status.CANNOT_UNDERSTAND_NO_PIXEL_DATA, "no Pixel Data (or data set truncated)", sop_uid
        )
    order = "<" if little else ">"
    tag: tuple[int, int] = struct.unpack_from(f"{order}HH", data, offset)
    if tag not in _PIXEL_TAGS:
        raise HeaderError(
            status.CANNOT_UNDERSTAND_UNPARSEABLE, f"unexpected element {tag} before Pixel Data", sop_uid
        )
    if implicit:
        (length,) = struct.unpack_from(f"{order}I", data, offset + 4)
        value_start = offset + 8
    else:
        if offset + 12 > end:
            raise HeaderError(status.CANNOT_UNDERSTAND_UNPARSEABLE, "Pixel Data header truncated", sop_uid)
        (length,) = struct.unpack_from(f"{order}I", data, offset + 8)
        value_start = offset + 12
    if length != _UNDEFINED:
        if length == 0:
            raise HeaderError(status.CANNOT_UNDERSTAND_NO_PIXEL_DATA, "Pixel Data is empty", sop_uid)
        if value_start + length > end:
            raise HeaderError(
                status.CANNOT_UNDERSTAND_UNPARSEABLE,
                f"Pixel Data truncated: {end - value_start} of {length} bytes",
                sop_uid,
            )
        return _PixelExtent(tag, length, [])
    # Encapsulated: items (offset table, fragments) up to a sequence delimiter.
    pos, fragments = value_start, list[tuple[int, int]]()
    first = True
    while pos + 8 <= end:
        item_tag = struct.unpack_from(f"{order}HH", data, pos)
        (item_len,) = struct.unpack_from(f"{order}I", data, pos + 4)
        if item_tag == _SEQUENCE_DELIMITER:
            if not fragments:
                raise HeaderError(status.CANNOT_UNDERSTAND_NO_PIXEL_DATA, "no compressed fragments", sop_uid)
            return _PixelExtent(tag, None, fragments)
        if item_tag != _ITEM or item_len == _UNDEFINED:
            raise HeaderError(
                status.CANNOT_UNDERSTAND_UNPARSEABLE, "malformed encapsulated Pixel Data", sop_uid
            )
        if not first:  # the first item is the Basic Offset Table
            fragments.append((pos + 8, item_len))
        first = False
        pos += 8 + item_len
    raise HeaderError(status.CANNOT_UNDERSTAND_UNPARSEABLE, "encapsulated Pixel Data truncated", sop_uid)
