"""`sonopacs serve` worker layout: an inference pool and a light pool, sized from `settings.worker`;
torch's thread count per inference process."""

from __future__ import annotations

import pytest

from sonopacs.cli import build_parser
from sonopacs.config import load_settings
from sonopacs.serve import children
from sonopacs.worker import pools
from sonopacs.worker.celery_app import QUEUES, TASK_ROUTES


def test_every_queue_is_consumed_by_exactly_one_serve_pool() -> None:
    consumed = [q for pool in pools.serve_pools(load_settings()) for q in pool.queues]
    assert sorted(consumed) == sorted(QUEUES)
    routed = {route["queue"] for route in TASK_ROUTES.values()}
    assert routed <= set(consumed)


def test_only_the_inference_pool_takes_the_model_queue() -> None:
    by_name = {pool.name: pool for pool in pools.serve_pools(load_settings())}
    assert by_name["worker-inference"].queues == ("inference",)
    assert "inference" not in by_name["worker-light"].queues
    assert {"clean", "export", "control"} <= set(by_name["worker-light"].queues)


def test_serve_children_are_worker_commands_with_configured_concurrency() -> None:
    settings = load_settings(worker={"inference_concurrency": 2, "light_concurrency": 3})
    argvs = {c.name: c.argv for c in children(settings, "site.yaml", with_dashboard=False)}
    assert set(argvs) == {"listener", "worker-inference", "worker-light"}
    parser = build_parser()
    inference = parser.parse_args(argvs["worker-inference"][3:])
    light = parser.parse_args(argvs["worker-light"][3:])
    assert (inference.queues, inference.concurrency) == ("inference", 2)
    assert (light.queues, light.concurrency) == ("control,clean,export", 3)
    assert argvs["worker-light"][3:5] == ["--config", "site.yaml"]


def test_worker_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SONOPACS_WORKER__INFERENCE_CONCURRENCY", "2")
    monkeypatch.setenv("SONOPACS_WORKER__LIGHT_CONCURRENCY", "4")
    monkeypatch.setenv("SONOPACS_WORKER__TORCH_THREADS", "3")
    worker = load_settings().worker
    assert (worker.inference_concurrency, worker.light_concurrency, worker.torch_threads) == (2, 4, 3)


@pytest.mark.parametrize(
    ("cores", "queues", "concurrency", "light", "expected"),
    [
        (2, ["inference"], 1, 1, 1),  # the 2-core box: one core for the model, one for the rest
        (16, ["inference"], 1, 2, 14),
        (16, ["inference"], 2, 2, 7),
        (2, ["clean", "inference", "export", "control"], 2, 1, 1),  # one mixed pool shares its cores
        (1, ["inference"], 1, 1, 1),  # never fewer than one
    ],
)
def test_torch_threads_default_to_the_cores_the_light_pool_leaves(
    monkeypatch: pytest.MonkeyPatch, cores: int, queues: list[str], concurrency: int, light: int, expected: int
) -> None:
    monkeypatch.setattr(pools, "cpu_count", lambda: cores)
    settings = load_settings(worker={"light_concurrency": light})
    assert pools.torch_threads_for(settings, queues, concurrency) == expected


def test_explicit_torch_threads_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pools, "cpu_count", lambda: 2)
    settings = load_settings(worker={"torch_threads": 4})
    assert pools.torch_threads_for(settings, ["inference"], 1) == 4
