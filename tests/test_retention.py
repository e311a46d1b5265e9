"""Retention: only exported, unpinned studies lose their files, on schedule, each deletion audited.

Real database (migrated by `sonopacs db upgrade`, SQLite and PostgreSQL), real files, the real CLI.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from sonopacs import cli
from sonopacs.config import Settings
from sonopacs.db import AuditEvent, Database, Instance, Study, StudyState
from sonopacs.db.migrate import upgrade
from sonopacs.worker import retention
from sonopacs.worker.actions import ActionError, reprocess_study, resend_study, set_pinned
from tests.support.dashboard_demo import DemoStudy, seed_processed_study


def _with_files(db: Database, root: Path, demo: DemoStudy) -> list[Path]:
    """The demo study's received instances and cleaned copies as real files on disk."""
    with db.session() as session:
        paths = [root / p for p in session.execute(select(Instance.path).where(Instance.study_id == demo.id)).scalars()]
    work = root / "pipeline" / demo.study_instance_uid / "g1" / "clean"
    for path in [*paths, work / "1_0_0.npz"]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"PHI" * 100)
    return paths


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def env(request: pytest.FixtureRequest, make_settings: Callable[..., Settings]) -> tuple[Settings, Database]:
    settings = make_settings(request.param)
    upgrade(settings.database_url)
    return settings, Database(settings.database_url)


def test_only_exported_unpinned_studies_are_purged_on_schedule(env: tuple[Settings, Database]) -> None:
    settings, db = env
    root = settings.storage.root
    now = datetime.now(UTC)
    done = seed_processed_study(db, root, patient_id="P-1", accession="A-1", now=now)
    pinned = seed_processed_study(db, root, patient_id="P-2", accession="A-2", now=now)
    failed = seed_processed_study(db, root, patient_id="P-3", accession="A-3", now=now, state=StudyState.EXPORT_FAILED)
    files = {s.id: _with_files(db, root, s) for s in (done, pinned, failed)}
    set_pinned(settings, pinned.study_instance_uid, True, actor="test")

    assert retention.plan(settings, db, now + timedelta(days=29)) == []  # not due yet
    month = now + timedelta(days=31)
    due = retention.plan(settings, db, month)
    assert [(i.study_id, i.part) for i in due] == [(done.id, "originals")]  # not the pinned, not the failed
    assert due[0].bytes == 3 * 300

    purged = retention.purge(settings, db, month)
    assert [(i.study_id, i.part) for i in purged] == [(done.id, "originals")]
    assert not any(p.exists() for p in files[done.id]) and not (root / "pipeline" / done.study_instance_uid).exists()
    assert all(p.exists() for p in files[pinned.id] + files[failed.id])
    assert done.sc_path.exists()  # results are kept longer
    with db.session() as session:
        study = session.get(Study, done.id)
        assert study is not None and study.originals_purged_at is not None and study.results_purged_at is None
        events = session.execute(select(AuditEvent).where(AuditEvent.study_id == done.id,
                                                          AuditEvent.event == "purge_originals")).scalars().all()
        assert len(events) == 1 and events[0].actor == "retention" and "deleted 3 files" in str(events[0].detail)
    assert retention.purge(settings, db, month) == []  # once only
    with pytest.raises(ActionError, match="deleted by retention"):
        reprocess_study(settings, done.study_instance_uid, actor="test")

    year = now + timedelta(days=366)
    assert [(i.study_id, i.part) for i in retention.purge(settings, db, year)] == [(done.id, "results")]
    assert not done.sc_path.exists() and pinned.sc_path.exists()
    with pytest.raises(ActionError, match="deleted by retention"):
        resend_study(settings, done.study_instance_uid, actor="test")


def test_purge_dry_run_lists_without_deleting(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(retention={"originals_days": 0.00001})
    upgrade(settings.database_url)
    db = Database(settings.database_url)
    demo = seed_processed_study(db, settings.storage.root, now=datetime.now(UTC) - timedelta(hours=1))
    files = _with_files(db, settings.storage.root, demo)
    monkeypatch.setattr(cli, "_settings", lambda args: settings)

    assert cli.main(["purge", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"would delete originals of study {demo.study_instance_uid}" in out and "1 item(s) would delete" in out
    assert all(p.exists() for p in files)
    assert cli.main(["purge"]) == 0
    assert "deleted originals" in capsys.readouterr().out
    assert not any(p.exists() for p in files)
