"""`sonopacs worker`: a Celery worker (prefork pool) on the configured broker.

A worker on the inference queue fixes torch's thread count before its pool forks; a worker on that
queue alone (serve's inference pool) also loads the model in each pool process as it starts, so the
first study does not pay for the load.
"""

from __future__ import annotations

import logging
import os
import socket

from celery import signals

from sonopacs.config import Settings
from sonopacs.worker.celery_app import QUEUES, make_celery
from sonopacs.worker.pools import set_torch_threads, torch_threads_for

# A pool process that loads the model at start needs longer than Celery's 4 s to report alive.
MODEL_PROCESS_ALIVE_TIMEOUT_SECONDS = 120.0

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
    if "inference" in names:
        set_torch_threads(torch_threads_for(settings, names, concurrency))
    if names == ["inference"]:  # a dedicated model pool; a mixed one still loads on first use
        app.conf.worker_proc_alive_timeout = MODEL_PROCESS_ALIVE_TIMEOUT_SECONDS
        signals.worker_process_init.connect(lambda **_: _load_model(settings), weak=False)
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


def _load_model(settings: Settings) -> None:
    """Pool process start (inference worker): torch threads, then the model, before any task.

    A model that fails to load here is only logged: the analyze task loads it again and records
    the reason on the study, as it would have without this warm-up.
    """
    from sonopacs.worker.findings import get_analyzer
    from sonopacs.worker.pools import apply_torch_threads

    try:
        threads = apply_torch_threads(settings)
        get_analyzer(settings)
        log.info("inference process %s: model loaded, %s torch thread(s)", os.getpid(), threads)
    except Exception as exc:  # noqa: BLE001 - see the docstring
        log.warning("inference process %s: model not preloaded: %s", os.getpid(), exc)
