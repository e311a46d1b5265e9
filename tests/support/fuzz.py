"""Seeded malformed data sets, written as a faulty sender would send them (file meta kept valid).

Every case starts from a small valid ultrasound image and breaks one or two things the way real
senders and attackers do: truncation, flipped bytes, wrong VRs, corrupt tags, bad UIDs, odd
photometric and pixel attributes, compressed transfer syntaxes with garbage codestreams, sequences.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from tests.support.dicom_factory import us_dataset

ROOT = "1.2.826.0.1.3680043.8.498.77."


@dataclass
class FuzzCase:
    name: str
    path: Path
    source: Path  # the valid image the case was made from


def _encode(ds: Dataset, transfer_syntax: str) -> bytes:
    """File meta (valid, naming the syntax) + the data set as it is, without any validation."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    meta.TransferSyntaxUID = UID(transfer_syntax)
    head = DicomBytesIO()
    head.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)
    body = DicomBytesIO()
    body.is_little_endian = True
    body.is_implicit_VR = transfer_syntax == ImplicitVRLittleEndian
    write_dataset(body, ds)
    return bytes(head.getvalue()) + bytes(body.getvalue())


def _valid(rng: np.random.Generator, i: int, seed: int) -> Dataset:
    rows, cols = int(rng.integers(24, 80)), int(rng.integers(24, 80))
    rgb = bool(rng.random() < 0.3)
    shape = (rows, cols, 3) if rgb else (rows, cols)
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    ds = us_dataset(pixels, study_uid=f"{ROOT}{seed}.1", series_uid=f"{ROOT}{seed}.2", instance_number=i)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(f"{ROOT}{seed}.3.{i}")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20261204"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    return ds


def _body_offset(data: bytes) -> int:
    group_length = int.from_bytes(data[140:144], "little")  # (0002,0000) UL value
    return 144 + group_length


Mutation = Callable[[Dataset, np.random.Generator], tuple[Dataset, str] | bytes | None]


def _byte_level(kind: str) -> Callable[[bytes, np.random.Generator], bytes]:
    def truncate(data: bytes, rng: np.random.Generator) -> bytes:
        start = _body_offset(data)
        keep = start + int((len(data) - start) * rng.uniform(0.05, 0.999))
        return data[:keep]

    def flip(data: bytes, rng: np.random.Generator) -> bytes:
        start = _body_offset(data)
        out = bytearray(data)
        for pos in rng.integers(start, len(out), int(rng.integers(1, 12))):
            out[int(pos)] ^= int(rng.integers(1, 256))
        return bytes(out)

    def corrupt_tag(data: bytes, rng: np.random.Generator) -> bytes:
        start = _body_offset(data)
        out = bytearray(data)
        pos = start + 8 * int(rng.integers(0, 12))  # somewhere near the start of an element
        out[pos:pos + 4] = rng.integers(0, 256, 4, dtype=np.uint8).tobytes()
        return bytes(out)

    return {"truncate": truncate, "flip": flip, "corrupt_tag": corrupt_tag}[kind]


