"""One typed settings model: defaults < config/default.yaml < --config FILE < SONOPACS_* environment."""

from __future__ import annotations

import json
import os
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

DEFAULT_YAML = Path(__file__).with_name("default.yaml")
CONFIG_FILE_ENV = "SONOPACS_CONFIG"


# The site file of the `load_settings` call in progress (the sources hook is a classmethod, so the
# file reaches it here rather than through the process environment).
_config_file: ContextVar[Path | None] = ContextVar("sonopacs_config_file", default=None)


class ConfigError(RuntimeError):
    """Raised at start-up when the configuration is invalid; the message names the key."""


def _checked_yaml(path: Path) -> Path:
    """pydantic-settings skips a missing or odd file silently; a site file given by name must be loud."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    return path


def _ae_title(value: str) -> str:
    value = value.strip()
    if not value or len(value) > 16 or "\\" in value or not value.isascii():
        raise ValueError("an AE title is 1-16 ASCII characters without backslash")
    return value


class _Section(BaseModel):
    """A config section: unknown keys are errors, so a typo never silently falls back to a default."""

    model_config = ConfigDict(extra="forbid")


class DicomSettings(_Section):
    ae_title: str = "SONOPACS"
    host: str = "0.0.0.0"
    port: int = Field(11112, ge=0, le=65535)  # 0: bind a free port (tests); Listener.port tells which
    # NoDecode: the environment gives a comma-separated list (A,B), split below, not JSON.
    allowed_calling_aes: Annotated[list[str], NoDecode] = Field(default_factory=list)
    require_called_ae: bool = True
    max_associations: int = Field(10, ge=1, le=1000)
    max_pdu_size: int = Field(65536, ge=0)
    # Rows x Columns x frames x samples per pixel above which an instance is refused (decompression bombs).
    max_pixel_samples: int = Field(1024**3, gt=0)
    # Rows x Columns x samples per pixel of ONE frame (checked before any decode, at the door, in the
    # worker and in /api/v1/analyze): the largest real ultrasound frame, 4096 x 4096 RGB.
    max_frame_samples: int = Field(4096 * 4096 * 3, gt=0)
    # Seconds a peer may take to send one whole PDU once its first bytes arrived (trickling peers).
    pdu_timeout: float = Field(30, gt=0)
    # TCP connections that have not sent their A-ASSOCIATE-RQ yet; beyond this the oldest is closed.
    max_half_open: int = Field(32, ge=1, le=10000)
    # Open TCP connections from one remote address (half-open and associated together).
    max_connections_per_address: int = Field(16, ge=1, le=10000)
    acse_timeout: float = Field(30, gt=0)
    dimse_timeout: float = Field(60, gt=0)
    network_timeout: float = Field(60, gt=0)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None

    @field_validator("ae_title")
    @classmethod
    def _check_ae(cls, value: str) -> str:
        return _ae_title(value)

    @field_validator("allowed_calling_aes", mode="before")
    @classmethod
    def _split_csv(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value.strip().startswith("["):
                return json.loads(value)
            return [v.strip() for v in value.split(",") if v.strip()]
        return value


class StorageSettings(_Section):
    root: Path = Path("./var/storage")
    max_instance_bytes: int = Field(512 * 1024 * 1024, gt=0)
    # Free space (MiB) under which C-STOREs get Out of Resources (0xA700) before the disk fills.
    min_free_mb: int = Field(512, ge=0)


class DatabaseSettings(_Section):
    url: SecretStr = SecretStr("sqlite:///./var/sonopacs.db")


class BrokerSettings(_Section):
    url: SecretStr | None = None
    result_backend: SecretStr | None = None


class ExportSettings(_Section):
    # dimse: C-STORE to host/port/ae_title; dicomweb: STOW-RS to dicomweb_url (same retries and backoff)
    kind: Literal["dimse", "dicomweb"] = "dimse"
    host: str | None = None
    port: int = Field(104, ge=1, le=65535)
    ae_title: str = "PACS"
    max_retries: int = Field(5, ge=0, le=100)
    backoff_base_seconds: float = Field(60, ge=0)
    backoff_max_seconds: float = Field(900, ge=0)
    timeout: float = Field(30, gt=0)
    # DICOMweb: service root (e.g. https://pacs.example/dicom-web), basic or bearer auth, TLS check
    dicomweb_url: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    bearer_token: SecretStr | None = None
    ca_bundle: Path | None = None  # PEM bundle that verifies the server (unset: the system's CAs)
    verify_tls: bool = True

    @field_validator("ae_title")
    @classmethod
    def _check_ae(cls, value: str) -> str:
        return _ae_title(value)

    @field_validator("dicomweb_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not str(value).startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return str(value).rstrip("/")

    @model_validator(mode="after")
    def _dicomweb_needs_url(self) -> ExportSettings:
        if self.kind == "dicomweb" and not self.dicomweb_url:
            raise ValueError("kind dicomweb needs export.dicomweb_url (the STOW-RS service root)")
        return self

    @property
    def enabled(self) -> bool:
        if self.kind == "dicomweb":
            return bool(self.dicomweb_url)
        return bool(self.host)


class StudySettings(_Section):
    stable_seconds: float = Field(10, ge=0)
    poll_seconds: float = Field(1.0, gt=0)


class RecoverySettings(_Section):
    """No study left behind: the reconciler's bound, task heartbeats, poison and transient limits."""

    # A study in queued/processing/exporting this long without a live task is re-enqueued once.
    stuck_seconds: float = Field(300, gt=0)
    # How often a running task proves it is alive (Job.heartbeat_at); keep well under stuck_seconds.
    heartbeat_seconds: float = Field(10, gt=0)
    # How often the monitor looks for stuck studies and due export retries.
    check_seconds: float = Field(5, gt=0)
    # A stage whose worker process died this many times (crash, OOM kill) fails its study.
    max_worker_deaths: int = Field(3, ge=1, le=100)
    # Disk full / database down inside a stage: retries with backoff before the study fails.
    transient_retries: int = Field(20, ge=0, le=1000)
    transient_backoff_max_seconds: float = Field(120, gt=0)
    # Redis (and SQS): an unacknowledged message of a vanished worker comes back after this long.
    visibility_timeout_seconds: int = Field(600, ge=1)


