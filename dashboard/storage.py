"""Disk usage and what retention removes next, for the overview (cached: walking the storage is slow)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

from sonopacs.config import Settings
from sonopacs.db import Database
from sonopacs.db.models import utcnow
from sonopacs.worker import retention

CACHE_SECONDS = 60.0
LOOKAHEAD = timedelta(days=7)


class StorageProbe:
    def __init__(self, settings: Settings, db: Database, cache_seconds: float = CACHE_SECONDS) -> None:
        self.settings, self.db, self.cache_seconds = settings, db, cache_seconds
        self._lock = threading.Lock()
        self._at = 0.0
        self._value: dict[str, Any] | None = None

    def status(self) -> dict[str, Any]:
        with self._lock:
            if self._value is None or time.monotonic() - self._at >= self.cache_seconds:
                self._value, self._at = self._measure(), time.monotonic()
            return self._value

    def _measure(self) -> dict[str, Any]:
        now = utcnow()
        due = retention.plan(self.settings, self.db, now)
        soon = retention.plan(self.settings, self.db, now + LOOKAHEAD)
        return {
            "usage": retention.disk_usage(self.settings),
            "min_free_mb": getattr(self.settings.storage, "min_free_mb", None),
            "retention_enabled": self.settings.retention.enabled,
            "due_now": {"items": len(due), "bytes": sum(i.bytes for i in due)},
            "due_7_days": {"items": len(soon), "bytes": sum(i.bytes for i in soon)},
            "next": [
                {"study_id": i.study_id, "part": i.part, "exported_at": i.exported_at.isoformat()} for i in soon[:10]
            ],
        }
