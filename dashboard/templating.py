"""Jinja2 environment for the pages: autoescaped, with small formatting filters."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi.templating import Jinja2Templates

from sonopacs.db.models import as_utc

DISCLAIMER = "AI result, for assistance only, not for diagnosis"

STATE_LABELS = {
    "receiving": "Receiving",
    "queued": "Queued",
    "processing": "Processing",
    "results_ready": "Results ready",
    "exporting": "Exporting",
    "exported": "Exported",
    "export_failed": "Export failed",
    "failed": "Failed",
    "received": "Received",
    "processed": "Processed",
    "skipped": "Skipped",
    "running": "Running",
    "succeeded": "Succeeded",
    "retrying": "Retrying",
}


def fmt_time(value: datetime | None, with_date: bool = True) -> str:
    if value is None:
        return "–"
    value = as_utc(value).astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S")


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def fmt_dicom_date(value: str | None) -> str:
    if not value or len(value) != 8 or not value.isdigit():
        return value or "–"
    return f"{value[:4]}-{value[4:6]}-{value[6:]}"


def fmt_bytes(value: int | None) -> str:
    if value is None:
        return "–"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(value)


def fmt_prob(value: Any) -> str:
    try:
        return f"{float(value) * 100:.1f} %"
    except (TypeError, ValueError):
        return str(value)


def make_templates(directory: Path) -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(directory))
    env = templates.env
    env.filters["dt"] = fmt_time
    env.filters["dur"] = fmt_duration
    env.filters["dicom_date"] = fmt_dicom_date
    env.filters["bytes"] = fmt_bytes
    env.filters["prob"] = fmt_prob
    env.filters["state_label"] = lambda s: STATE_LABELS.get(str(s), str(s))
    env.globals["DISCLAIMER"] = DISCLAIMER
    env.globals["STATE_LABELS"] = STATE_LABELS
    return templates
