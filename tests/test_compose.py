"""docker-compose.yml and the Dockerfile: valid against the Compose Specification's JSON schema, and in
step with the settings model and the CLI (no Docker engine runs here, so this is what can be checked).

The schema is the one the check-jsonschema package vendors from the compose-spec project
(``check_jsonschema/builtin_schemas/vendor/compose-spec.json``), not a hand-written subset.
"""

from __future__ import annotations

import importlib.resources
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from sonopacs.cli import build_parser
from sonopacs.config.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
SONOPACS_SERVICES = ("migrate", "listener", "worker", "monitor", "dashboard")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())  # PyYAML resolves the `<<` merge keys as Compose does
    assert isinstance(data, dict)
    return data


def _compose_schema() -> dict[str, Any]:
    resource = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return dict(json.loads(resource.read_text()))


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _setting_exists(name: str) -> bool:
    """SONOPACS_<SECTION>__<KEY> names a field of the settings model."""
    match = re.fullmatch(r"SONOPACS_([A-Z]+)__([A-Z_]+)", name)
    if not match:
        return False
    section, key = match.group(1).lower(), match.group(2).lower()
    field = Settings.model_fields.get(section)
    if field is None or field.annotation is None:
        return False
    return key in field.annotation.model_fields


def test_compose_file_is_valid_against_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = _compose_schema()
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    errors = sorted(validator_class(schema).iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_the_schema_catches_mistakes(compose: dict[str, Any]) -> None:
    """Guard against a schema that accepts anything."""
    schema = _compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    broken = json.loads(json.dumps(compose))
    broken["services"]["listener"]["restart_policy"] = "always"  # not a service key
    assert list(validator.iter_errors(broken))


def test_the_issue_s_services_exist(compose: dict[str, Any]) -> None:
    assert {"redis", "postgres", "orthanc", "listener", "worker"} <= set(compose["services"])


def test_environment_names_exist_in_the_settings_model(compose: dict[str, Any]) -> None:
    names = {n for s in compose["services"].values() for n in _environment(s) if n.startswith("SONOPACS_")}
    names |= set(re.findall(r"\b(SONOPACS_[A-Z_]+)=", DOCKERFILE.read_text()))
    assert names, "no SONOPACS_* variables found"
    unknown = sorted(n for n in names if not _setting_exists(n))
    assert not unknown, f"not in config/settings.py: {unknown}"


def test_environment_values_load(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SONOPACS_SERVICES:
        for key, value in _environment(compose["services"][name]).items():
            monkeypatch.setenv(key, value)
    settings = load_settings()
    assert settings.dicom.port == 11112 and settings.dicom.allowed_calling_aes == ["ORTHANC"]
    assert settings.database_url.startswith("postgresql")


def test_services_point_at_each_other(compose: dict[str, Any]) -> None:
    services = compose["services"]
    listener_env = _environment(services["listener"])
    port = int(listener_env["SONOPACS_DICOM__PORT"])
    assert any(str(p).endswith(f":{port}") for p in services["listener"]["ports"])
    orthanc_env = _environment(services["orthanc"])
    modalities = json.loads(orthanc_env["ORTHANC__DICOM_MODALITIES"])
    assert ["SONOPACS", "listener", port] in modalities.values()
    assert listener_env["SONOPACS_DICOM__AE_TITLE"] == "SONOPACS"
    assert listener_env["SONOPACS_EXPORT__HOST"] == "orthanc"
    assert listener_env["SONOPACS_EXPORT__PORT"] == orthanc_env["ORTHANC__DICOM_PORT"]
    assert listener_env["SONOPACS_EXPORT__AE_TITLE"] == orthanc_env["ORTHANC__DICOM_AET"]
    for name in ("listener", "worker", "monitor", "dashboard"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_service_commands_are_cli_subcommands(compose: dict[str, Any]) -> None:
    parser = build_parser()
    for name in SONOPACS_SERVICES:
        service = compose["services"][name]
        if "entrypoint" in service:
            continue  # the stability monitor is started directly (see the file)
        parser.parse_args(list(service["command"]))  # exits (SystemExit) on an unknown subcommand


def test_dockerfile_and_dockerignore() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.1[1-9]", text, re.M)
    assert 'ENTRYPOINT ["/usr/bin/tini", "--", "sonopacs"]' in text
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", "var", "tests"} <= set(ignored)
