"""The default export retry budget: 1 try + 5 retries, waiting 60+120+240+480+900 s (30 minutes)."""

from __future__ import annotations

from sonopacs.config import load_settings
from sonopacs.worker.export import backoff_seconds


def test_default_backoff_is_five_retries_over_thirty_minutes() -> None:
    settings = load_settings()
    waits = [backoff_seconds(settings, n) for n in range(settings.export.max_retries)]
    assert waits == [60, 120, 240, 480, 900]
    assert sum(waits) == 30 * 60


def test_backoff_is_capped() -> None:
    settings = load_settings(export={"backoff_base_seconds": 10, "backoff_max_seconds": 45})
    assert [backoff_seconds(settings, n) for n in range(4)] == [10, 20, 40, 45]