def _attribute_mutations() -> dict[str, Callable[[Dataset, np.random.Generator], tuple[Dataset, str]]]:
    def photometric(ds: Dataset, rng: np.random.Generator) -> tuple[Dataset, str]:
        ds.PhotometricInterpretation = str(rng.choice(["RGB", "YBR_FULL", "PALETTE COLOR", "MONOCHROME1", "XYZ", ""]))
        return ds, ExplicitVRLittleEndian

    def samples(ds: Dataset, rng: np.random.Generator) -> tuple[Dataset, str]:
        ds.SamplesPerPixel = int(rng.choice([0, 2, 3, 4]))
        return ds, ExplicitVRLittleEndian

    def bits(ds: Dataset, rng: np.random.Generator) -> tuple[Dataset, str]:
        ds.BitsAllocated = int(rng.choice([0, 1, 12, 16, 32]))
        ds.BitsStored = int(rng.choice([0, 7, 8, 16, 40]))
        return ds, ExplicitVRLittleEndian

    def geometry(ds: Dataset, rng: np.random.Generator) -> tuple[Dataset, str]:
        ds.Rows = int(rng.choice([0, 1, ds.Rows + 1, 65535]))
        ds.Columns = int(rng.choice([0, ds.Columns - 1, 65535]))
        return ds, ExplicitVRLittleEndian

    def frames(ds: Dataset, rng: np.random.Generator) -> tuple[Dataset, str]:
        value = str(rng.choice(["0", "2", "abc", "-1", "100000"]))
        ds[0x00280008] = DataElement(0x00280008, "LO", value)  # LO: pydicom's IS refuses "abc" even here
        return ds, ExplicitVRLittleEndian

    def bad_uid(ds: Dataset, rng: np.random.Generator) -> tuple[Dataset, str]:
        keyword = str(rng.choice(["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"]))
        setattr(ds, keyword, str(rng.choice(["1.2.abc", "", "1." * 40 + "1", "../../etc/passwd", "1.2.3\\4.5"])))
        return ds, ExplicitVRLittleEndian

    def wrong_vr(ds: Dataset, rng: np.random.Generator) -> tuple[Dataset, str]:
        keyword = str(rng.choice(["Rows", "Columns", "PatientName", "StudyDate", "InstanceNumber"]))
        elem = ds[keyword]
        elem.VR = str(rng.choice(["OB", "SQ", "FD", "UN", "AT"]))
        if elem.VR == "SQ":
            elem.value = Sequence([Dataset()])
        elif elem.VR in ("OB", "UN"):
            elem.value = rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8).tobytes()
        elif elem.VR == "FD":
            elem.value = float(rng.uniform(-1e9, 1e9))
        else:
            elem.value = 0x00100010
        return ds, ExplicitVRLittleEndian

    def sequences(ds: Dataset, rng: np.random.Generator) -> tuple[Dataset, str]:
        inner = Dataset()
        inner.PatientName = "NESTED^" + "X" * int(rng.integers(1, 64))
        deep = inner
        for _ in range(int(rng.integers(1, 30))):
            nxt = Dataset()
            deep.ReferencedImageSequence = Sequence([nxt])
            deep = nxt
        ds.SequenceOfUltrasoundRegions = Sequence([inner, Dataset()])
        return ds, ExplicitVRLittleEndian

    def garbage_codestream(ds: Dataset, rng: np.random.Generator) -> tuple[Dataset, str]:
        from pydicom.encaps import encapsulate

        syntax = str(rng.choice([JPEGBaseline8Bit, JPEGLSLossless, RLELossless]))
        ds.PixelData = encapsulate([rng.integers(0, 256, int(rng.integers(16, 400)), dtype=np.uint8).tobytes()])
        ds["PixelData"].VR = "OB"
        return ds, syntax

    def implicit_odd(ds: Dataset, rng: np.random.Generator) -> tuple[Dataset, str]:
        ds.PixelData = ds.PixelData[: int(len(ds.PixelData) * rng.uniform(0.1, 0.99))]
        return ds, ImplicitVRLittleEndian

    return {f.__name__: f for f in (photometric, samples, bits, geometry, frames, bad_uid, wrong_vr, sequences,
                                    garbage_codestream, implicit_odd)}


def fuzz_cases(folder: Path, seed: int, n: int) -> list[FuzzCase]:
    """`n` cases from one seed: the same bytes every time."""
    from pydicom import config

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    attrs = _attribute_mutations()
    kinds = [*attrs, "truncate", "flip", "corrupt_tag"]
    cases: list[FuzzCase] = []
    previous = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE  # a faulty sender does not validate
    try:
        for i in range(n):
            ds = _valid(rng, i, seed)
            source = folder / f"{i:04d}_source.dcm"
            source.write_bytes(_encode(ds, ExplicitVRLittleEndian))
            kind = kinds[int(rng.integers(0, len(kinds)))]
            if kind in attrs:
                broken, syntax = attrs[kind](ds, rng)
                data = _encode(broken, syntax)
            else:
                data = _byte_level(kind)(source.read_bytes(), rng)
            path = folder / f"{i:04d}_{kind}.dcm"
            path.write_bytes(data)
            cases.append(FuzzCase(f"{i:04d}_{kind}", path, source))
    finally:
        config.settings.writing_validation_mode = previous
    return cases
