"""docs/conformance.md stays true: its tables are compared with the code's own tables and outputs."""

from __future__ import annotations

import re
from pathlib import Path

import pydicom
import pytest
import yaml
from pydicom.sr.codedict import codes as sr_codes
from pydicom.sr.coding import Code
from pydicom.uid import UID

from sonopacs.config import Settings
from sonopacs.dicom_node import sop_classes
from sonopacs.dicom_node.results import codes
from sonopacs.dicom_node.results.overlay_render import render_overlay
from sonopacs.dicom_node.results.presentation_state import build_presentation_state
from sonopacs.dicom_node.results.secondary_capture import build_secondary_capture
from sonopacs.dicom_node.results.segmentation import build_segmentation
from sonopacs.dicom_node.results.structured_report import build_structured_report
from sonopacs.dicom_node.results.types import ResultIdentity
from tests.support.findings import ellipse_finding
from tests.support.us_realistic import write_realistic_study

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "conformance.md"
DEFAULTS = ROOT / "config" / "default.yaml"
IDENTITY = ResultIdentity(uid_root="1.2.826.0.1.3680043.10.1471.", software_version="test")


def table(title: str) -> list[dict[str, str]]:
    """Rows of the markdown table under the heading `### title`, as {column: cell}."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    start = lines.index(f"### {title}")
    block: list[str] = []
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            block.append(line)
        elif block:
            break
    header, _rule, *body = (_cells(line) for line in block)
    rows = [dict(zip(header, cells, strict=True)) for cells in body]
    assert rows, f"empty table {title!r}"
    return rows


def _cells(line: str) -> list[str]:
    return [cell.strip().strip("`") for cell in line.strip().strip("|").split("|")]


@pytest.fixture(scope="module")
def produced(tmp_path_factory: pytest.TempPathFactory) -> list[pydicom.Dataset]:
    """One of every object the writers make, from a grey and a colour (JPEG) source."""
    folder = tmp_path_factory.mktemp("conformance")
    sources = write_realistic_study(folder / "study", n_images=2, jpeg_every=2)
    grey, colour = ellipse_finding(sources[0]), ellipse_finding(sources[1], label="benign", p=0.2)
    objects = [
        build_secondary_capture(grey, render_overlay(grey), IDENTITY, IDENTITY.new_uid(), 9101, 1),
        build_structured_report([grey, colour], IDENTITY, IDENTITY.new_uid(), 9201),
        build_presentation_state(grey, IDENTITY, IDENTITY.new_uid(), 9301, 1),
        build_presentation_state(colour, IDENTITY, IDENTITY.new_uid(), 9301, 2),
        build_segmentation(grey, pydicom.dcmread(sources[0]), IDENTITY, IDENTITY.new_uid(), 9401, 1),
    ]
    out: list[pydicom.Dataset] = []
    for i, ds in enumerate(objects):
        assert ds is not None
        path = folder / f"{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append(pydicom.dcmread(path))
    return out


def test_scp_sop_classes_match_the_listener_table() -> None:
    documented = {row["UID"]: row["SOP Class"] for row in table("SOP classes as SCP")}
    expected = {str(sop_classes.VERIFICATION): "Verification", **sop_classes.STORAGE_SOP_CLASSES}
    assert documented == expected


def test_scp_transfer_syntaxes_match_the_listener_table() -> None:
    documented = {row["UID"]: row["Transfer Syntax"] for row in table("Transfer syntaxes accepted as SCP (storage)")}
    assert documented == {str(uid): uid.name for uid in sop_classes.STORAGE_TRANSFER_SYNTAXES}


def test_ae_settings_match_the_packaged_defaults() -> None:
    defaults = yaml.safe_load(DEFAULTS.read_text(encoding="utf-8"))
    for row in table("AE settings"):
        match = re.fullmatch(r"SONOPACS_([A-Z]+)__([A-Z_]+)", row["Environment variable"])
        assert match, row
        section, key = match.group(1).lower(), match.group(2).lower()
        assert key in Settings.model_fields[section].annotation.model_fields, row  # type: ignore[union-attr]
        assert row["Default"] == _yaml_text(defaults[section][key]), row


def _yaml_text(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return "[]" if value == [] else str(value)


def test_produced_objects_match_the_writers(produced: list[pydicom.Dataset]) -> None:
    documented = {(row["SOP Class UID"], row["Template"]) for row in table("Objects produced")}
    built = {(str(ds.SOPClassUID), _template(ds)) for ds in produced}
    assert documented == built
    for row in table("Objects produced"):
        assert UID(row["SOP Class UID"]).name == row["IOD"] + " Storage"


def _template(ds: pydicom.Dataset) -> str:
    if "ContentTemplateSequence" in ds:
        return f"TID {ds.ContentTemplateSequence[0].TemplateIdentifier}"
    return "-"


def test_scu_classes_and_transfer_syntax_are_what_we_send(produced: list[pydicom.Dataset]) -> None:
    scu = {row["UID"] for row in table("SOP classes as SCU")}
    assert scu == {str(sop_classes.VERIFICATION)} | {str(ds.SOPClassUID) for ds in produced}
    syntaxes = {row["UID"] for row in table("Transfer syntax of produced objects (SCU)")}
    assert syntaxes == {str(ds.file_meta.TransferSyntaxUID) for ds in produced}


def test_sr_code_table_matches_the_codes_module() -> None:
    rows = table("Coded concepts in the SR")
    documented = {(row["Code value"], row["Scheme"], row["Code meaning"]) for row in rows}
    in_code = {(c.value, c.scheme_designator, c.meaning) for c in _module_codes()}
    assert documented == in_code
    for row in rows:
        if row["Context group"].startswith("CID "):
            cid = getattr(sr_codes, "cid" + row["Context group"].removeprefix("CID "))
            assert Code(row["Code value"], row["Scheme"], row["Code meaning"]) in cid, row


def _module_codes() -> set[Code]:
    """Every Code constant of codes.py except the per-category likelihood values (one row covers them)."""
    found: set[Code] = set()
    for name, value in vars(codes).items():
        if name == "LIKELIHOOD_VALUES":
            continue
        if isinstance(value, Code):
            found.add(value)
        elif isinstance(value, dict):
            found.update(v for v in value.values() if isinstance(v, Code))
    return found


def test_character_set_is_copied_and_our_own_text_is_ascii(tmp_path: Path) -> None:
    source = write_realistic_study(tmp_path / "study", n_images=1)[0]
    ds = pydicom.dcmread(source)
    ds.SpecificCharacterSet, ds.PatientName = "ISO_IR 192", "Müller^Jürgen"
    ds.save_as(source, enforce_file_format=True)
    finding = ellipse_finding(source)
    sr = build_structured_report([finding], IDENTITY, IDENTITY.new_uid(), 9201)
    sc = build_secondary_capture(finding, render_overlay(finding), IDENTITY, IDENTITY.new_uid(), 9101, 1)
    for obj in (sr, sc):
        path = tmp_path / "out.dcm"
        obj.save_as(path, enforce_file_format=True)
        back = pydicom.dcmread(path)
        assert back.SpecificCharacterSet == "ISO_IR 192" and str(back.PatientName) == "Müller^Jürgen"
    texts = [item.TextValue for item in _walk(sr.ContentSequence) if item.ValueType == "TEXT"]
    assert texts and all(text.isascii() for text in texts)
    assert "Character sets" in DOC.read_text(encoding="utf-8")


def _walk(seq: pydicom.Sequence) -> list[pydicom.Dataset]:
    out = []
    for item in seq:
        out.append(item)
        if "ContentSequence" in item:
            out.extend(_walk(item.ContentSequence))
    return out
