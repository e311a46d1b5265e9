"""Pipeline stage bodies (clean, analyze, publish), called by the Celery tasks in worker.tasks.

Each takes the study's database id and the generation being processed, is idempotent, and records
its own Job row, timings and failure reason. Built in the pipeline issue (#5).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from config import Settings
    from db import Database


def clean_study(settings: Settings, db: Database, study_id: int, generation: int) -> None:
    raise NotImplementedError("clean stage: issue #5")


def analyze_study(settings: Settings, db: Database, study_id: int, generation: int) -> None:
    raise NotImplementedError("analyze stage: issue #5")


def publish_study(settings: Settings, db: Database, study_id: int, generation: int) -> None:
    raise NotImplementedError("publish stage: issue #5")
