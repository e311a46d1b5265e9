"""DICOMweb export: a real worker STOW-RSes a study's results to Orthanc's DICOMweb plugin (basic
auth), retries through an outage with the C-STORE backoff and ExportAttempt rows, and every object
comes back through WADO-RS byte for byte. Credentials and TLS are checked against the same server."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from pydicom import dcmread
from sqlalchemy import select

from sonopacs.config import Settings
from sonopacs.db import Database, ExportAttempt, Study, StudyState
from sonopacs.db.migrate import upgrade
from sonopacs.dicom_node.stow import StowTarget, check, stow_files, target_from_settings
from sonopacs.worker.actions import send_export
from tests.support.dicom_factory import write_us_study
from tests.support.net import wait_until
from tests.support.orthanc import Orthanc, dicomweb_available
from tests.support.tls_front import self_signed_pem, socat_available, tls_front
from tests.support.worker_proc import add_results, add_study, worker_process, write_config

pytestmark = [
    pytest.mark.orthanc,
    pytest.mark.skipif(not dicomweb_available(), reason="Debian orthanc-dicomweb is not installed"),
]

USER, PASSWORD = "sonopacs", "stow-secret"


@pytest.fixture
def dicomweb_pacs(tmp_path: Path) -> Iterator[Callable[..., Orthanc]]:
    """Orthanc with its DICOMweb plugin (and basic auth, TLS when asked); stopped after the test."""
    started: list[Orthanc] = []

    def start(name: str = "pacs", **options: object) -> Orthanc:
        server = Orthanc(workdir=tmp_path / name, dicomweb=True, **options)  # type: ignore[arg-type]
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def wado_rs_bytes(pacs: Orthanc, study: str, series: str, instance: str) -> bytes:
    """One instance through WADO-RS as stored (transfer-syntax=*), the multipart part's body."""
    url = f"{pacs.dicomweb_url}/studies/{study}/series/{series}/instances/{instance}"
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    response = requests.get(url, headers={"Accept": accept}, auth=(USER, PASSWORD), timeout=30)
    response.raise_for_status()
    boundary = re.search(r'boundary="?([^";]+)"?', response.headers["Content-Type"])
    assert boundary is not None, response.headers
    parts = response.content.split(b"--" + boundary.group(1).encode())
    bodies = [p.split(b"\r\n\r\n", 1)[1] for p in parts if b"\r\n\r\n" in p]
    assert len(bodies) == 1, f"{len(bodies)} parts"
    body = bodies[0]
    return body[:-2] if body.endswith(b"\r\n") else body


def attempts(db: Database, study_id: int) -> list[ExportAttempt]:
    with db.session() as session:
        query = select(ExportAttempt).where(ExportAttempt.study_id == study_id).order_by(ExportAttempt.id)
        return list(session.scalars(query))


def state_of(db: Database, study_id: int) -> StudyState:
    with db.session() as session:
        study = session.get(Study, study_id)
        assert study is not None
        return study.state


