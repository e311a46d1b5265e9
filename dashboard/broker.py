"""Queue depth and workers online, read from the broker itself (not from our own tables).

Redis: Celery queues are lists named after the queue, so depth is LLEN. Embedded broker: Kombu's
SQLAlchemy transport keeps messages in `kombu_message` (visible = waiting) joined to `kombu_queue`.
Workers answer Celery's broadcast `ping`; the embedded transport has no broadcast, so there the
count is unknown rather than a misleading zero. Results are cached briefly because pages poll.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sonopacs.worker.celery_app import QUEUES, get_app

if TYPE_CHECKING:
    from sonopacs.config import Settings

log = logging.getLogger(__name__)

DEFAULT_QUEUES = ("control", "clean", "inference", "export")
CACHE_SECONDS = 3.0
PING_TIMEOUT = 0.7


def queue_names() -> tuple[str, ...]:
    return tuple(dict.fromkeys([*QUEUES, *DEFAULT_QUEUES]))


def is_embedded(url: str) -> bool:
    return url.startswith(("sqla+", "sqlalchemy+"))


@dataclass
class BrokerStatus:
    queues: dict[str, int | None] = field(default_factory=dict)
    workers: list[str] | None = None
    error: str | None = None
    workers_note: str | None = None

    @property
    def workers_online(self) -> int | None:
        return None if self.workers is None else len(self.workers)

    def as_dict(self) -> dict[str, Any]:
        return {
            "queues": self.queues,
            "workers_online": self.workers_online,
            "workers": self.workers,
            "workers_note": self.workers_note,
            "error": self.error,
        }


def _redis_depths(url: str, names: tuple[str, ...]) -> dict[str, int | None]:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0)
    try:
        pipe = client.pipeline()
        for name in names:
            pipe.llen(name)
        return {name: int(n) for name, n in zip(names, pipe.execute(), strict=True)}
    finally:
        client.close()


def _sqla_depths(url: str, names: tuple[str, ...]) -> dict[str, int | None]:
    from sqlalchemy import create_engine, inspect, text

    engine = create_engine(url.split("+", 1)[1], connect_args={"timeout": 2} if "sqlite" in url else {})
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("kombu_queue"):
                return dict.fromkeys(names, 0)  # nothing was ever sent
            rows = conn.execute(
                text(
                    "SELECT q.name, COUNT(m.id) FROM kombu_queue q "
                    "LEFT JOIN kombu_message m ON m.queue_id = q.id AND m.visible = :visible "
                    "GROUP BY q.name"
                ),
                {"visible": True},
            )
            found = {str(name): int(n) for name, n in rows}
        return {name: found.get(name, 0) for name in names}
    finally:
        engine.dispose()


def queue_depths(settings: Settings) -> dict[str, int | None]:
    names = queue_names()
    url = settings.broker_url
    if url.startswith(("redis://", "rediss://", "unix://")):
        return _redis_depths(url, names)
    if is_embedded(url):
        return _sqla_depths(url, names)
    return dict.fromkeys(names, None)


def celery_app(settings: Settings) -> Any:
    """The worker's Celery app (the dashboard enqueues and inspects through it)."""
    return get_app(settings)


def workers_online(settings: Settings) -> tuple[list[str] | None, str | None]:
    """Names of workers that answered a ping, or None and why we cannot tell."""
    if is_embedded(settings.broker_url):
        return None, "Celery ping needs Redis: the embedded broker cannot broadcast. Jobs running are counted from the database."
    replies = celery_app(settings).control.ping(timeout=PING_TIMEOUT) or []
    return sorted(name for reply in replies for name in reply), None


class BrokerProbe:
    """Cached broker status for one settings object (pages poll every few seconds)."""

    def __init__(self, settings: Settings, cache_seconds: float = CACHE_SECONDS) -> None:
        self.settings = settings
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._at = 0.0
        self._value: BrokerStatus | None = None

    def status(self) -> BrokerStatus:
        with self._lock:
            if self._value is not None and time.monotonic() - self._at < self.cache_seconds:
                return self._value
            value = BrokerStatus()
            try:
                value.queues = queue_depths(self.settings)
            except Exception as exc:  # any broker failure is shown, not raised
                value.queues = dict.fromkeys(queue_names())
                value.error = f"broker unreachable: {type(exc).__name__}"
                log.warning("queue depth unavailable: %s", type(exc).__name__)
            if value.error is None:
                try:
                    value.workers, value.workers_note = workers_online(self.settings)
                except Exception as exc:
                    value.workers_note = f"ping failed: {type(exc).__name__}"
            self._value, self._at = value, time.monotonic()
            return value
