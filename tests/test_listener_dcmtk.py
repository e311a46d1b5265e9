"""DCMTK peers against the listener: storescu, echoscu, AE title checks, TLS."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from sonopacs.config import Settings
from sonopacs.db.models import Instance
from sonopacs.db.session import Database
from tests.conftest import requires_dcmtk
from tests.support.dicom_factory import write_us_study
from tests.support.listener import audit_rows, dataset_body, dcmtk, running_listener
from tests.support.net import wait_until

pytestmark = requires_dcmtk


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60)


def _instance_count(settings: Settings) -> int:
    db = Database(settings.database_url)
    try:
        with db.session() as session:
            return int(session.scalar(select(func.count(Instance.id))) or 0)
    finally:
        db.dispose()


def test_storescu_study_and_echoscu(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = make_settings()
    files = write_us_study(tmp_path / "study", n_images=4, rows=240, cols=320)
    with running_listener(settings) as listener:
        port = str(listener.port)
        echo = _run(dcmtk("echoscu"), "-aet", "MODALITY", "-aec", "SONOPACS", "127.0.0.1", port)
        assert echo.returncode == 0, echo.stderr
        sent = _run(
            dcmtk("storescu"), "-aet", "MODALITY", "-aec", "SONOPACS", "127.0.0.1", port, *map(str, files)
        )
        assert sent.returncode == 0, sent.stderr
        # The same study again: idempotent, still Success, no new rows.
        again = _run(
            dcmtk("storescu"), "-aet", "MODALITY", "-aec", "SONOPACS", "127.0.0.1", port, *map(str, files)
        )
        assert again.returncode == 0, again.stderr

    db = Database(settings.database_url)
    try:
        with db.session() as session:
            rows = {i.sop_instance_uid: i for i in session.scalars(select(Instance))}
    finally:
        db.dispose()
    assert len(rows) == len(files)
    from pydicom import dcmread

    for f in files:
        row = rows[str(dcmread(f, stop_before_pixels=True).SOPInstanceUID)]
        assert dataset_body(Path(row.path).read_bytes()) == dataset_body(f.read_bytes())
        assert row.calling_ae == "MODALITY"
    assert len(audit_rows(settings, "instance_received")) == len(files)
    assert len(audit_rows(settings, "instance_duplicate")) == len(files)


def test_calling_and_called_ae_checks(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(dicom={"allowed_calling_aes": ["PACS1"]})
    with running_listener(settings) as listener:
        port = str(listener.port)
        stranger = _run(dcmtk("echoscu"), "-aet", "STRANGER", "-aec", "SONOPACS", "127.0.0.1", port)
        wrong_called = _run(dcmtk("echoscu"), "-aet", "PACS1", "-aec", "NOTUS", "127.0.0.1", port)
        allowed = _run(dcmtk("echoscu"), "-aet", "PACS1", "-aec", "SONOPACS", "127.0.0.1", port)
    assert stranger.returncode != 0 and "Rejected" in stranger.stderr + stranger.stdout
    assert wrong_called.returncode != 0
    assert allowed.returncode == 0, allowed.stderr
    reasons = [r.detail or "" for r in audit_rows(settings, "association_rejected")]
    assert any("calling AE 'STRANGER' not in allowed_calling_aes" in r for r in reasons)
    assert any("called AE 'NOTUS' is not 'SONOPACS'" in r for r in reasons)
    assert any("calling_ae=PACS1" in (r.detail or "") for r in audit_rows(settings, "association_accepted"))


def _self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return key, cert


def test_tls_with_client_certificates(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    try:
        server_key, server_cert = _self_signed(tmp_path, "sonopacs")
        client_key, client_cert = _self_signed(tmp_path, "modality")
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"openssl cannot make test certificates: {exc}")
    settings = make_settings(dicom={"tls_cert": server_cert, "tls_key": server_key, "tls_ca": client_cert})
    files = write_us_study(tmp_path / "study", n_images=1, rows=64, cols=64)
    with running_listener(settings) as listener:
        port = str(listener.port)
        tls = ["+tls", str(client_key), str(client_cert), "+cf", str(server_cert)]
        echo = _run(dcmtk("echoscu"), *tls, "-aec", "SONOPACS", "127.0.0.1", port)
        store = _run(dcmtk("storescu"), *tls, "-aec", "SONOPACS", "127.0.0.1", port, str(files[0]))
        plain = _run(dcmtk("echoscu"), "-to", "5", "-aec", "SONOPACS", "127.0.0.1", port)
        anonymous = _run(
            dcmtk("echoscu"), "+tla", "+cf", str(server_cert), "-aec", "SONOPACS", "127.0.0.1", port
        )
    assert echo.returncode == 0, echo.stderr
    assert store.returncode == 0, store.stderr
    assert plain.returncode != 0  # a plain TCP peer cannot talk to a TLS listener
    assert anonymous.returncode != 0  # tls_ca set: a client certificate is required
    assert _instance_count(settings) == 1


def test_max_associations_is_enforced_and_audited(make_settings: Callable[..., Settings]) -> None:
    from pynetdicom import AE

    settings = make_settings(dicom={"max_associations": 1})
    with running_listener(settings) as listener:
        holder = AE(ae_title="HOLDER")
        holder.add_requested_context("1.2.840.10008.1.1")
        held = holder.associate("127.0.0.1", listener.port, ae_title="SONOPACS")
        assert held.is_established
        try:
            second = _run(
                dcmtk("echoscu"), "-aet", "SECOND", "-aec", "SONOPACS", "127.0.0.1", str(listener.port)
            )
        finally:
            held.release()

        def third_accepted() -> bool:  # the released association's thread takes a moment to end
            echo = _run(
                dcmtk("echoscu"), "-aet", "THIRD", "-aec", "SONOPACS", "127.0.0.1", str(listener.port)
            )
            return echo.returncode == 0

        wait_until(third_accepted, timeout=20, interval=0.3)
    assert second.returncode != 0
    reasons = [r.detail or "" for r in audit_rows(settings, "association_rejected")]
    assert any("calling_ae=SECOND" in r and "too many associations" in r for r in reasons)
