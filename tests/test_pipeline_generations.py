"""A run overtaken by a newer generation never replaces that generation's results."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select, update

from sonopacs.config import Settings
from sonopacs.db import Database, ResultObject, Study
from sonopacs.db.migrate import upgrade
from sonopacs.worker import stages
from sonopacs.worker.export import result_files
from tests.support.pipeline_db import register_files
from tests.support.sonopacs_proc import analyzer_or_skip
from tests.support.us_realistic import write_realistic_study


def _set_generation(db: Database, study_id: int, generation: int) -> None:
    with db.session() as session:
        session.execute(update(Study).where(Study.id == study_id).values(generation=generation))


def test_a_stale_publish_does_not_replace_the_newer_generation(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(pipeline={"max_frames": 1})
    analyzer_or_skip(settings)
    upgrade(settings.database_url)
    db = Database(settings.database_url)
    try:
        study_id = register_files(db, write_realistic_study(tmp_path / "study", n_images=1))
        _set_generation(db, study_id, 1)
        stages.clean_study(settings, db, study_id, 1)
        stages.analyze_study(settings, db, study_id, 1)
        # Meanwhile an instance reopens the study and generation 2 runs to the end first ...
        _set_generation(db, study_id, 2)
        for stage in (stages.clean_study, stages.analyze_study, stages.publish_study):
            stage(settings, db, study_id, 2)
        # ... then generation 1's publish, already past its start-of-stage check, finishes.
        stages.publish_study(settings, db, study_id, 1)

        with db.session() as session:
            rows = session.scalars(select(ResultObject).where(ResultObject.study_id == study_id)).all()
            current = {r.id: r.generation for r in rows if not r.superseded}
        assert set(current.values()) == {2}
        assert {r.generation for r in rows} == {2}  # generation 1's objects were never swapped in
        assert {current[i] for i in result_files(settings, db, study_id)} == {2}
    finally:
        db.dispose()
