"""What the pipeline could not process is refused at the door, with a status and an audit row:
pixel data of the wrong length, pixel bombs, unsupported classes and syntaxes (at negotiation), and
everything when the disk is under its free-space watermark. Real associations, real listener."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ComprehensiveSRStorage,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    UltrasoundImageStorage,
    generate_uid,
)
from pynetdicom import AE

from sonopacs.config import Settings
from sonopacs.dicom_node import status
from sonopacs.dicom_node.pixels import PixelReadError, read_frames
from sonopacs.dicom_node.watermark import free_bytes
from tests.support.dicom_factory import us_dataset
from tests.support.listener import audit_rows, raw_c_store, running_listener

US_RETIRED = "1.2.840.10008.5.1.4.1.1.6"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"  # a transfer syntax sonopacs does not take


def _write(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def _image(**kw: object) -> Dataset:
    return us_dataset(np.full((15, 15), 7, np.uint8), study_uid=generate_uid(), series_uid=generate_uid(), **kw)  # type: ignore[arg-type]


def _stored_uids(settings: Settings) -> set[str]:
    return {r.sop_instance_uid or "" for r in audit_rows(settings, "instance_received")}


def test_native_pixel_data_of_the_wrong_length_is_refused_not_acknowledged(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings()
    good = _image()  # 15 x 15 x 8 bit = 225 bytes, padded to 226 on write: accepted
    short = _image()
    short.PixelData = bytes(200)  # a consistent element, but 25 bytes short of Rows x Columns
    long = _image()
    long.PixelData = bytes(15 * 15 * 3)  # RGB-sized data behind a MONOCHROME2 header
    frames = _image()
    frames.NumberOfFrames = 4  # four frames claimed, one present
    padded = _image()
    padded.PixelData = bytes(225 + 11)  # trailing padding pydicom drops (PS3.5 8.1.1): decodable, accepted
    bits = _image()
    bits.BitsStored = 12  # more bits stored than allocated (8): no decoder takes it
    cases = [("good", good), ("short", short), ("long", long), ("frames", frames), ("padded", padded), ("bits", bits)]
    files = {n: _write(d, tmp_path / f"{n}.dcm") for n, d in cases}

    with running_listener(settings) as listener:
        results = {n: raw_c_store(listener.port, p) for n, p in files.items()}

    assert results["good"].status == status.SUCCESS
    assert results["padded"].status == status.SUCCESS
    assert results["bits"].status == status.CANNOT_UNDERSTAND_MISSING_ATTRIBUTE
    assert "BitsStored 12" in (results["bits"].comment or "")
    for name in ("short", "long", "frames"):
        assert results[name].status == status.CANNOT_UNDERSTAND_PIXEL_LENGTH, (name, results[name])
        assert "Pixel Data is" in (results[name].comment or "")
    assert _stored_uids(settings) == {str(good.SOPInstanceUID), str(padded.SOPInstanceUID)}
    assert read_frames(dcmread(files["padded"])).images[0].shape == (15, 15)  # the pipeline can decode it
    refusals = [r.detail or "" for r in audit_rows(settings, "instance_refused")]
    assert len([d for d in refusals if "status=0xC105" in d and "the image attributes need" in d]) == 3


def test_retired_ultrasound_classes_are_stored_and_unsupported_ones_refused_at_negotiation(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    retired = [dcmread(get_testdata_file(n)) for n in ("color-pl.dcm", "color-px.dcm")]
    assert {str(ds.SOPClassUID) for ds in retired} == {US_RETIRED}
    sr = Dataset()
    sr.SOPClassUID, sr.SOPInstanceUID = ComprehensiveSRStorage, generate_uid()
    sr.file_meta = FileMetaDataset()
    sr.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ae = AE(ae_title="PACS")
    ae.add_requested_context(US_RETIRED, ExplicitVRLittleEndian)
    ae.add_requested_context(ComprehensiveSRStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(UltrasoundImageStorage, HTJ2K_LOSSLESS)
    with running_listener(settings) as listener:
        assoc = ae.associate("127.0.0.1", listener.port, ae_title="SONOPACS")
        assert assoc.is_established
        try:
            rejected = {str(cx.abstract_syntax) for cx in assoc.rejected_contexts}
            accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
            statuses = [int(assoc.send_c_store(ds).Status) for ds in retired]
            with pytest.raises(ValueError):  # refused at negotiation: the SCU has no context to send on
                assoc.send_c_store(sr)
            still_up = assoc.is_established
        finally:
            assoc.release()

    assert accepted == {US_RETIRED}
    assert rejected == {ComprehensiveSRStorage, UltrasoundImageStorage}  # SR; US only in HTJ2K
    assert statuses == [status.SUCCESS, status.SUCCESS]
    assert still_up and not assoc.is_aborted
    assert {str(ds.SOPInstanceUID) for ds in retired} <= _stored_uids(settings)
    rows = [r.detail or "" for r in audit_rows(settings, "presentation_context_rejected")]
    assert rows and "Comprehensive SR" in rows[0]


def _jpeg_bomb(rows: int, cols: int) -> bytes:
    """A small real JPEG whose frame header (SOF0) is patched to claim rows x cols pixels."""
    noise = np.random.default_rng(0).integers(0, 255, (96, 96), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise, "L").save(buf, "JPEG", quality=30)
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = rows.to_bytes(2, "big") + cols.to_bytes(2, "big")
    return bytes(data)


def _wrapped(jpeg: bytes, rows: int, cols: int) -> Dataset:
    ds = _image()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.Rows, ds.Columns = rows, cols
    ds.PixelData = encapsulate([jpeg])
    ds["PixelData"].VR = "OB"
    return ds


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux)
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_pixel_bomb_is_refused_at_the_door_and_by_the_reader_in_under_100_mb(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    if not _reset_peak_rss():
        pytest.skip("cannot reset the peak RSS on this kernel")
    settings = make_settings()
    jpeg = _jpeg_bomb(16000, 65500)
    assert len(jpeg) < 6000  # a few KB that claim 1 G pixels
    claims = _write(_wrapped(jpeg, 16000, 65500), tmp_path / "claims.dcm")  # data set says it too
    hides = _write(_wrapped(jpeg, 96, 96), tmp_path / "hides.dcm")  # only the JPEG frame header says it

    with running_listener(settings) as listener:
        before = _rss_mb()
        _reset_peak_rss()
        results = [raw_c_store(listener.port, claims), raw_c_store(listener.port, hides)]
        door_growth = _peak_rss_mb() - before

    before = _rss_mb()
    _reset_peak_rss()
    reasons = []
    for path in (claims, hides):
        with pytest.raises(PixelReadError) as info:
            read_frames(dcmread(path), max_frames=8)
        reasons.append(str(info.value))
    reader_growth = _peak_rss_mb() - before

    assert [r.status for r in results] == [status.CANNOT_UNDERSTAND_TOO_LARGE] * 2, results
    assert "over limit" in (results[0].comment or "")
    assert "compressed frame" in (results[1].comment or "")
    assert door_growth < 100, f"the door grew by {door_growth:.0f} MB"
    assert reader_growth < 100, f"the reader grew by {reader_growth:.0f} MB"
    assert "over limit" in reasons[0] and "over limit" in reasons[1]
    assert not _stored_uids(settings)
    assert len([r for r in audit_rows(settings, "instance_refused") if "0xC103" in (r.detail or "")]) == 2


def test_under_the_free_space_watermark_stores_get_out_of_resources_then_recover(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings()
    free = free_bytes(settings.storage.root)
    assert free is not None
    settings.storage.min_free_mb = free // (1024 * 1024) + 10_000  # 10 GB more than there is
    first, second = _write(_image(), tmp_path / "a.dcm"), _write(_image(), tmp_path / "b.dcm")
    with running_listener(settings) as listener:
        refused = raw_c_store(listener.port, first)
        settings.storage.min_free_mb = 0  # space is back (an admin cleaned up)
        accepted = raw_c_store(listener.port, first)
        also = raw_c_store(listener.port, second)

    assert refused.status == status.OUT_OF_RESOURCES_STORAGE
    assert "min_free_mb" in (refused.comment or "")
    assert (accepted.status, also.status) == (status.SUCCESS, status.SUCCESS)
    rows = [r.detail or "" for r in audit_rows(settings, "instance_refused")]
    assert len(rows) == 1 and "status=0xA700" in rows[0] and "free space" in rows[0]


def _jpeg_bomb_rgb(rows: int, cols: int) -> bytes:
    noise = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise, "RGB").save(buf, "JPEG", quality=30)
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = rows.to_bytes(2, "big") + cols.to_bytes(2, "big")
    return bytes(data)


def test_analyze_upload_and_cli_input_refuse_pixel_bombs_from_the_header(tmp_path: Path) -> None:
    from fastapi import HTTPException

    from sonopacs.dashboard.analysis import validate_upload
    from sonopacs.worker.single_analysis import InputError, load_input

    if not _reset_peak_rss():
        pytest.skip("cannot reset the peak RSS on this kernel")
    huge = _jpeg_bomb(16000, 65500)  # over PIL's own bomb limit too
    rgb = _jpeg_bomb_rgb(6000, 6000)  # 36 M pixels: under PIL's limit, 108 M samples: over ours
    claims = _wrapped(huge, 16000, 65500)
    dcm = _write(claims, tmp_path / "claims.dcm").read_bytes()
    before = _rss_mb()
    _reset_peak_rss()
    codes, reasons = [], []
    for name, data in (("huge.jpg", huge), ("rgb.jpg", rgb), ("claims.dcm", dcm)):
        with pytest.raises(HTTPException) as info:
            validate_upload(data, name)
        codes.append(info.value.status_code)
        reasons.append(str(info.value.detail))
        (tmp_path / name).write_bytes(data)
        with pytest.raises((InputError, PixelReadError)):  # each becomes the input's reported error
            load_input(tmp_path / name, max_frames=8, uid_root="1.2.826.0.1.3680043.10.1471.")
    growth = _peak_rss_mb() - before

    assert codes == [413, 413, 413], reasons
    assert "6000x6000x3 samples over limit" in reasons[1]
    assert growth < 100, f"grew by {growth:.0f} MB"


def _square(size: int) -> Dataset:
    pixels = np.random.default_rng(size).integers(0, 255, (size, size), dtype=np.uint8)
    return us_dataset(pixels, study_uid=generate_uid(), series_uid=generate_uid())


def _patched_codestream(ts: str, rows: int, cols: int) -> Dataset:
    """A real JPEG 2000 / JPEG-LS frame whose own header is patched to claim rows x cols."""
    from pydicom.encaps import generate_frames

    ds = _square(64)
    ds.compress(ts)
    frame = bytearray(next(generate_frames(ds.PixelData)))
    if frame.startswith(b"\xff\x4f"):  # J2K: SIZ Xsiz, Ysiz after marker, Lsiz, Rsiz
        siz = frame.index(b"\xff\x51")
        frame[siz + 6 : siz + 14] = cols.to_bytes(4, "big") + rows.to_bytes(4, "big")
    else:  # JPEG-LS SOF55: P, Y, X
        sof = frame.index(b"\xff\xf7")
        frame[sof + 5 : sof + 9] = rows.to_bytes(2, "big") + cols.to_bytes(2, "big")
    ds.PixelData = encapsulate([bytes(frame)])
    return ds


@pytest.mark.parametrize("ts", ["1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.80"])  # J2K lossless, JPEG-LS
def test_jpeg2000_and_jpeg_ls_frame_headers_are_read_at_the_door(
    ts: str, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    try:
        honest = _square(64)
        honest.compress(ts)
        bomb = _patched_codestream(ts, 30000, 30000)
    except (RuntimeError, NotImplementedError) as exc:
        pytest.skip(f"no encoder for {ts}: {exc}")
    settings = make_settings()
    with running_listener(settings) as listener:
        ok = raw_c_store(listener.port, _write(honest, tmp_path / "honest.dcm"))
        refused = raw_c_store(listener.port, _write(bomb, tmp_path / "bomb.dcm"))
    assert ok.status == status.SUCCESS  # its real frame header matches Rows/Columns
    assert refused.status == status.CANNOT_UNDERSTAND_TOO_LARGE
    assert "compressed frame header" in (refused.comment or "")
