"""How a delivered message judges an earlier running row of the same task id (real database):
a dead process is a worker death, a live one means a duplicate delivery, an earlier retry round
is neither."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select, update

from sonopacs.config import Settings
from sonopacs.db import Database, Job, JobState
from sonopacs.db.migrate import upgrade
from sonopacs.worker import liveness
from tests.support.worker_proc import add_study


def rows(db: Database) -> list[tuple[JobState, str | None]]:
    with db.session() as session:
        return [(j.state, j.error) for j in session.scalars(select(Job).order_by(Job.id))]


def test_earlier_running_rows_are_judged_by_their_process(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings("sqlite")
    upgrade(settings.database_url)
    db = Database(settings.database_url)
    study_id, _ = add_study(db)
    try:
        first = liveness.begin(db, settings, study_id, "clean", 1, "task-1")
        assert first.job_id is not None and first.deaths == 0

        # The same message again in this very process: the earlier run is over (a death).
        again = liveness.begin(db, settings, study_id, "clean", 1, "task-1")
        assert again.job_id is not None and again.deaths == 1
        assert rows(db)[0][0] == JobState.FAILED and (rows(db)[0][1] or "").startswith(liveness.LOST)

        # A Celery retry round of the same task id: the earlier row ended by raising, no death.
        retried = liveness.begin(db, settings, study_id, "clean", 1, "task-1", retries=1)
        assert retried.job_id is not None and retried.deaths == 1
        assert rows(db)[1] == (JobState.FAILED, "interrupted; the task was retried")

        # Still running in a live process on this machine (pid 1): this copy is a duplicate.
        live = "1@" + liveness.identity().split("@", 1)[1]
        with db.session() as session:
            session.execute(update(Job).where(Job.id == retried.job_id).values(worker=live))
        assert liveness.begin(db, settings, study_id, "clean", 1, "task-1", retries=1).job_id is None
        assert rows(db)[-1][0] == JobState.RUNNING
    finally:
        db.dispose()


def test_working_on_charges_deaths_to_the_instance(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings("sqlite")
    upgrade(settings.database_url)
    db = Database(settings.database_url)
    study_id, _ = add_study(db)
    try:
        liveness.working_on(7)  # outside a task: nothing to note, nothing raised
        for n in range(2):
            delivery = liveness.begin(db, settings, study_id, "clean", 1, "task-2")
            assert delivery.job_id is not None and delivery.instance_deaths == ({7: n} if n else {})
            with liveness.tracking(db, delivery.job_id, {}):  # below the limit: nothing refused yet
                liveness.working_on(7)  # then the process "dies": the next begin finds its row
        final = liveness.begin(db, settings, study_id, "clean", 1, "task-2")
        assert final.job_id is not None and final.deaths == 0 and final.instance_deaths == {7: 2}
        with liveness.tracking(db, final.job_id, final.instance_deaths):
            try:
                liveness.working_on(7)
            except liveness.PoisonInstance as exc:
                assert "worker died 2 times while processing this instance" in str(exc)
            else:
                raise AssertionError("a poisoned instance must be refused")
            liveness.working_on(8)  # any other instance goes on
    finally:
        db.dispose()
