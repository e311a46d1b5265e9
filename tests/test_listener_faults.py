"""Bad input and failing resources: each gets the right DICOM status and an audit row, nothing
accepted is lost, and the listener keeps serving afterwards."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from sqlalchemy import create_engine, func, select, text

from sonopacs.config import Settings
from sonopacs.db.migrate import upgrade
from sonopacs.db.models import Instance
from sonopacs.db.session import Database
from sonopacs.dicom_node import status
from tests.conftest import PG_ADMIN_URL, requires_dcmtk
from tests.support.dicom_factory import us_dataset, write_ct_instance, write_us_study
from tests.support.listener import audit_rows, dcmtk, raw_c_store, running_listener


def _instances(settings: Settings) -> dict[str, Instance]:
    db = Database(settings.database_url)
    try:
        with db.session() as session:
            return {i.sop_instance_uid: i for i in session.scalars(select(Instance))}
    finally:
        db.dispose()


def _small_image(path: Path, **changes: object) -> Path:
    """A 16x16 US image whose data set is edited after its file meta was fixed, as a faulty sender would."""
    ds = us_dataset(np.full((16, 16), 7, np.uint8), study_uid=generate_uid(), series_uid=generate_uid())
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    head = DicomBytesIO()
    head.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(head.getvalue() + body.getvalue())
    return path


def _refusals(settings: Settings) -> list[str]:
    return [r.detail or "" for r in audit_rows(settings, "instance_refused")]


@pytest.fixture
def study(tmp_path: Path) -> list[Path]:
    return write_us_study(tmp_path / "study", n_images=2, rows=120, cols=160)


def test_malformed_data_sets_are_refused_with_reasons(
    make_settings: Callable[..., Settings], tmp_path: Path, study: list[Path]
) -> None:
    settings = make_settings(dicom={"max_pixel_samples": 100_000})
    whole = study[0].read_bytes()
    cases: dict[str, tuple[Path, int]] = {}

    def case(name: str, data: bytes, expected: int) -> None:
        path = tmp_path / "bad" / f"{name}.dcm"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        cases[name] = (path, expected)

    meta_end = len(whole) - len(_body(study[0]))
    case("truncated_pixels", whole[:-5000], status.CANNOT_UNDERSTAND_UNPARSEABLE)
    case("truncated_header", whole[: meta_end + 300], status.CANNOT_UNDERSTAND_MISSING_ATTRIBUTE)
    case("not_dicom", whole[:meta_end] + os.urandom(4000), status.CANNOT_UNDERSTAND_MISSING_ATTRIBUTE)
    case(
        "no_pixels",
        _small_image(tmp_path / "np.dcm", PixelData=None).read_bytes(),
        status.CANNOT_UNDERSTAND_NO_PIXEL_DATA,
    )
    case(
        "no_sop_uid",
        _small_image(tmp_path / "nu.dcm", SOPInstanceUID=None).read_bytes(),
        status.CANNOT_UNDERSTAND_MISSING_ATTRIBUTE,
    )
    huge = us_dataset(np.zeros((8, 8), np.uint8), study_uid=generate_uid(), series_uid=generate_uid())
    huge.Rows, huge.Columns, huge.NumberOfFrames = 4096, 4096, 100  # claims 1.6 G samples in 64 bytes
    huge.save_as(tmp_path / "huge.dcm", enforce_file_format=True)
    case("huge", (tmp_path / "huge.dcm").read_bytes(), status.CANNOT_UNDERSTAND_TOO_LARGE)
    ct_in_us = _small_image(tmp_path / "ctus.dcm", SOPClassUID=CTImageStorage)  # meta (context) says US
    case("ct_on_us_context", ct_in_us.read_bytes(), status.DATASET_DOES_NOT_MATCH_SOP_CLASS)

    with running_listener(settings) as listener:
        results = {name: raw_c_store(listener.port, path) for name, (path, _) in cases.items()}
        good = raw_c_store(listener.port, study[1])

    for name, (_, expected) in cases.items():
        assert results[name].status == expected, (name, results[name])
        assert results[name].comment, name  # the reason travels in Error Comment
    assert good.status == status.SUCCESS
    assert len(_instances(settings)) == 1
    refusals = _refusals(settings)
    assert len(refusals) == len(cases)
    assert any("Pixel Data truncated" in r for r in refusals)
    assert any("over limit 100000" in r for r in refusals)
    assert not list(Path(settings.storage.root).rglob("*.tmp"))


def _body(path: Path) -> bytes:
    from tests.support.listener import dataset_body

    return dataset_body(path.read_bytes())


@requires_dcmtk
def test_ct_is_refused_at_association_and_truncated_file_never_stored(
    make_settings: Callable[..., Settings], tmp_path: Path, study: list[Path]
) -> None:
    settings = make_settings()
    ct = write_ct_instance(tmp_path / "ct.dcm")
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(study[0].read_bytes()[:-3000])
    with running_listener(settings) as listener:
        port = str(listener.port)
        sent_ct = subprocess.run(
            [dcmtk("storescu"), "-aec", "SONOPACS", "127.0.0.1", port, str(ct)],
            capture_output=True,
            text=True,
        )
        sent_truncated = subprocess.run(
            [dcmtk("storescu"), "-nh", "-aec", "SONOPACS", "127.0.0.1", port, str(truncated)],
            capture_output=True,
            text=True,
        )
        sent_good = subprocess.run(
            [dcmtk("storescu"), "-aec", "SONOPACS", "127.0.0.1", port, str(study[1])],
            capture_output=True,
            text=True,
        )
    assert sent_ct.returncode != 0 and "No presentation context" in sent_ct.stderr
    rejected = audit_rows(settings, "presentation_context_rejected")
    assert any("CT Image Storage" in (r.detail or "") for r in rejected)
    assert sent_good.returncode == 0, sent_good.stderr
    # storescu either refuses to load the truncated file or sends it and gets a failure status:
    # in both cases it is not stored, and if it was sent there is an audit row saying why.
    stored = _instances(settings)
    assert list(stored) == [str(dcmread(study[1], stop_before_pixels=True).SOPInstanceUID)]
    truncated_uid = str(dcmread(study[0], stop_before_pixels=True).SOPInstanceUID)
    refused = [r for r in audit_rows(settings, "instance_refused") if r.sop_instance_uid == truncated_uid]
    assert refused or "premature end of stream" in sent_truncated.stderr, sent_truncated.stderr


def test_duplicates_are_idempotent_and_never_replace_the_original(
    make_settings: Callable[..., Settings], tmp_path: Path, study: list[Path]
) -> None:
    settings = make_settings()
    changed = dcmread(study[0])
    changed.PatientName = "SOMEONE^ELSE"  # same SOP Instance UID, different content
    conflicting = tmp_path / "conflicting.dcm"
    changed.save_as(conflicting)
    with running_listener(settings) as listener:
        first = raw_c_store(listener.port, study[0])
        original = Path(next(iter(_instances(settings).values())).path).read_bytes()
        same = raw_c_store(listener.port, study[0])
        different = raw_c_store(listener.port, conflicting)
    assert (first.status, same.status, different.status) == (0, 0, 0)
    rows = _instances(settings)
    assert len(rows) == 1
    row = next(iter(rows.values()))
    assert Path(row.path).read_bytes() == original
    assert len(audit_rows(settings, "instance_duplicate")) == 1
    conflict = audit_rows(settings, "instance_duplicate_conflict")
    assert len(conflict) == 1 and f"stored sha256={row.sha256}" in (conflict[0].detail or "")


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def test_full_disk_answers_out_of_resources_then_recovers(
    make_settings: Callable[..., Settings], tiny_tmpfs: Path, study: list[Path]
) -> None:
    settings = make_settings(storage={"root": tiny_tmpfs / "storage"})
    big = write_us_study(tiny_tmpfs.parent / "big", n_images=1, rows=240, cols=320)[0]  # 77 KB > 64 KB
    with running_listener(settings) as listener:
        full = raw_c_store(listener.port, big)
        assert full.status == status.OUT_OF_RESOURCES_STORAGE, full
        assert not list(tiny_tmpfs.rglob("*.tmp"))  # the partial temp file was removed
        subprocess.run(["umount", "-l", str(tiny_tmpfs)], check=True)  # space is back (the disk below)
        retried = raw_c_store(listener.port, big)
    assert retried.status == status.SUCCESS
    assert len(_instances(settings)) == 1
    assert any("0xA700" in r for r in _refusals(settings))


def test_unwritable_storage_root_answers_out_of_resources(
    make_settings: Callable[..., Settings], tmp_path: Path, study: list[Path]
) -> None:
    root = tmp_path / "storage-root"
    root.write_text(
        "a regular file where the storage folder should be"
    )  # root ignores chmod; this cannot be mkdir'ed
    settings = make_settings(storage={"root": root})
    with running_listener(settings) as listener:
        refused = raw_c_store(listener.port, study[0])
        root.unlink()
        accepted = raw_c_store(listener.port, study[0])
    assert refused.status == status.OUT_OF_RESOURCES_STORAGE
    assert accepted.status == status.SUCCESS
    assert len(_instances(settings)) == 1
    assert len(_refusals(settings)) == 1


def test_database_down_answers_out_of_resources_then_recovers(
    make_settings: Callable[..., Settings], study: list[Path]
) -> None:
    settings = make_settings("postgres")
    name = settings.database_url.rsplit("/", 1)[1]
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with running_listener(settings) as listener:
            assert raw_c_store(listener.port, study[0]).status == status.SUCCESS
            kept = Path(next(iter(_instances(settings).values())).path)
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
            down = raw_c_store(listener.port, study[1])
            assert down.status == status.OUT_OF_RESOURCES_DATABASE, down
            assert kept.exists()  # what was accepted before stays on disk
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            upgrade(settings.database_url)
            back = raw_c_store(listener.port, study[1])
        assert back.status == status.SUCCESS
        db = Database(settings.database_url)
        try:
            with db.session() as session:
                assert session.scalar(select(func.count(Instance.id))) == 1
        finally:
            db.dispose()
    finally:
        admin.dispose()
