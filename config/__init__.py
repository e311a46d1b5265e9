"""Typed settings for every sonopacs service, read from YAML and environment variables."""

from sonopacs.config.settings import (
    BrokerSettings,
    DashboardSettings,
    DatabaseSettings,
    DicomSettings,
    ExportSettings,
    ModelSettings,
    PipelineSettings,
    Settings,
    StorageSettings,
    StudySettings,
    load_settings,
    masked_dump,
)

__all__ = [
    "BrokerSettings",
    "DashboardSettings",
    "DatabaseSettings",
    "DicomSettings",
    "ExportSettings",
    "ModelSettings",
    "PipelineSettings",
    "Settings",
    "StorageSettings",
    "StudySettings",
    "load_settings",
    "masked_dump",
]
