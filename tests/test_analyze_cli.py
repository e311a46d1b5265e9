"""`sonopacs analyze FILE... --out DIR` with the shipped model: DICOM and PNG in, the contract's files out."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from sonopacs import cli
from sonopacs.config import Settings
from tests.conftest import requires_dciodvfy
from tests.support.dicom_factory import write_ct_instance
from tests.support.findings import dciodvfy
from tests.support.sonopacs_proc import analyzer_or_skip
from tests.support.us_realistic import scanner_frame, tissue_images, write_realistic_study


@requires_dciodvfy
def test_analyze_writes_the_contract_and_survives_bad_files(
    tmp_path: Path, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings()
    analyzer_or_skip(settings)
    dcm_plain, dcm_jpeg = write_realistic_study(tmp_path / "study", n_images=2, jpeg_every=2)
    png = tmp_path / "scan.png"
    Image.fromarray(scanner_frame(tissue_images(1)[0])).save(png)
    junk = tmp_path / "notes.txt"
    junk.write_text("not an image")
    ct = write_ct_instance(tmp_path / "ct.dcm")
    out = tmp_path / "out"


    monkeypatch.setattr(cli, "_settings", lambda args: settings)
    code = cli.main(["analyze", str(dcm_plain), str(dcm_jpeg), str(png), str(junk), str(ct), "--out", str(out)])
    assert code == 1  # two inputs failed, three were analysed

    for path in (dcm_plain, dcm_jpeg, png):
        name = path.stem
        record = json.loads((out / f"{name}.json").read_text())
        assert set(record["probabilities"]) == {"normal", "benign", "malignant"}
        # normal exactly when no lesion is present (models.presence); else the likelier lesion class
        probs = record["probabilities"]
        if record["label"] == "normal":
            assert record["lesion"] is None and not np.asarray(Image.open(out / f"{name}_mask.png")).any()
        else:
            assert record["label"] == max(("benign", "malignant"), key=probs.get)
        assert abs(sum(record["probabilities"].values()) - 1) < 1e-3
        assert set(record["decisions"]) and "cleaning" in record
        geometry = (480, 640)
        mask = np.asarray(Image.open(out / f"{name}_mask.png"))
        assert mask.shape == geometry and set(np.unique(mask)) <= {0, 255}
        overlay_rows, overlay_cols = np.asarray(Image.open(out / f"{name}_overlay.png")).shape[:2]
        assert overlay_cols == geometry[1] and overlay_rows > geometry[0]  # frame on top, banner band below
        if record["lesion"] is not None and path.suffix == ".dcm":
            assert record["lesion"]["long_axis_mm"] > 0  # the region gives physical units
    for path in (dcm_plain, dcm_jpeg):
        for kind in ("sc", "sr"):
            obj = out / f"{path.stem}_{kind}.dcm"
            assert dciodvfy(obj)[0] == []
        sc = pydicom.dcmread(out / f"{path.stem}_sc.dcm")
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == pydicom.dcmread(path).SOPInstanceUID
    assert not (out / "scan_sc.dcm").exists()
    assert "error" in json.loads((out / "notes.json").read_text())
    assert "not analysed" in json.loads((out / "ct.json").read_text())["error"]
