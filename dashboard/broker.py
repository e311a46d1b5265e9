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

from kombu import Connection

from sonopacs.worker.celery_app import EMBEDDED_TRANSPORT_OPTIONS, QUEUES, get_app, is_embedded_broker

if TYPE_CHECKING:
    from sonopacs.config import Settings

log = logging.getLogger(__name__)

DEFAULT_QUEUES = ("control", "clean", "inference", "export")
CACHE_SECONDS = 3.0
PING_TIMEOUT = 0.7


def queue_names() -> tuple[str, ...]:
    return tuple(dict.fromkeys([*QUEUES, *DEFAULT_QUEUES]))


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


def queue_depths(settings: Settings) -> dict[str, int]:
    """Messages waiting per queue, by kombu's passive queue_declare: one probe for every broker."""
    names = queue_names()
    url = settings.broker_url
    options = EMBEDDED_TRANSPORT_OPTIONS if is_embedded_broker(url) else {}
    depths: dict[str, int] = {}
    with Connection(url, connect_timeout=2, transport_options=options) as conn:
        for name in names:
            try:
                with conn.channel() as channel:  # AMQP closes a channel whose passive declare failed
                    depths[name] = int(channel.queue_declare(queue=name, passive=True).message_count)
            except conn.channel_errors:  # never declared: nothing was ever sent to it
                depths[name] = 0
    return depths


def celery_app(settings: Settings) -> Any:
    """The worker's Celery app (the dashboard enqueues and inspects through it)."""
    return get_app(settings)


def workers_online(settings: Settings) -> tuple[list[str] | None, str | None]:
    """Names of workers that answered a ping, or None and why we cannot tell."""
    if is_embedded_broker(settings.broker_url):
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
                value.queues = dict(queue_depths(self.settings))
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
