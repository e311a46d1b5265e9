"""Liveness and readiness: `/healthz` says the process answers; `/readyz` checks what it depends on.

Database, broker and storage decide readiness (503 when one fails). The export destination is
checked with a real C-ECHO and reported, but an unreachable PACS only makes the status "degraded":
images are still received and processed, and exports are retried when it comes back.
"""

from __future__ import annotations

import os
import tempfile
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


def readiness(settings: Settings, db: Database) -> tuple[int, dict[str, Any]]:
    """HTTP status and body for /readyz."""
    checks = {
        "database": check_database(db),
        "broker": check_broker(settings),
        "storage": check_storage(settings),
        "destination": check_destination(settings),
    }
    required_ok = all(checks[name]["status"] == "ok" for name in ("database", "broker", "storage"))
    if not required_ok:
        overall, code = "fail", 503
    elif checks["destination"]["status"] == "fail":
        overall, code = "degraded", 200
    else:
        overall, code = "ok", 200
    return code, {"status": overall, "checks": checks}
