"""Settings: YAML defaults, file and environment layering, key-naming errors, secret masking."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sonopacs.cli import main
from sonopacs.config import load_settings, masked_dump
from sonopacs.config.settings import ConfigError


def test_defaults_match_the_architecture_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(__import__("os").environ):
        if key.startswith("SONOPACS_"):
            monkeypatch.delenv(key)
    s = load_settings()
    assert s.dicom.ae_title == "SONOPACS"
    assert s.dicom.port == 11112
    assert s.storage.root == Path("./var/storage")
    assert s.database_url == "sqlite:///./var/sonopacs.db"
    assert s.broker_url.startswith("sqla+sqlite:///") and s.broker_url.endswith("/var/broker.sqlite")
    assert s.export.host is None and not s.export.enabled
    assert s.study.stable_seconds == 10
    assert s.dashboard.port == 8080


def test_environment_overrides_file_and_file_overrides_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "site.yaml"
    cfg.write_text("dicom:\n  port: 4242\n  ae_title: FROMFILE\nexport:\n  host: pacs.local\n")
    monkeypatch.setenv("SONOPACS_DICOM__AE_TITLE", "FROMENV")
    monkeypatch.setenv("SONOPACS_STUDY__STABLE_SECONDS", "3")
    s = load_settings(cfg)
    assert s.dicom.port == 4242
    assert s.dicom.ae_title == "FROMENV"
    assert s.study.stable_seconds == 3
    assert s.export.host == "pacs.local" and s.export.enabled


@pytest.mark.parametrize(
    ("env", "value", "key"),
    [
        ("SONOPACS_DICOM__PORT", "not-a-port", "dicom.port"),
        ("SONOPACS_DICOM__PORT", "70000", "dicom.port"),
        ("SONOPACS_DICOM__AE_TITLE", "THIS_AE_TITLE_IS_FAR_TOO_LONG", "dicom.ae_title"),
        ("SONOPACS_EXPORT__MAX_RETRIES", "-1", "export.max_retries"),
    ],
)
def test_invalid_values_fail_naming_the_key(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, key: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_settings()


def test_unknown_key_in_file_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("dicom:\n  prot: 104\n")
    with pytest.raises(ConfigError, match=r"dicom\.prot"):
        load_settings(cfg)


def test_config_show_masks_secrets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SONOPACS_DATABASE__URL", "postgresql://sono:hunter2@db:5432/sono")
    monkeypatch.setenv("SONOPACS_BROKER__URL", "redis://:brokerpw@redis:6379/0")
    monkeypatch.setenv("SONOPACS_DASHBOARD__SECRET_KEY", "s3cr3t-value")
    assert main(["config", "show"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and "brokerpw" not in out and "s3cr3t-value" not in out
    data = json.loads(out)
    assert data["database"]["url"] == "postgresql://sono:***@db:5432/sono"
    assert data["dashboard"]["secret_key"] == "***"
    assert masked_dump(load_settings())["dicom"]["port"] == 11112


def test_cli_reports_invalid_config_with_exit_code_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SONOPACS_DICOM__PORT", "abc")
    assert main(["config", "show"]) == 2
    assert "dicom.port" in capsys.readouterr().err
