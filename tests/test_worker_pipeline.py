"""The pipeline chain is enqueued exactly once per generation, on a real broker with a real worker.

Runs on SQLite + the embedded broker and on PostgreSQL + Redis. The worker is a real
`sonopacs worker` subprocess with two prefork processes; two monitors race for the same study.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select

from sonopacs.config import Settings
from sonopacs.db import AuditEvent, Database, Job, JobState, Study, StudyState
from sonopacs.db.migrate import upgrade
from sonopacs.db.models import utcnow
from sonopacs.worker.stability import enqueue_stable_studies
from tests.support.net import wait_until
from tests.support.worker_proc import add_instance, add_study, reopen, worker_process, write_config

ACTIVE = (StudyState.RECEIVING, StudyState.QUEUED, StudyState.PROCESSING)


def race(settings: Settings, n: int = 2, rounds: int = 3, shift: float = 0.0) -> list[int]:
    """n monitors, each with its own engine, call enqueue_stable_studies at the same moment."""
    barrier = threading.Barrier(n)
    found: list[int] = []
    errors: list[BaseException] = []

    def monitor() -> None:
        db = Database(settings.database_url)
        try:
            barrier.wait()
            for _ in range(rounds):
                found.extend(enqueue_stable_studies(settings, db, utcnow() + timedelta(seconds=shift)))
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)
        finally:
            db.dispose()

    threads = [threading.Thread(target=monitor) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return found


def settled(db: Database, study_id: int, runs: int) -> Study | None:
    """The study once its `runs`-th pipeline run has ended (any state but receiving/queued/processing)."""
    with db.session() as session:
        study = session.get(Study, study_id)
        assert study is not None
        done = session.scalar(
            select(func.count(Job.id)).where(
                Job.study_id == study_id, Job.stage == "pipeline", Job.state == JobState.SUCCEEDED
            )
        )
        busy = session.scalar(
            select(func.count(Job.id)).where(
                Job.study_id == study_id,
                Job.state.in_((JobState.QUEUED, JobState.RUNNING, JobState.RETRYING)),
            )
        )
        return study if study.state not in ACTIVE and done == runs and not busy else None


def pipeline_jobs(db: Database, study_id: int) -> list[tuple[int, JobState]]:
    with db.session() as session:
        rows = session.execute(
            select(Job.generation, Job.state)
            .where(Job.study_id == study_id, Job.stage == "pipeline")
            .order_by(Job.id)
        ).all()
    return [(int(g), s) for g, s in rows]


def check_outcome(db: Database, study: Study) -> None:
    """A run ends failed with its reason (stage not there yet / failed) or with results."""
    if study.state == StudyState.FAILED:
        assert study.state_reason
        with db.session() as session:
            failed = session.scalars(
                select(Job).where(Job.study_id == study.id, Job.state == JobState.FAILED)
            ).all()
        assert failed and all(j.error for j in failed)
        assert any(j.error and j.error in (study.state_reason or "") for j in failed)
    else:
        # No export destination in these settings: results are kept and the audit trail says so.
        assert study.state == StudyState.RESULTS_READY
        with db.session() as session:
            skipped = session.scalars(
                select(AuditEvent.detail).where(
                    AuditEvent.study_id == study.id, AuditEvent.event == "export_skipped"
                )
            ).all()
        assert skipped and "no export destination" in (skipped[-1] or "")


def test_chain_enqueued_once_per_generation(
    backend: str, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(backend, study={"stable_seconds": 30, "poll_seconds": 0.2})
    upgrade(settings.database_url)
    db = Database(settings.database_url)
    study_id, _ = add_study(db, quiet_for=60)
    young_id, _ = add_study(db, quiet_for=0)  # still receiving: must not be touched

    config = write_config(settings, tmp_path / "sonopacs.yaml")
    with worker_process(config, tmp_path / "worker.log"):
        assert race(settings) == [study_id]
        with db.session() as session:
            young = session.get(Study, young_id)
            assert young is not None and young.state == StudyState.RECEIVING
            assert young.enqueued_generation == 0
            session.delete(young)
        study = wait_until(lambda: settled(db, study_id, runs=1), timeout=90)
        assert isinstance(study, Study)
        check_outcome(db, study)
        assert study.enqueued_generation == 1 and study.run_count == 1
        assert pipeline_jobs(db, study_id) == [(1, JobState.SUCCEEDED)]

        # A late instance reopens the study: not stable yet, then exactly one more run.
        reopen(db, study_id)
        assert race(settings) == []
        assert race(settings, shift=settings.study.stable_seconds + 1) == [study_id]
        assert race(settings, shift=settings.study.stable_seconds + 5) == []  # no storm
        study = wait_until(lambda: settled(db, study_id, runs=2), timeout=90)
        assert isinstance(study, Study)
        check_outcome(db, study)
        assert study.generation == 2 and study.enqueued_generation == 2 and study.run_count == 2
        assert pipeline_jobs(db, study_id) == [(1, JobState.SUCCEEDED), (2, JobState.SUCCEEDED)]

    with db.session() as session:
        claims = session.scalars(
            select(AuditEvent.detail).where(
                AuditEvent.study_id == study_id,
                AuditEvent.event == "study_state",
                AuditEvent.to_state == "queued",
            )
        ).all()
    assert sorted(c or "" for c in claims) == [
        "stable: generation 1 enqueued",
        "stable: generation 2 enqueued",
    ]
    db.dispose()


def test_stage_failure_is_recorded_and_reprocess_runs_a_new_generation(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """A stage that raises marks its Job and the study failed with the reason and ends the chain;
    the worker keeps serving; `reprocess` bumps the generation and enqueues it directly."""
    from sonopacs.worker.actions import reprocess_study

    settings = make_settings("sqlite")
    upgrade(settings.database_url)
    db = Database(settings.database_url)
    broken_id, broken_uid = add_study(db)
    add_instance(db, broken_id, tmp_path / "gone.dcm")  # its file is missing: clean cannot read it
    config = write_config(settings, tmp_path / "sonopacs.yaml")
    with worker_process(config, tmp_path / "worker.log", concurrency=1):
        assert enqueue_stable_studies(settings, db) == [broken_id]
        study = wait_until(lambda: settled(db, broken_id, runs=1), timeout=60)
        assert isinstance(study, Study) and study.state == StudyState.FAILED
        assert study.state_reason and study.state_reason.startswith("clean: ")
        with db.session() as session:
            jobs = session.execute(
                select(Job.stage, Job.state, Job.error).where(Job.study_id == broken_id).order_by(Job.id)
            ).all()
        assert [(s, st) for s, st, _ in jobs] == [
            ("pipeline", JobState.SUCCEEDED),
            ("clean", JobState.FAILED),
        ]
        assert jobs[1][2] and jobs[1][2] in study.state_reason

        assert reprocess_study(settings, broken_uid, actor="test") == 2
        study = wait_until(lambda: settled(db, broken_id, runs=2), timeout=60)
        assert isinstance(study, Study) and study.state == StudyState.FAILED and study.generation == 2
    assert pipeline_jobs(db, broken_id) == [(1, JobState.SUCCEEDED), (2, JobState.SUCCEEDED)]
    assert enqueue_stable_studies(settings, db) == []  # the monitor does not enqueue it again
    with db.session() as session:
        audit = session.scalars(
            select(AuditEvent.detail).where(AuditEvent.study_id == broken_id, AuditEvent.actor == "test")
        ).all()
    assert audit == ["reprocess requested: generation 2"]
    db.dispose()
