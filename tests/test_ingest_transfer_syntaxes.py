"""Compressed transfer syntaxes are accepted and stored exactly as received (never decoded); a
truncated encapsulated Pixel Data is caught from its fragment structure alone."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import UID, JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid

from sonopacs.config import Settings
from sonopacs.dicom_node import status
from sonopacs.dicom_node.sop_classes import STORAGE_TRANSFER_SYNTAXES
from tests.support.dicom_factory import synthetic_bmode, us_dataset
from tests.support.listener import audit_rows, dataset_body, raw_c_store, running_listener


def _compressed(folder: Path, ts: UID, study_uid: str) -> Path:
    ds = us_dataset(synthetic_bmode(96, 128), study_uid=study_uid, series_uid=generate_uid())
    ds.compress(ts)
    path = folder / f"{ts.name.replace(' ', '_')}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_compressed_instances_are_stored_as_received(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings()
    study_uid = generate_uid()
    syntaxes = [RLELossless, JPEG2000Lossless, JPEGLSLossless]
    assert all(ts in STORAGE_TRANSFER_SYNTAXES for ts in syntaxes)
    try:
        files = [_compressed(tmp_path, ts, study_uid) for ts in syntaxes]
    except (RuntimeError, NotImplementedError) as exc:  # an encoder plugin missing on this machine
        pytest.skip(f"cannot encode test data: {exc}")
    broken = tmp_path / "truncated_fragments.dcm"
    data = files[0].read_bytes()
    broken.write_bytes(data[: len(data) - 100])  # the sequence delimiter and the end of the fragment are gone

    with running_listener(settings) as listener:
        results = [raw_c_store(listener.port, f) for f in files]
        truncated = raw_c_store(listener.port, broken)

    assert [r.status for r in results] == [status.SUCCESS] * len(files)
    assert truncated.status == status.CANNOT_UNDERSTAND_UNPARSEABLE
    stored = {r.sop_instance_uid: r for r in audit_rows(settings, "instance_received")}
    assert len(stored) == len(files)
    for f, ts in zip(files, syntaxes, strict=True):
        uid = str(dcmread(f, stop_before_pixels=True).SOPInstanceUID)
        assert f"transfer_syntax={ts}" in (stored[uid].detail or "")
    for path in Path(settings.storage.root).rglob("*.dcm"):
        original = next(f for f in files if dcmread(f, stop_before_pixels=True).SOPInstanceUID == path.stem)
        assert dataset_body(path.read_bytes()) == dataset_body(original.read_bytes())
