"""`sonopacs send` and `sonopacs echo` against a real Orthanc: stored bytes go out unchanged."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from sonopacs.cli import main
from sonopacs.config import Settings
from tests.support.dicom_factory import write_us_study
from tests.support.listener import dataset_body, running_listener
from tests.support.net import free_port
from tests.support.orthanc import Orthanc


def test_send_folder_and_compressed_file_arrive_unchanged(
    orthanc_factory: Callable[..., Orthanc], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pacs = orthanc_factory()
    folder = tmp_path / "out"
    files = write_us_study(folder, n_images=2, rows=64, cols=64)
    jpeg2000 = folder / "US1_J2KR.dcm"  # JPEG 2000 lossless: must not be decoded and re-encoded
    shutil.copy(str(get_testdata_file("US1_J2KR.dcm")), jpeg2000)
    files.append(jpeg2000)

    code = main(["send", str(folder), "--to", f"127.0.0.1:{pacs.dicom_port}", "--aet", pacs.ae_title])
    assert code == 0
    assert "sent 3, failed 0" in capsys.readouterr().out
    for path in files:
        uid = dcmread(path, stop_before_pixels=True).SOPInstanceUID
        orthanc_id = pacs.find_instance(uid)
        assert orthanc_id is not None, path.name
        # Orthanc rewrites undefined-length sequences, so compare the (encapsulated) pixel data here;
        # the byte-for-byte check is against our own listener below.
        held = dcmread(BytesIO(pacs.instance_bytes(orthanc_id)))
        assert held.PixelData == dcmread(path).PixelData


def test_send_passes_the_stored_bytes_through_unchanged(
    make_settings: Callable[..., Settings], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = Path(str(get_testdata_file("US1_J2KR.dcm")))  # JPEG 2000, undefined-length sequences
    settings = make_settings("sqlite")
    with running_listener(settings) as listener:
        assert main(["send", str(source), "--to", f"127.0.0.1:{listener.port}", "--aet", "SONOPACS"]) == 0
    stored = [p for p in settings.storage.root.rglob("*.dcm") if p.is_file()]
    assert len(stored) == 1
    assert dataset_body(stored[0].read_bytes()) == dataset_body(source.read_bytes())


def test_send_reports_each_failure_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = write_us_study(tmp_path / "out", n_images=1, rows=32, cols=32)
    junk = tmp_path / "out" / "not-dicom.dcm"
    junk.write_bytes(b"this is not DICOM")
    port = free_port()  # nothing listens here
    assert main(["send", str(files[0]), str(junk), "--to", f"127.0.0.1:{port}", "--timeout", "3"]) == 1
    captured = capsys.readouterr()
    assert "sent 0, failed 2" in captured.out
    assert "not a readable DICOM file" in captured.err
    assert "not reachable" in captured.err or "aborted" in captured.err or "rejected" in captured.err


def test_echo_success_and_failure(
    orthanc_factory: Callable[..., Orthanc], capsys: pytest.CaptureFixture[str]
) -> None:
    pacs = orthanc_factory()
    assert main(["echo", "--to", f"127.0.0.1:{pacs.dicom_port}", "--aet", pacs.ae_title]) == 0
    assert "status 0x0000" in capsys.readouterr().out
    assert main(["echo", "--to", f"127.0.0.1:{free_port()}", "--aet", "NOBODY", "--timeout", "3"]) == 1
    assert "C-ECHO failed" in capsys.readouterr().err
