"""No patient name, patient ID or accession number in any log line, including what pydicom and
highdicom print: a study with distinctive values goes through the real `sonopacs listener` service
(its own logging set-up, DEBUG) and through the result writers, and every captured line is searched."""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from sonopacs.config import Settings
from sonopacs.config.logs import FORMAT, PHI, install_phi_guard, uninstall_phi_guard
from sonopacs.dicom_node.pixels import read_frames
from sonopacs.dicom_node.results.overlay_render import render_overlay
from sonopacs.dicom_node.results.secondary_capture import build_secondary_capture
from sonopacs.dicom_node.results.structured_report import build_structured_report
from sonopacs.dicom_node.results.types import ResultIdentity
from tests.support.dicom_factory import synthetic_bmode, us_dataset
from tests.support.findings import ellipse_finding
from tests.support.listener import raw_c_store
from tests.support.net import free_port, wait_for_port

REPO = Path(__file__).resolve().parents[1]
NAME, PATIENT_ID, ACCESSION = "QUOKKAFINCH", "PIDQX7731", "ACCQX99137"  # single-component name: highdicom warns
BAD_DATE = "2024-13-45"  # an invalid DA: pydicom's validation warning quotes it
SECRETS = (NAME, PATIENT_ID, ACCESSION, BAD_DATE)


def _study(folder: Path, n: int = 2, study_date: str = BAD_DATE, charset: str | None = None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    paths = []
    for i in range(n):
        ds = us_dataset(
            synthetic_bmode(120, 160, seed=i),
            study_uid=study,
            series_uid=series,
            instance_number=i + 1,
            patient_name=NAME,
            patient_id=PATIENT_ID,
            accession=ACCESSION,
        )
        ds.StudyDate = study_date
        if charset:
            ds.SpecificCharacterSet = charset
        paths.append(folder / f"{i}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def _leaks(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(s in line for s in SECRETS)]


def test_the_listener_service_logs_no_phi(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = make_settings()
    port = free_port()
    env = {
        **os.environ,
        "SONOPACS_DICOM__PORT": str(port),
        "SONOPACS_STORAGE__ROOT": str(settings.storage.root),
        "SONOPACS_DATABASE__URL": settings.database_url,
        "PYTHONWARNINGS": "always",  # every warning, every time: nothing hides behind "once"
    }
    # An unknown character set: pydicom warns (in the listener's process) when it decodes the name.
    files = _study(tmp_path / "study", charset="ISO_IR 999")
    short = dcmread(files[0])
    short.SOPInstanceUID = generate_uid()
    short.PixelData = bytes(100)  # refused at the door (0xC105): the refusal path logs too
    short.save_as(tmp_path / "short.dcm", enforce_file_format=True)
    log_file = tmp_path / "listener.log"
    with log_file.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from sonopacs import cli; sys.exit(cli.main(['-v', 'listener']))"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port(port, timeout=60)
            statuses = [raw_c_store(port, f).status for f in [*files, tmp_path / "short.dcm"]]
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    text = log_file.read_text(errors="replace")

    assert statuses == [0, 0, 0xC105]
    assert "DEBUG" in text and "withheld" in text  # verbose, and the library warnings did fire
    assert _leaks(text) == []


@pytest.fixture
def guarded_log() -> Iterator[io.StringIO]:
    """Root logging into a buffer through the same guard the services install; warnings: always."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        install_phi_guard()
        try:
            yield stream
        finally:
            uninstall_phi_guard()
            root.removeHandler(handler)
            root.setLevel(old_level)
            PHI.clear()


def test_reading_pixels_and_writing_results_logs_no_phi(guarded_log: io.StringIO, tmp_path: Path) -> None:
    source = _study(tmp_path / "study", n=1, study_date="20240105")[0]  # highdicom refuses a bad DA
    frames = read_frames(dcmread(source), max_frames=1)  # what the clean stage does first
    assert frames.images[0].shape == (120, 160)
    finding = ellipse_finding(source)
    identity = ResultIdentity(uid_root="1.2.826.0.1.3680043.10.1471.", software_version="test")
    build_secondary_capture(finding, render_overlay(finding), identity, identity.new_uid(), 9101, 1)
    build_structured_report([finding], identity, identity.new_uid(), 9201)
    # One of our own lines that carries a value by mistake (e.g. an exception message):
    logging.getLogger("sonopacs.worker.stages").warning(
        "cannot publish %s / %s: %s", finding.source.PatientName, PATIENT_ID, f"accession {ACCESSION}"
    )
    try:
        raise ValueError(f"bad value {NAME}")
    except ValueError:
        logging.getLogger("sonopacs.worker.stages").exception("stage failed")
    text = guarded_log.getvalue()

    assert "withheld" in text  # highdicom's single-component name warning came through, without the name
    assert text.count("[redacted]") >= 4  # name, ID, accession, traceback
    assert "ValueError" in text
    assert _leaks(text) == []


@pytest.mark.slow
def test_the_whole_pipeline_under_serve_logs_no_phi(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """`sonopacs -v serve` (listener, both worker pools, monitor, dashboard: one log) runs the study
    through clean, analyze and publish (highdicom writes the SC and SR); no line names the patient."""
    from sqlalchemy import select

    from sonopacs.db.models import Study
    from sonopacs.db.session import Database
    from tests.support.net import wait_until
    from tests.support.sonopacs_proc import analyzer_or_skip
    from tests.support.us_realistic import write_realistic_study
    from tests.support.worker_proc import sonopacs_process, write_config

    settings = make_settings(
        dicom={"port": free_port(), "host": "127.0.0.1"},
        study={"stable_seconds": 1, "poll_seconds": 0.2},
        dashboard={"port": free_port()},
        worker={"inference_concurrency": 1, "light_concurrency": 1},
    )
    analyzer_or_skip(settings)
    files = write_realistic_study(tmp_path / "study", n_images=2, jpeg_every=2)
    for path in files:
        ds = dcmread(path)
        ds.PatientName, ds.PatientID, ds.AccessionNumber = NAME, PATIENT_ID, ACCESSION
        ds.save_as(path, enforce_file_format=True)
    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    config = write_config(settings, tmp_path / "sonopacs.yaml")
    log_file = tmp_path / "serve.log"
    done = {"results_ready", "exported", "export_failed", "failed"}
    db = Database(settings.database_url)
    try:
        with sonopacs_process(["-v", "--config", str(config), "serve"], log_file, stop_timeout=60):
            wait_for_port(settings.dicom.port, timeout=90)
            statuses = [raw_c_store(settings.dicom.port, f).status for f in files]

            def finished() -> str | None:
                with db.session() as session:
                    state = session.scalar(select(Study.state).where(Study.study_instance_uid == study_uid))
                return str(state) if state is not None and str(state) in done else None

            final = wait_until(finished, timeout=240, interval=1.0)
    finally:
        db.dispose()
    text = log_file.read_text(errors="replace")

    assert statuses == [0, 0]
    assert final in ("results_ready", "exported"), (final, text[-3000:])
    # highdicom's single-component name warning fired in the worker, without the name:
    assert any("highdicom" in line and "withheld" in line for line in text.splitlines())
    assert _leaks(text) == []
