"""What a task needs from its app: the settings it was built with and one database per process.

Kept apart from `celery_app` so that the tasks can use it while `celery_app` imports the tasks.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from celery import Celery, signals

from sonopacs.config import Settings
from sonopacs.db import Database

SETTINGS_KEY = "sonopacs_settings"
_lock = threading.Lock()
_databases: dict[tuple[int, str], Database] = {}


def app_settings(app: Celery) -> Settings:
    settings = app.conf.get(SETTINGS_KEY)
    if not isinstance(settings, Settings):
        raise RuntimeError("this Celery app was not built by sonopacs.worker.celery_app.make_celery")
    return settings


def database_for(settings: Settings) -> Database:
    """One engine per database URL per process (a forked pool process gets its own)."""
    key = (os.getpid(), settings.database_url)
    with _lock:
        db = _databases.get(key)
        if db is None:
            db = _databases[key] = Database(settings.database_url)
        return db


@signals.worker_process_init.connect
def _after_fork(**_: Any) -> None:
    """A pool process must not share pooled SQLite/PostgreSQL connections with its parent."""
    with _lock:
        for (pid, _url), db in list(_databases.items()):
            if pid != os.getpid():
                db.engine.dispose(close=False)
    try:
        from kombu.transport.sqlalchemy import Channel

        for engine, _factory in Channel._engines.values():
            engine.dispose(close=False)
    except ImportError:  # pragma: no cover - sqlalchemy transport always ships with kombu
        pass
