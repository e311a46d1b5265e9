"""`sonopacs worker`: a Celery worker (prefork pool) on the configured broker."""

from __future__ import annotations

import logging
import os
import socket

from config import Settings
from worker.celery_app import QUEUES, make_celery

log = logging.getLogger(__name__)


def parse_queues(queues: str) -> list[str]:
    names = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = sorted(set(names) - set(QUEUES))
    if unknown or not names:
        raise ValueError(f"unknown queue(s) {unknown or queues!r}; known: {', '.join(QUEUES)}")
    return names


def run_worker(settings: Settings, queues: str = ",".join(QUEUES), concurrency: int = 1) -> int:
    """Consume `queues` until SIGTERM (warm shutdown: running tasks finish, the rest go back).

    Always the prefork pool, even for one process: a task that kills its process (a crash in
    native code, the OOM killer) is then rejected and redelivered instead of taking the worker down.
    """
    app = make_celery(settings)
    names = parse_queues(queues)
    worker = app.Worker(
        queues=names,
        concurrency=max(1, concurrency),
        pool="prefork",
        loglevel="INFO",
        hostname=f"sonopacs-{os.getpid()}@{socket.gethostname()}",
        without_gossip=True,
        without_mingle=True,
        without_heartbeat=True,
        optimization="fair",
    )
    log.info("worker consuming %s with %s process(es)", ",".join(names), max(1, concurrency))
    worker.start()
    return int(worker.exitcode or 0)
