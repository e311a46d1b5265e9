"""What pages and API both need: each function returns the same data to either front end."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import Response

from sonopacs.dashboard import queries
from sonopacs.dashboard.actions import Action, run_action
from sonopacs.dashboard.auth import CurrentUser
from sonopacs.dashboard.model_info import model_info
from sonopacs.dashboard.site_monitor import site_outcomes
from sonopacs.dashboard.templating import DISCLAIMER
from sonopacs.dashboard.thumbnails import ThumbnailError, render_png, resolve_in_storage
from sonopacs.db.models import Study


def overview(request: Request) -> dict[str, Any]:
    with request.app.state.db.session() as session:
        data = queries.overview(session)
    data["broker"] = request.app.state.broker.status().as_dict()
    data["storage"] = request.app.state.storage.status()
    return data


FIRST_DAY = date(1900, 1, 1)
LAST_DAY = date.max - timedelta(days=1)  # the query's end is the day after: it must exist


def model(request: Request) -> dict[str, Any]:
    """The running model (``model_info``) and, where its folder is there, what it has reported at
    this site over the last 30 days (counts only), judged against the share of normal images the
    Analyzer assumes."""
    info = model_info(request.app.state.settings)
    if info["available"]:
        info["site"] = site_outcomes(request.app.state.db, info["calibration"]["expected_normal_fraction"])
    return info


def parse_day(text: str | None, name: str) -> date | None:
    """A YYYY-MM-DD filter day, or 422 for anything else (including days the query cannot handle)."""
    if not text:
        return None
    try:
        day = date.fromisoformat(text)
    except ValueError as exc:
        raise HTTPException(422, f"{name} must be a date like 2026-01-31") from exc
    if not FIRST_DAY <= day <= LAST_DAY:
        raise HTTPException(422, f"{name} must be between {FIRST_DAY} and {LAST_DAY}")
    return day


def studies(
    request: Request,
    *,
    state: str | None,
    received_from: str | None,
    received_to: str | None,
    q: str | None,
    limit: int,
    offset: int,
) -> dict[str, Any]:
    if state and state not in queries.STATES:
        raise HTTPException(422, f"state must be one of {', '.join(queries.STATES)}")
    with request.app.state.db.session() as session:
        return queries.list_studies(
            session,
            state=state or None,
            received_from=parse_day(received_from, "received_from"),
            received_to=parse_day(received_to, "received_to"),
            q=q,
            limit=max(1, min(limit, 500)),
            offset=max(0, offset),
        )


def study(request: Request, study_id: int) -> dict[str, Any]:
    with request.app.state.db.session() as session:
        data = queries.study_detail(session, study_id)
    if data is None:
        raise HTTPException(404, "no such study")
    data["disclaimer"] = DISCLAIMER
    return data


def study_state(request: Request, study_id: int) -> dict[str, Any]:
    with request.app.state.db.session() as session:
        data = queries.study_state(session, study_id)
    if data is None:
        raise HTTPException(404, "no such study")
    return data


def act(request: Request, study_id: int, action: Action, user: CurrentUser) -> dict[str, Any]:
    """Resend or reprocess a study as this (admin) user; the worker writes the audit row."""
    with request.app.state.db.session() as session:
        row = session.get(Study, study_id)
        if row is None:
            raise HTTPException(404, "no such study")
        uid = row.study_instance_uid
    result = run_action(request.app.state.settings, action, uid, actor=user.actor)
    message = {
        "resend": "Results queued for export again.",
        "reprocess": "Study queued for processing again.",
    }[action]
    return {"ok": True, "action": action, "study_id": study_id, "message": message, "result": result}


def thumbnail(request: Request, result_id: int) -> Response:
    with request.app.state.db.session() as session:
        row = queries.result_object(session, result_id)
        if row is None:
            raise HTTPException(404, "no such result")
        kind, stored = row.kind, row.path
    if kind.lower() != "sc":
        raise HTTPException(404, "only Secondary Capture results have an image")
    try:
        path = resolve_in_storage(request.app.state.settings.storage.root, stored)
        data = render_png(path)
    except ThumbnailError as exc:
        raise HTTPException(404, str(exc)) from exc
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})
