"""What the Storage SCP accepts: ultrasound and secondary-capture images, in the common transfer syntaxes.

Anything else (CT, MR, SR, ...) is rejected at the presentation-context level, so a PACS learns at
association time that sonopacs does not take it, instead of sending it and getting an error per image.
The retired ultrasound classes are not in pynetdicom's storage registry: without
``register_storage_classes`` it accepts their presentation context and then aborts the C-STORE
("No supported service class"), so every class we list is registered there first.
"""

from __future__ import annotations

from pydicom.uid import (
    JPEG2000,
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import sop_class as _pynetdicom_sop_class
from pynetdicom.service_class import StorageServiceClass

VERIFICATION = UID("1.2.840.10008.1.1")

# SOP Class UID -> name (PS3.4 Annex B.5, including the retired ultrasound classes still sent by old scanners).
STORAGE_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound Image Storage",
    "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame Image Storage",
    "1.2.840.10008.5.1.4.1.1.6": "Ultrasound Image Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.3": "Ultrasound Multi-frame Image Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.1": "Multi-frame Single Bit Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image Storage",
}

UNCOMPRESSED_TRANSFER_SYNTAXES: list[UID] = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
]

# Compressed syntaxes are stored as received; decoding (pylibjpeg) happens later, in the pipeline.
COMPRESSED_TRANSFER_SYNTAXES: list[UID] = [
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]

STORAGE_TRANSFER_SYNTAXES: list[UID] = UNCOMPRESSED_TRANSFER_SYNTAXES + COMPRESSED_TRANSFER_SYNTAXES


# Keywords for the classes pynetdicom does not know (PS3.6 names, retired ones included).
_RETIRED_KEYWORDS = {
    "1.2.840.10008.5.1.4.1.1.6": "UltrasoundImageStorageRetired",
    "1.2.840.10008.5.1.4.1.1.3": "UltrasoundMultiFrameImageStorageRetired",
}


def register_storage_classes() -> None:
    """Make pynetdicom route C-STOREs of every class we accept to its Storage service (idempotent)."""
    for uid in STORAGE_SOP_CLASSES:
        if _pynetdicom_sop_class.uid_to_service_class(uid) is StorageServiceClass:
            continue
        keyword = _RETIRED_KEYWORDS.get(uid) or "Sonopacs" + uid.replace(".", "_")
        _pynetdicom_sop_class.register_uid(uid, keyword, StorageServiceClass)


def is_accepted_storage_class(uid: str) -> bool:
    return uid in STORAGE_SOP_CLASSES


def describe(uid: str, with_uid: bool = True) -> str:
    """A readable name for audit rows and logs: ours, else pydicom's dictionary, else the bare UID."""
    if uid in STORAGE_SOP_CLASSES:
        return STORAGE_SOP_CLASSES[uid]
    name = UID(uid).name
    if not name or name == uid:
        return uid
    return f"{name} ({uid})" if with_uid else name
