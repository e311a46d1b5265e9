"""Liveness and readiness: `/healthz` says the process answers; `/readyz` checks what it depends on.

Database, broker and storage decide readiness (503 when one fails). Anyone may ask whether the node
is ready, and gets only that; the checks themselves, and the export destination's C-ECHO, are shown to
logged-in users. An unreachable PACS only makes the status "degraded": images are still received and
processed, and exports are retried when it comes back. Results are reused for a few seconds (the
C-ECHO for longer), so polling /readyz cannot turn into a flood of probes against the PACS or the disk.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

from sonopacs.db import Database
from sonopacs.worker.export import echo_destination

if TYPE_CHECKING:
    from sonopacs.config import Settings

Check = dict[str, Any]


def _timed(fn: Callable[[], str | None]) -> Check:
    start = time.monotonic()
    try:
        detail = fn()
        status = "ok"
    except Exception as exc:  # a failed dependency is a result here, not an error
        detail, status = f"{type(exc).__name__}: {_short(exc)}", "fail"
    return {"status": status, "detail": detail, "ms": round((time.monotonic() - start) * 1000, 1)}


def _short(exc: Exception) -> str:
    """First line of the message, without credentials that a URL in it might carry."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    return first.split("@")[-1][:200]


def check_database(db: Database) -> Check:
    def probe() -> str | None:
        with db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return None

    return _timed(probe)


def check_broker(settings: Settings) -> Check:
    def probe() -> str | None:
        from kombu import Connection

        with Connection(settings.broker_url, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return None

    return _timed(probe)


def check_storage(settings: Settings) -> Check:
    def probe() -> str | None:
        root = settings.storage.root
        root.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".readyz-", dir=root)
        os.close(fd)
        os.unlink(name)
        return None

    return _timed(probe)


def check_destination(settings: Settings, timeout: float = 3.0) -> Check:
    if not settings.export.enabled:
        return {"status": "skipped", "detail": "no export destination configured", "ms": 0.0}

    return _timed(lambda: echo_destination(settings, timeout))


REQUIRED = ("database", "broker", "storage")


def summarize(checks: dict[str, Check]) -> tuple[int, dict[str, Any]]:
    """HTTP status and detailed body from the checks (destination optional)."""
    required_ok = all(checks[name]["status"] == "ok" for name in REQUIRED)
    if not required_ok:
        overall, code = "fail", 503
    elif checks.get("destination", {}).get("status") == "fail":
        overall, code = "degraded", 200
    else:
        overall, code = "ok", 200
    return code, {"status": overall, "checks": checks}


def readiness(settings: Settings, db: Database) -> tuple[int, dict[str, Any]]:
    """HTTP status and detailed body, every check run now (no cache)."""
    return summarize({
        "database": check_database(db),
        "broker": check_broker(settings),
        "storage": check_storage(settings),
        "destination": check_destination(settings),
    })


class _Cached:
    """One check's last result, reused for `ttl` seconds; concurrent callers wait for one probe."""

    def __init__(self, probe: Callable[[], Check], ttl: float, clock: Callable[[], float]) -> None:
        self.probe, self.ttl, self.clock = probe, ttl, clock
        self._value: Check | None = None
        self._at = 0.0
        self._lock = threading.Lock()

    def get(self) -> Check:
        with self._lock:
            now = self.clock()
            if self._value is None or now - self._at >= self.ttl:
                self._value, self._at = self.probe(), now
            return dict(self._value, age_s=round(now - self._at, 1))


class Readiness:
    """The dashboard's /readyz: cached checks, a public yes/no and the details for logged-in users."""

    def __init__(self, settings: Settings, db: Database, clock: Callable[[], float] = time.monotonic) -> None:
        ttl = settings.dashboard.readyz_cache_seconds
        self._checks = {
            "database": _Cached(lambda: check_database(db), ttl, clock),
            "broker": _Cached(lambda: check_broker(settings), ttl, clock),
            "storage": _Cached(lambda: check_storage(settings), ttl, clock),
            "destination": _Cached(lambda: check_destination(settings),
                                   settings.dashboard.readyz_echo_cache_seconds, clock),
        }

    def public(self) -> tuple[int, dict[str, str]]:
        """Ready or not, nothing else; never C-ECHOes the PACS."""
        ok = all(self._checks[name].get()["status"] == "ok" for name in REQUIRED)
        return (200, {"status": "ready"}) if ok else (503, {"status": "not ready"})

    def detailed(self) -> tuple[int, dict[str, Any]]:
        return summarize({name: cached.get() for name, cached in self._checks.items()})
