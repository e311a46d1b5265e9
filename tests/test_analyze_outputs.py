"""`sonopacs analyze` with the PACS's output settings: PR and SEG files when they are on, and a
failed input leaves nothing but its error JSON (no partial overlay, mask or DICOM from any run)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file

from sonopacs.config import Settings
from sonopacs.worker.single_analysis import OUTPUT_SUFFIXES, analyze_files
from tests.conftest import requires_dciodvfy
from tests.support.findings import dciodvfy
from tests.support.sonopacs_proc import analyzer_or_skip
from tests.support.us_realistic import write_realistic_study


@requires_dciodvfy
def test_analyze_writes_pr_and_seg_when_the_settings_ask(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(pipeline={"presentation_state": True, "segmentation": True, "max_frames": 2})
    analyzer_or_skip(settings)
    files = write_realistic_study(tmp_path / "study", n_images=2, jpeg_every=2)
    cine = Path(str(get_testdata_file("OBXXXX1A_rle_2frame.dcm")))  # palette-colour cine: PR used to raise
    out = tmp_path / "out"
    records = analyze_files(settings, [*files, cine], out)

    for path, record in zip([*files, cine], records, strict=True):
        assert "error" not in record, record
        assert "output_errors" not in record, record["output_errors"]
        name = path.stem
        assert record["outputs"]["pr"] == f"{name}_pr.dcm"
        pr = pydicom.dcmread(out / f"{name}_pr.dcm")
        source = pydicom.dcmread(path, stop_before_pixels=True)
        assert (
            pr.ReferencedSeriesSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID
            == source.SOPInstanceUID
        )
        errors, _ = dciodvfy(out / f"{name}_pr.dcm")
        assert errors == [], (name, errors)
        # a SEG exactly where the analysis found a lesion it could draw
        lesion = record["assessed"] and record["lesion"] is not None
        assert ("seg" in record["outputs"]) == (lesion and record["frames_analyzed"] == 1), record["outputs"]
    assert any("seg" in r["outputs"] for r in records), "no lesion in the realistic study: SEG never written"


def test_a_failed_input_leaves_only_its_error(tmp_path: Path, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(pipeline={"presentation_state": True, "segmentation": True})
    analyzer_or_skip(settings)
    [good] = write_realistic_study(tmp_path / "study", n_images=1, jpeg_every=0)
    out = tmp_path / "out"
    [first] = analyze_files(settings, [good], out)
    assert "error" not in first and (out / f"{good.stem}_sc.dcm").exists()

    # the same name again, now a file that breaks half-way through decoding
    ds = pydicom.dcmread(good)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
    ds.save_as(good)
    [second] = analyze_files(settings, [good], out)
    assert "error" in second
    assert json.loads((out / f"{good.stem}.json").read_text())["error"] == second["error"]
    left = [suffix for suffix in OUTPUT_SUFFIXES if (out / f"{good.stem}{suffix}").exists()]
    assert left == [], f"outputs left behind by a failed input: {left}"
