"""Dashboard data queries and broker probes on both backends (SQLite + embedded broker,
PostgreSQL + Redis): filters, search, overview numbers, stage histograms, real queue depth."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from sonopacs.config import Settings
from sonopacs.dashboard import queries
from sonopacs.dashboard.broker import BrokerProbe, queue_depths
from sonopacs.db.audit import record
from sonopacs.db.models import Job, JobState, Study, StudyState
from sonopacs.db.session import Database
from tests.support.dashboard_demo import prepare, seed_processed_study


def _db(make_settings: Callable[..., Settings], backend: str) -> tuple[Settings, Database]:
    settings = make_settings(backend)
    db = Database(settings.database_url)
    prepare(db)
    return settings, db


def test_list_filter_search_and_detail(make_settings: Callable[..., Settings], backend: str) -> None:
    settings, db = _db(make_settings, backend)
    a = seed_processed_study(db, settings.storage.root, patient_id="P_1%", accession="A-1")
    seed_processed_study(db, settings.storage.root, patient_id="P-2", accession="B-2", state=StudyState.EXPORT_FAILED)
    with db.session() as s:
        assert queries.list_studies(s)["total"] == 2
        assert [r["accession_number"] for r in queries.list_studies(s, state="export_failed")["items"]] == ["B-2"]
        assert queries.list_studies(s, q="a-")["items"][0]["id"] == a.id  # case-insensitive prefix
        assert queries.list_studies(s, q="P_1%")["total"] == 1  # wildcards are literal
        assert queries.list_studies(s, q="P_")["total"] == 1
        assert queries.list_studies(s, q="-1")["total"] == 0  # prefix, not substring
        today = datetime.now(UTC).date()
        assert queries.list_studies(s, received_from=today, received_to=today)["total"] == 2
        assert queries.list_studies(s, received_to=today - timedelta(days=2))["total"] == 0
        page = queries.list_studies(s, limit=1, offset=1)
        assert page["total"] == 2 and len(page["items"]) == 1
        detail = queries.study_detail(s, a.id)
        assert detail is not None
        assert detail["n_instances"] == 2 and len(detail["results"]) == 2
        assert detail["jobs"][0]["queued_at"].tzinfo is not None
        assert queries.study_detail(s, 10_000) is None
    db.dispose()


def test_overview_numbers(make_settings: Callable[..., Settings], backend: str) -> None:
    settings, db = _db(make_settings, backend)
    seed_processed_study(db, settings.storage.root, accession="A")
    failed = seed_processed_study(db, settings.storage.root, accession="B", state=StudyState.EXPORT_FAILED)
    with db.session() as s:
        study = s.get(Study, failed.id)
        assert study is not None
        # A reprocess: queued again 10 s ago, results 4 s later; latency counts from the new queueing.
        now = datetime.now(UTC)
        for to, ago in (("queued", 10), ("results_ready", 6)):
            row = record(s, "study_state", "worker", study=study, from_state="x", to_state=to)
            row.time = now - timedelta(seconds=ago)
        s.add(Job(study_id=failed.id, stage="analyze", state=JobState.RUNNING, generation=2))
    with db.session() as s:
        o = queries.overview(s)
        lat = queries.latencies(s, now - timedelta(days=1))
    assert o["studies_today"]["exported"] == 1 and o["studies_today"]["export_failed"] == 1
    assert o["instances_today"] == 4
    assert o["throughput_last_24h"] == 3
    assert o["latency_seconds"]["n"] == 3
    assert 3.9 <= min(lat) <= 4.1
    assert o["jobs_running"] == 1
    assert [f["accession_number"] for f in o["recent_failures"]][:1] == ["B"]
    db.dispose()


def test_stage_histograms_and_audit(make_settings: Callable[..., Settings], backend: str) -> None:
    settings, db = _db(make_settings, backend)
    demo = seed_processed_study(db, settings.storage.root)
    with db.session() as s:
        h = queries.stage_histograms(s, [1.0, 2.0, 5.0])
        assert h["clean"] == {"count": 1, "sum": pytest.approx(1.4), "buckets": [(1.0, 0), (2.0, 1), (5.0, 1)]}
        assert h["analyze"]["buckets"] == [(1.0, 0), (2.0, 0), (5.0, 1)]
        log = queries.audit_log(s, study_id=demo.id, event="study_state")
        assert log["total"] == 5 and log["items"][0]["to_state"] == "exported"
        assert queries.export_failures(s) == 0
    db.dispose()


def test_queue_depth_reads_the_real_broker(make_settings: Callable[..., Settings], backend: str) -> None:
    from sonopacs.worker.celery_app import get_app

    settings, db = _db(make_settings, backend)
    assert queue_depths(settings)["export"] == 0  # nothing ever sent: tables/keys may not exist
    app = get_app(settings)
    for _ in range(2):
        app.send_task("sonopacs.export_study", args=(1,), queue="export")
    app.send_task("sonopacs.clean_study", args=(1, 1), queue="clean")
    depths = queue_depths(settings)
    assert depths["export"] == 2 and depths["clean"] == 1 and depths["inference"] == 0
    status = BrokerProbe(settings, cache_seconds=0).status()
    assert status.error is None and status.queues["export"] == 2
    if backend == "postgres":  # Redis: a real ping, answered by nobody
        assert status.workers == [] and status.workers_online == 0
    else:
        assert status.workers is None and status.workers_note
    db.dispose()


def test_unreachable_broker_is_reported_not_raised(make_settings: Callable[..., Settings]) -> None:
    from tests.support.net import free_port

    settings = make_settings(broker={"url": f"redis://127.0.0.1:{free_port()}/0"})
    status = BrokerProbe(settings, cache_seconds=0).status()
    assert status.error and "unreachable" in status.error
    assert set(status.queues.values()) == {None}
