"""The Celery app, built from Settings, and the per-process settings/database lookup tasks use.

Production uses Redis (`broker.url`); the embedded default is Kombu's SQLAlchemy transport on a
SQLite file under the var directory, so `sonopacs serve` needs no server. That transport claims a
message inside `BEGIN IMMEDIATE` (one consumer per message across processes) and, with
`acks_late`, keeps the unacknowledged message in the worker until the task finishes; a task whose
pool process dies is handed back (`task_reject_on_worker_lost`), and a warm shutdown (SIGTERM)
returns reserved/ETA messages to the queue. A kill -9 of the worker's main process loses the
messages it held (the transport has no visibility timeout): the reconciler in the stability monitor
finds those studies (`worker.reconciler`, `embedded_waiting` below) and export tries are scheduled
in the database, so nothing depends on those messages surviving.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

from celery import Celery

from sonopacs.config import Settings
from sonopacs.worker import tasks  # noqa: F401 - importing registers the shared tasks on every app
from sonopacs.worker.context import SETTINGS_KEY

log = logging.getLogger(__name__)

QUEUES = ("clean", "inference", "export", "control")

TASK_ROUTES: dict[str, dict[str, str]] = {
    "sonopacs.run_pipeline": {"queue": "control"},
    "sonopacs.clean_study": {"queue": "clean"},
    "sonopacs.analyze_study": {"queue": "inference"},
    "sonopacs.publish_study": {"queue": "clean"},
    "sonopacs.export_study": {"queue": "export"},
}

# Passed to create_engine by Kombu's SQLAlchemy transport: wait for the SQLite write lock, do not fail.
EMBEDDED_TRANSPORT_OPTIONS: dict[str, Any] = {"connect_args": {"timeout": 30}}

_lock = threading.Lock()
_apps: dict[str, Celery] = {}


def settings_key(settings: Settings) -> str:
    """A stable identity for a configuration (secrets included, never logged)."""
    return json.dumps(
        {"db": settings.database_url, "broker": settings.broker_url, "cfg": settings.model_dump_json()},
        sort_keys=True,
    )


def is_embedded_broker(url: str) -> bool:
    return url.startswith(("sqla+sqlite", "sqlalchemy+sqlite"))


def prepare_embedded_broker(url: str) -> None:
    """Create the broker file's folder and switch it to WAL so producers never block the consumer."""
    if not is_embedded_broker(url):
        return
    path = url.split("///", 1)[-1]
    if not path or path == ":memory:":
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()
    _create_broker_tables(url)


def _create_broker_tables(url: str) -> None:
    """Let Kombu create its tables now, once, so processes starting together do not race to."""
    from kombu import Connection
    from sqlalchemy.exc import OperationalError

    from sonopacs.worker.embedded_broker import TRANSPORT_PATH

    for attempt in range(3):
        try:
            # Same options as the app's: Kombu caches one engine per URL for the whole process.
            options = dict(EMBEDDED_TRANSPORT_OPTIONS)
            with Connection(
                url.split("+", 1)[1], transport=TRANSPORT_PATH, transport_options=options
            ) as conn:
                conn.default_channel._open()  # creates the tables (metadata.create_all)
            return
        except OperationalError:
            if attempt == 2:
                raise


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured from settings; tasks find the settings again through `app.conf`."""
    broker = settings.broker_url
    prepare_embedded_broker(broker)
    app = Celery("sonopacs", set_as_current=False)
    conf: dict[str, Any] = {
        "broker_url": broker,
        "result_backend": settings.result_backend_url,
        "task_ignore_result": settings.result_backend_url is None,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": "control",
        "task_routes": TASK_ROUTES,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_track_started": False,
        "broker_connection_retry_on_startup": True,
        # With acks_late the broker redelivers a running task whose connection dropped; cancel
        # our copy instead of running the same stage twice at once.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "enable_utc": True,
        SETTINGS_KEY: settings,
    }
    if is_embedded_broker(broker):
        from sonopacs.worker.embedded_broker import TRANSPORT_PATH

        # Same transport, polled every 0.25 s instead of 1 s; its URL is the bare SQLite URL.
        conf["broker_url"] = broker.split("+", 1)[1]
        conf["broker_transport"] = TRANSPORT_PATH
        conf["broker_transport_options"] = dict(EMBEDDED_TRANSPORT_OPTIONS)
    else:
        # Redis: an unacked message comes back after this long if its worker vanished (minutes, not
        # Kombu's hour). A countdown message held longer may be delivered twice; the export's schedule
        # claim (`worker.export.take_retry`) and the running-Job check (`worker.liveness`) make the
        # second copy stop. RabbitMQ hands a dead consumer's messages back at once and ignores it.
        visibility = int(settings.recovery.visibility_timeout_seconds)
        conf["broker_transport_options"] = {"visibility_timeout": visibility}
    app.conf.update(conf)
    return app


def get_app(settings: Settings) -> Celery:
    """One app per configuration per process (producers: monitor, CLI actions, dashboard)."""
    key = settings_key(settings)
    with _lock:
        app = _apps.get(key)
        if app is None:
            app = _apps[key] = make_celery(settings)
        return app


def purge_delivered_messages(settings: Settings, older_than_seconds: float = 3600) -> int:
    """Embedded broker only: delete message rows delivered more than `older_than_seconds` ago.

    Kombu's SQLAlchemy transport never deletes a delivered message (it only sets visible = false,
    stamping the time, local and naive); a message handed back is inserted again as a new row,
    so old invisible rows are dead weight and the file would otherwise grow forever.
    """
    url = settings.broker_url
    if not is_embedded_broker(url):
        return 0
    path = url.split("///", 1)[-1]
    if not path or not Path(path).exists():
        return 0
    from datetime import datetime, timedelta

    cutoff = (datetime.now() - timedelta(seconds=older_than_seconds)).isoformat(sep=" ")
    conn = sqlite3.connect(path, timeout=30)
    try:
        with conn:
            cur = conn.execute(
                "DELETE FROM kombu_message WHERE visible = 0 AND timestamp IS NOT NULL AND timestamp < ?",
                (cutoff,),
            )
            return int(cur.rowcount)
    except sqlite3.OperationalError:  # no table yet (nothing ever sent)
        return 0
    finally:
        conn.close()


def embedded_waiting(settings: Settings, task_ids: set[str]) -> set[str]:
    """Embedded broker only: which of these task ids still wait, undelivered, in the broker file.

    A message handed to a worker is invisible from then on, and one whose worker was killed -9 is
    never handed back; the reconciler uses this to tell a queued-but-waiting task from a lost one.
    """
    url = settings.broker_url
    if not task_ids or not is_embedded_broker(url):
        return set()
    path = url.split("///", 1)[-1]
    if not path or not Path(path).exists():
        return set()
    conn = sqlite3.connect(path, timeout=30)
    try:
        payloads = [row[0] for row in conn.execute("SELECT payload FROM kombu_message WHERE visible = 1")]
    except sqlite3.OperationalError:  # no table yet
        return set()
    finally:
        conn.close()
    return {tid for tid in task_ids if any(tid in str(payload) for payload in payloads)}