class RetentionSettings(_Section):
    """How long PHI stays on our disk. Only exported, unpinned studies are ever purged."""

    enabled: bool = True
    # Received originals and cleaned images: deleted this long after the study's results were exported.
    originals_days: float = Field(30, gt=0)
    # Our SC/SR/PR/SEG files (the PACS keeps its copies): deleted this long after export.
    results_days: float = Field(365, gt=0)
    check_seconds: float = Field(3600, gt=0)  # how often the stability monitor runs the purge


class DashboardSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    secret_key: SecretStr = SecretStr("change-me")
    session_max_age_seconds: int = Field(8 * 3600, gt=0)
    # auto: the cookie is Secure when the request came over https (TLS, or a trusted proxy's X-Forwarded-Proto).
    cookie_secure: Literal["auto", "always", "never"] = "auto"
    # Addresses or networks (CIDR) whose X-Forwarded-For / -Proto are believed; empty: nobody's.
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Failed logins per client address and per account before back-off; then base * 2^n seconds, capped.
    login_free_failures: int = Field(3, ge=1, le=100)
    login_backoff_base_seconds: float = Field(2, gt=0)
    login_backoff_max_seconds: float = Field(300, gt=0)
    # /readyz: how long a dependency check (and, separately, the PACS C-ECHO) is reused.
    readyz_cache_seconds: float = Field(5, ge=0)
    readyz_echo_cache_seconds: float = Field(30, ge=0)
    # Serve https directly (PEM certificate chain and key); cookies are then Secure under `auto`.
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value.strip().startswith("["):
                return json.loads(value)
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: list[str]) -> list[str]:
        import ipaddress

        for item in value:
            ipaddress.ip_network(item, strict=False)  # ValueError names the bad entry
        return value


