"""Read-only database queries behind the pages, the API and the metrics; plain dicts out.

Written in portable SQLAlchemy so they run the same on SQLite and PostgreSQL. SQLite hands back naive
datetimes; `as_utc()` treats them as UTC, which is how the models write them.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from statistics import median
from typing import Any

from sqlalchemy import Select, case, func, or_, select
from sqlalchemy.orm import Session

from sonopacs.db.models import (
    AuditEvent,
    ExportAttempt,
    Instance,
    Job,
    JobState,
    ResultObject,
    Series,
    Study,
    StudyState,
    as_utc,
)

STATES = [s.value for s in StudyState]
FAILED_STATES = (StudyState.FAILED, StudyState.EXPORT_FAILED)


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no data (shown as a dash, not as zero)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, int(-(-q * len(ordered) // 1)))
    return ordered[min(rank, len(ordered)) - 1]


def studies_by_state(session: Session, since: datetime | None = None) -> dict[str, int]:
    """Count of studies per state (every state present, zero when none); optionally received since."""
    stmt = select(Study.state, func.count()).group_by(Study.state)
    if since is not None:
        stmt = stmt.where(Study.first_received_at >= since)
    counts = {state: 0 for state in STATES}
    for state, n in session.execute(stmt):
        counts[StudyState(state).value] = int(n)
    return counts


def instances_received(session: Session, since: datetime | None = None) -> int:
    stmt = select(func.count(Instance.id))
    if since is not None:
        stmt = stmt.where(Instance.received_at >= since)
    return int(session.scalar(stmt) or 0)


def export_failures(session: Session) -> int:
    return int(session.scalar(select(func.count(ExportAttempt.id)).where(ExportAttempt.success.is_(False))) or 0)


def latencies(session: Session, since: datetime) -> list[float]:
    """Seconds from a study's latest 'queued' transition to the 'results_ready' that followed it.

    Taken from the audit trail, so reprocessed studies count from their new start, not from when
    their images first arrived.
    """
    stmt = (
        select(AuditEvent.study_id, AuditEvent.time, AuditEvent.to_state)
        .where(AuditEvent.event == "study_state")
        .where(AuditEvent.to_state.in_([StudyState.QUEUED.value, StudyState.RESULTS_READY.value]))
        .where(AuditEvent.time >= since - timedelta(days=1))
        .order_by(AuditEvent.study_id, AuditEvent.time, AuditEvent.id)
    )
    out: list[float] = []
    queued_at: dict[int, datetime] = {}
    for study_id, raw_time, to_state in session.execute(stmt):
        when = as_utc(raw_time)
        if study_id is None or when is None:
            continue
        if to_state == StudyState.QUEUED.value:
            queued_at[study_id] = when
        elif study_id in queued_at and when >= since:
            out.append((when - queued_at.pop(study_id)).total_seconds())
    return out


def results_ready_count(session: Session, since: datetime) -> int:
    stmt = (
        select(func.count(AuditEvent.id))
        .where(AuditEvent.event == "study_state")
        .where(AuditEvent.to_state == StudyState.RESULTS_READY.value)
        .where(AuditEvent.time >= since)
    )
    return int(session.scalar(stmt) or 0)


def recent_failures(session: Session, limit: int = 10) -> list[dict[str, Any]]:
    """The latest failed studies and failed stage runs, newest first."""
    rows: list[dict[str, Any]] = []
    studies = session.scalars(
        select(Study).where(Study.state.in_(FAILED_STATES)).order_by(Study.updated_at.desc()).limit(limit)
    )
    for s in studies:
        rows.append(
            {
                "study_id": s.id,
                "accession_number": s.accession_number,
                "what": f"study {s.state.value.replace('_', ' ')}",
                "reason": s.state_reason,
                "time": as_utc(s.updated_at),
            }
        )
    jobs = session.execute(
        select(Job, Study.accession_number)
        .join(Study, Study.id == Job.study_id)
        .where(Job.state == JobState.FAILED)
        .order_by(Job.finished_at.desc(), Job.id.desc())
        .limit(limit)
    )
    for job, accession in jobs:
        rows.append(
            {
                "study_id": job.study_id,
                "accession_number": accession,
                "what": f"{job.stage} failed (attempt {job.attempt})",
                "reason": job.error,
                "time": as_utc(job.finished_at or job.queued_at),
            }
        )
    rows.sort(key=lambda r: r["time"] or datetime.min.replace(tzinfo=UTC), reverse=True)
    return rows[:limit]


def overview(session: Session, now: datetime | None = None) -> dict[str, Any]:
    """Everything the overview page shows that comes from the database (the broker adds the rest)."""
    now = now or datetime.now(UTC)
    today = _day_start(now.date())
    day_ago = now - timedelta(days=1)
    lat = latencies(session, day_ago)
    med = median(lat) if lat else None
    return {
        "now": now,
        "studies_today": studies_by_state(session, since=today),
        "studies_all": studies_by_state(session),
        "instances_today": instances_received(session, since=today),
        "throughput_last_hour": results_ready_count(session, now - timedelta(hours=1)),
        "throughput_last_24h": results_ready_count(session, day_ago),
        "latency_seconds": {"median": med, "p95": percentile(lat, 0.95), "n": len(lat)},
        "recent_failures": recent_failures(session),
        "jobs_running": int(
            session.scalar(select(func.count(Job.id)).where(Job.state == JobState.RUNNING)) or 0
        ),
    }


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _study_row(s: Study, n_instances: int) -> dict[str, Any]:
    return {
        "id": s.id,
        "study_instance_uid": s.study_instance_uid,
        "accession_number": s.accession_number,
        "patient_id": s.patient_id,
        "study_date": s.study_date,
        "study_description": s.study_description,
        "state": s.state.value,
        "state_reason": s.state_reason,
        "n_instances": n_instances,
        "run_count": s.run_count,
        "first_received_at": as_utc(s.first_received_at),
        "last_received_at": as_utc(s.last_received_at),
        "updated_at": as_utc(s.updated_at),
    }


def list_studies(
    session: Session,
    *,
    state: str | None = None,
    received_from: date | None = None,
    received_to: date | None = None,
    q: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> dict[str, Any]:
    """Studies newest first, filtered by state, by the UTC day range (inclusive) in which their first
    image arrived, and by a search that matches the start of the accession number or patient ID."""
    stmt: Select[Any] = select(Study)
    if state:
        stmt = stmt.where(Study.state == StudyState(state))
    if received_from:
        stmt = stmt.where(Study.first_received_at >= _day_start(received_from))
    if received_to:
        stmt = stmt.where(Study.first_received_at < _day_start(received_to) + timedelta(days=1))
    if q and q.strip():
        pattern = _escape_like(q.strip()) + "%"
        stmt = stmt.where(
            or_(
                Study.accession_number.ilike(pattern, escape="\\"),
                Study.patient_id.ilike(pattern, escape="\\"),
            )
        )
    total = int(session.scalar(select(func.count()).select_from(stmt.subquery())) or 0)
    studies = list(
        session.scalars(stmt.order_by(Study.last_received_at.desc(), Study.id.desc()).limit(limit).offset(offset))
    )
    counts: dict[int, int] = {}
    if studies:
        counts = {
            sid: int(n)
            for sid, n in session.execute(
                select(Instance.study_id, func.count(Instance.id))
                .where(Instance.study_id.in_([s.id for s in studies]))
                .group_by(Instance.study_id)
            )
        }
    return {
        "total": total,
        "limit": limit,
        "offset": offset,
        "items": [_study_row(s, counts.get(s.id, 0)) for s in studies],
    }


def study_state(session: Session, study_id: int) -> dict[str, Any] | None:
    s = session.get(Study, study_id)
    if s is None:
        return None
    return {"id": s.id, "state": s.state.value, "state_reason": s.state_reason, "updated_at": as_utc(s.updated_at)}


def _result_row(r: ResultObject) -> dict[str, Any]:
    return {
        "id": r.id,
        "kind": r.kind,
        "generation": r.generation,
        "sop_instance_uid": r.sop_instance_uid,
        "series_instance_uid": r.series_instance_uid,
        "source_instance_id": r.source_instance_id,
        "model_name": r.model_name,
        "model_version": r.model_version,
        "summary": r.summary or {},
        "superseded": r.superseded,
        "created_at": as_utc(r.created_at),
    }


def study_detail(session: Session, study_id: int) -> dict[str, Any] | None:
    """One study with its instances, stage runs, results, export attempts and audit trail."""
    s = session.get(Study, study_id)
    if s is None:
        return None
    instances = session.execute(
        select(Instance, Series.series_number, Series.modality)
        .join(Series, Series.id == Instance.series_id)
        .where(Instance.study_id == study_id)
        .order_by(Series.series_number, Instance.instance_number, Instance.id)
    )
    jobs = session.scalars(select(Job).where(Job.study_id == study_id).order_by(Job.queued_at, Job.id))
    results = session.scalars(
        select(ResultObject)
        .where(ResultObject.study_id == study_id)
        .order_by(ResultObject.superseded, ResultObject.generation.desc(), ResultObject.id)
    )
    exports = session.scalars(
        select(ExportAttempt).where(ExportAttempt.study_id == study_id).order_by(ExportAttempt.started_at.desc())
    )
    audit = session.scalars(
        select(AuditEvent).where(AuditEvent.study_id == study_id).order_by(AuditEvent.time.desc()).limit(200)
    )
    inst_rows = [
        {
            "id": i.id,
            "series_number": series_number,
            "modality": modality,
            "instance_number": i.instance_number,
            "sop_instance_uid": i.sop_instance_uid,
            "number_of_frames": i.number_of_frames,
            "size_bytes": i.size_bytes,
            "state": i.state.value,
            "state_reason": i.state_reason,
            "received_at": as_utc(i.received_at),
        }
        for i, series_number, modality in instances
    ]
    out = _study_row(s, len(inst_rows))
    out.update(
        {
            "patient_name": s.patient_name,
            "generation": s.generation,
            "instances": inst_rows,
            "jobs": [
                {
                    "id": j.id,
                    "stage": j.stage,
                    "state": j.state.value,
                    "generation": j.generation,
                    "attempt": j.attempt,
                    "queued_at": as_utc(j.queued_at),
                    "started_at": as_utc(j.started_at),
                    "finished_at": as_utc(j.finished_at),
                    "seconds": j.seconds,
                    "error": j.error,
                }
                for j in jobs
            ],
            "results": [_result_row(r) for r in results],
            "exports": [
                {
                    "id": e.id,
                    "destination": e.destination,
                    "attempt": e.attempt,
                    "started_at": as_utc(e.started_at),
                    "finished_at": as_utc(e.finished_at),
                    "success": e.success,
                    "n_sent": e.n_sent,
                    "n_failed": e.n_failed,
                    "error": e.error,
                }
                for e in exports
            ],
            "audit": [_audit_row(a) for a in audit],
        }
    )
    return out


def _audit_row(a: AuditEvent, accession: str | None = None) -> dict[str, Any]:
    return {
        "id": a.id,
        "time": as_utc(a.time),
        "actor": a.actor,
        "event": a.event,
        "study_id": a.study_id,
        "accession_number": accession,
        "from_state": a.from_state,
        "to_state": a.to_state,
        "detail": a.detail,
    }


def audit_log(
    session: Session,
    *,
    event: str | None = None,
    actor: str | None = None,
    study_id: int | None = None,
    limit: int = 100,
    offset: int = 0,
) -> dict[str, Any]:
    stmt: Select[Any, Any] = select(AuditEvent, Study.accession_number).outerjoin(Study, Study.id == AuditEvent.study_id)
    if event:
        stmt = stmt.where(AuditEvent.event == event)
    if actor:
        stmt = stmt.where(AuditEvent.actor == actor)
    if study_id is not None:
        stmt = stmt.where(AuditEvent.study_id == study_id)
    total = int(session.scalar(select(func.count()).select_from(stmt.subquery())) or 0)
    rows = session.execute(stmt.order_by(AuditEvent.time.desc(), AuditEvent.id.desc()).limit(limit).offset(offset))
    return {"total": total, "limit": limit, "offset": offset, "items": [_audit_row(a, acc) for a, acc in rows]}


def result_object(session: Session, result_id: int) -> ResultObject | None:
    return session.get(ResultObject, result_id)


def stage_histograms(session: Session, buckets: list[float]) -> dict[str, dict[str, Any]]:
    """Per stage: cumulative counts per bucket, sum and count of finished job durations (one query)."""
    columns = [func.sum(case((Job.seconds <= b, 1), else_=0)) for b in buckets]
    stmt = (
        select(Job.stage, func.count(Job.id), func.coalesce(func.sum(Job.seconds), 0.0), *columns)
        .where(Job.seconds.is_not(None))
        .where(Job.state.in_([JobState.SUCCEEDED, JobState.FAILED]))
        .group_by(Job.stage)
    )
    out: dict[str, dict[str, Any]] = {}
    for stage, count, total, *cums in session.execute(stmt):
        out[stage] = {
            "count": int(count),
            "sum": float(total or 0.0),
            "buckets": [(b, int(c or 0)) for b, c in zip(buckets, cums, strict=True)],
        }
    return out


CATEGORIES = ("1", "3", "4A", "4B", "4C", "5")


def image_outcomes(session: Session, since: datetime | None = None) -> dict[tuple[str, str], dict[str, Any]]:
    """Per model (name, version): its current per-image results (the Secondary Captures; superseded
    ones left out), optionally created since, counted as given a lesion, normal or not assessed, and
    by AI likelihood category. Counts only: nothing that identifies a patient or a study."""
    stmt = select(ResultObject.model_name, ResultObject.model_version, ResultObject.summary).where(
        ResultObject.kind == "sc", ResultObject.superseded.is_(False))
    if since is not None:
        stmt = stmt.where(ResultObject.created_at >= since)
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for name, version, summary in session.execute(stmt):
        s = summary if isinstance(summary, dict) else {}
        row = out.setdefault((name or "unknown", version or "unknown"), {
            "images": 0, "lesion": 0, "normal": 0, "not_assessed": 0, "categories": dict.fromkeys(CATEGORIES, 0)})
        row["images"] += 1
        if s.get("assessed") is False:
            row["not_assessed"] += 1
        elif s.get("label") == "normal":
            row["normal"] += 1
        else:
            row["lesion"] += 1
        category = s.get("likelihood_category")
        if category in row["categories"]:
            row["categories"][category] += 1
    return out
