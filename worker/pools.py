"""Worker pool layout: which queues each `sonopacs serve` worker consumes, and torch's thread count.

Why two pools: with one pool on every queue, each process loaded the model and a 2-second inference
could occupy every process, so a study's 0.3-second clean or publish waited 9-19 s behind other
studies' inference. A dedicated inference pool (the only processes that import torch) and a light
pool for the short stages keep those stages moving while the model runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from sonopacs.config import Settings

INFERENCE_QUEUES = ("inference",)
LIGHT_QUEUES = ("control", "clean", "export")

_torch_threads: int | None = None  # decided by the runner before the pool forks; inherited


@dataclass(frozen=True)
class Pool:
    """One `sonopacs worker` process tree started by serve."""

    name: str
    queues: tuple[str, ...]
    concurrency: int


def serve_pools(settings: Settings) -> list[Pool]:
    """The worker pools `sonopacs serve` starts, from `settings.worker`."""
    return [
        Pool("worker-inference", INFERENCE_QUEUES, settings.worker.inference_concurrency),
        Pool("worker-light", LIGHT_QUEUES, settings.worker.light_concurrency),
    ]


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask: containers and taskset restrict it)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def torch_threads_for(settings: Settings, queues: Iterable[str], concurrency: int) -> int:
    """Threads per inference process: explicit, else the cores not used by light work, shared.

    A worker that also consumes the light queues shares the cores among its own processes; an
    inference-only worker leaves `light_concurrency` cores to the light pool beside it. Measured on
    the 2-core box (docs/measurements.md, "Pipeline latency"): one thread per process beats two under load.
    """
    if settings.worker.torch_threads > 0:
        return settings.worker.torch_threads
    cores = cpu_count()
    names = set(queues)
    if names & set(LIGHT_QUEUES):
        return max(1, cores // max(1, concurrency))
    return max(1, (cores - settings.worker.light_concurrency) // max(1, concurrency))


def set_torch_threads(threads: int) -> None:
    """Called by the runner in the worker's main process; pool processes inherit it by fork."""
    global _torch_threads
    _torch_threads = max(1, int(threads))


def apply_torch_threads(settings: Settings) -> int:
    """Limit torch in this process (call before inference); the serve layout when no runner set it."""
    import torch

    threads = _torch_threads
    if threads is None:
        threads = torch_threads_for(settings, INFERENCE_QUEUES, settings.worker.inference_concurrency)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