def test_stow_export_through_an_outage_round_trips_byte_identical(
    make_settings: Callable[..., Settings], dicomweb_pacs: Callable[..., Orthanc], tmp_path: Path
) -> None:
    pacs = dicomweb_pacs(users={USER: PASSWORD})
    settings = make_settings(
        export={
            "kind": "dicomweb",
            "dicomweb_url": pacs.dicomweb_url,
            "username": USER,
            "password": PASSWORD,
            "timeout": 5,
            "max_retries": 30,
            "backoff_base_seconds": 0.3,
            "backoff_max_seconds": 1.0,
        }
    )
    assert check(target_from_settings(settings.export)).endswith("ok")
    upgrade(settings.database_url)
    db = Database(settings.database_url)
    config = write_config(settings, tmp_path / "sonopacs.yaml")
    with worker_process(config, tmp_path / "worker.log", concurrency=1):
        # PACS down first: tries fail and are retried with the export backoff, then it lands.
        pacs.stop()
        study_id, study_uid = add_study(db, state=StudyState.RESULTS_READY)
        files = write_us_study(tmp_path / "results", n_images=3, rows=64, cols=64)
        add_results(db, study_id, files)
        send_export(settings, db, study_id, 1, reason="test")
        wait_until(lambda: len(attempts(db, study_id)) >= 2, timeout=60)
        assert state_of(db, study_id) == StudyState.EXPORTING
        pacs.start()
        wait_until(
            lambda: state_of(db, study_id) in (StudyState.EXPORTED, StudyState.EXPORT_FAILED), timeout=60
        )

    assert state_of(db, study_id) == StudyState.EXPORTED
    tries = attempts(db, study_id)
    assert [a.attempt for a in tries] == list(range(1, len(tries) + 1))
    assert tries[-1].success and tries[-1].n_sent == 3 and tries[-1].n_failed == 0
    assert not any(a.success for a in tries[:-1]) and all("STOW-RS" in (a.error or "") for a in tries[:-1])
    assert all(a.destination == pacs.dicomweb_url for a in tries)  # no credentials shown

    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        fetched = wado_rs_bytes(pacs, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        assert fetched == path.read_bytes(), path.name
    db.dispose()


def test_stow_reports_refused_credentials_per_file(
    dicomweb_pacs: Callable[..., Orthanc], tmp_path: Path
) -> None:
    pacs = dicomweb_pacs(users={USER: PASSWORD})
    files = write_us_study(tmp_path / "results", n_images=2, rows=64, cols=64)
    wrong = stow_files(files, StowTarget(pacs.dicomweb_url, username=USER, password="wrong"), timeout=10)
    assert not wrong.sent and set(wrong.failed) == set(files)
    assert all("HTTP 401" in reason for reason in wrong.failed.values())
    bearer = stow_files(files, StowTarget(pacs.dicomweb_url, bearer_token="not-a-token"), timeout=10)
    assert not bearer.sent and all("HTTP 401" in reason for reason in bearer.failed.values())
    with pytest.raises(RuntimeError, match="401"):
        check(StowTarget(pacs.dicomweb_url, username=USER, password="wrong"))
    right = stow_files(files, StowTarget(pacs.dicomweb_url, username=USER, password=PASSWORD), timeout=10)
    assert right.ok and right.sent == files


@pytest.mark.skipif(not socat_available(), reason="socat is not installed")
def test_stow_over_tls_verifies_the_server_with_the_ca_bundle(
    dicomweb_pacs: Callable[..., Orthanc], tmp_path: Path
) -> None:
    pacs = dicomweb_pacs()
    pem = self_signed_pem(tmp_path / "front.pem")
    files = write_us_study(tmp_path / "results", n_images=1, rows=64, cols=64)
    with tls_front(pacs.http_port, pem) as port:
        url = f"https://localhost:{port}/dicom-web"
        untrusted = stow_files(files, StowTarget(url), timeout=10)
        assert not untrusted.sent and "SSLError" in untrusted.failed[files[0]]
        trusted = stow_files(files, StowTarget(url, ca_bundle=pem), timeout=10)
        assert trusted.ok and trusted.sent == files
    assert str(dcmread(files[0], stop_before_pixels=True).SOPInstanceUID) in pacs.sop_instance_uids()


def test_target_hides_credentials_and_sends_the_bearer_token() -> None:
    target = StowTarget("https://alice:pw@pacs.example:8443/dicom-web", bearer_token="tok")
    assert str(target) == "https://pacs.example:8443/dicom-web"
    with target.session() as session:
        assert session.headers["Authorization"] == "Bearer tok" and session.auth is None
        assert session.verify is True
    basic = StowTarget("http://pacs/dicom-web", username="u", password="p", verify_tls=False)
    with basic.session() as session:
        assert session.auth == ("u", "p") and session.verify is False


def test_dicomweb_settings_are_checked_and_secrets_masked() -> None:
    from sonopacs.config import load_settings
    from sonopacs.config.settings import ConfigError, masked_dump

    with pytest.raises(ConfigError, match="dicomweb_url"):
        load_settings(export={"kind": "dicomweb"})
    with pytest.raises(ConfigError, match="dicomweb_url"):
        load_settings(export={"kind": "dicomweb", "dicomweb_url": "pacs.example/dicom-web"})
    settings = load_settings(
        export={
            "kind": "dicomweb",
            "dicomweb_url": "https://pacs/dicom-web/",
            "password": "pw",
            "bearer_token": "tok",
        }
    )
    assert settings.export.enabled and settings.export.dicomweb_url == "https://pacs/dicom-web"
    shown = json.dumps(masked_dump(settings)["export"], default=str)  # what `sonopacs config show` prints
    assert '"pw"' not in shown and '"tok"' not in shown
    target = target_from_settings(settings.export)
    assert target.password == "pw" and target.bearer_token == "tok"