class PipelineSettings(_Section):
    max_frames: int = Field(8, ge=1, le=1000)
    heatmap: bool = True
    presentation_state: bool = False
    segmentation: bool = False
    uid_root: str = "1.2.826.0.1.3680043.10.1471."


class WorkerSettings(_Section):
    """Worker processes `sonopacs serve` starts: one pool with the model, one for the light stages."""

    inference_concurrency: int = Field(default=2, ge=1, le=64)  # processes on queue inference (each loads the model)
    light_concurrency: int = Field(default=2, ge=1, le=64)  # processes on control, clean (+publish), export
    torch_threads: int = Field(default=0, ge=0, le=256)  # per inference process; 0: cores left by the light pool


class ModelSettings(_Section):
    weights_dir: Path | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Expected share of images without a lesion where the model runs (prior-shift correction of the
    # calibration, fitted where 4 % were normal). 0.4: diagnostic breast ultrasound (docs/models.md).
    expected_normal_fraction: float = Field(0.4, gt=0, lt=1)
    # A site calibration file from `sonopacs calibrate` (None: the shipped calibration).
    site_calibration: Path | None = None
    # Image-content scope gate (sector-shaped field, feature-space distance to the training images):
    # such images are "not assessed" with a reason. Header and colour evidence apply regardless.
    scope_gate: bool = True


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SONOPACS_", env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    dicom: DicomSettings = Field(default_factory=DicomSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    export: ExportSettings = Field(default_factory=ExportSettings)
    study: StudySettings = Field(default_factory=StudySettings)
    dashboard: DashboardSettings = Field(default_factory=DashboardSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    recovery: RecoverySettings = Field(default_factory=RecoverySettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        files = [DEFAULT_YAML]
        extra = _config_file.get() or os.environ.get(CONFIG_FILE_ENV)
        if extra:
            files.append(_checked_yaml(Path(extra)))
        return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls, yaml_file=files, deep_merge=True))

    # Derived values, kept here so every service computes them the same way.
    @property
    def database_url(self) -> str:
        return self.database.url.get_secret_value()

    @property
    def var_dir(self) -> Path:
        """Where embedded state lives (broker file, default DB): the storage root's parent."""
        return self.storage.root.resolve().parent

    @property
    def broker_url(self) -> str:
        if self.broker.url is not None:
            return self.broker.url.get_secret_value()
        return f"sqla+sqlite:///{self.var_dir / 'broker.sqlite'}"

    @property
    def result_backend_url(self) -> str | None:
        if self.broker.result_backend is not None:
            return self.broker.result_backend.get_secret_value()
        return None


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the settings, turning validation errors into a ConfigError that names each bad key."""
    token = _config_file.set(Path(config_file) if config_file is not None else None)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ConfigError(f"invalid configuration: {problems}") from exc
    finally:
        _config_file.reset(token)


_SECRET_WORDS = ("password", "secret", "token", "key")


def masked_dump(settings: Settings) -> dict[str, Any]:
    """Effective values for display: secrets and passwords inside URLs are masked."""
    data = settings.model_dump(mode="json")
    for section, values in data.items():
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            field = getattr(getattr(settings, section), key)
            if isinstance(field, SecretStr) or any(w in key for w in _SECRET_WORDS):
                values[key] = _mask(field.get_secret_value() if isinstance(field, SecretStr) else value)
    data["broker"]["effective_url"] = _mask(settings.broker_url)
    return data


def _mask(value: Any) -> Any:
    if value is None:
        return None
    text = str(value)
    if "://" in text:
        scheme, rest = text.split("://", 1)
        if "@" in rest:
            creds, host = rest.rsplit("@", 1)
            user = creds.split(":", 1)[0]
            return f"{scheme}://{user}:***@{host}"
        return text
    return "***"
