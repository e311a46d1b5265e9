"""HTML pages (server-rendered Jinja2) and the htmx fragments they poll for live updates."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from sonopacs.config import masked_dump
from sonopacs.dashboard import queries, service
from sonopacs.dashboard.actions import Action
from sonopacs.dashboard.analysis import MAX_UPLOAD_BYTES
from sonopacs.dashboard.auth import (
    Admin,
    LoggedIn,
    attempt_login,
    csrf_token,
    current_user_or_none,
    end_session,
)
from sonopacs.dashboard.params import MAX_TEXT, Offset, ResultId, StudyId

router = APIRouter(include_in_schema=False)

OVERVIEW_POLL = "every 5s"
STUDIES_POLL = "every 5s"
DETAIL_POLL = "every 2s"


def render(
    request: Request, template: str, context: dict[str, Any] | None = None, status_code: int = 200
) -> HTMLResponse:
    ctx = {
        "user": getattr(request.state, "user", None),
        "csrf_token": csrf_token(request),
        "flash": request.session.pop("flash", None),
        "path": request.url.path,
    }
    ctx.update(context or {})
    response: HTMLResponse = request.app.state.templates.TemplateResponse(
        request, template, ctx, status_code=status_code
    )
    return response


def _safe_next(target: str | None) -> str:
    """Only local paths, so the login form cannot be used to redirect elsewhere."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


@router.get("/login")
def login_form(request: Request, next: str | None = Query(None, max_length=2048)) -> Response:
    if current_user_or_none(request) is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    return render(request, "login.html", {"next": _safe_next(next), "error": None})


@router.post("/login")
def login_submit(
    request: Request,
    username: str = Form(..., max_length=64),
    password: str = Form(..., max_length=1024),
    next: str = Form("/", max_length=2048),
) -> Response:
    try:
        attempt_login(request, username, password)
    except HTTPException as exc:
        return render(
            request,
            "login.html",
            {"next": _safe_next(next), "error": exc.detail, "username": username},
            status_code=exc.status_code,
        )
    return RedirectResponse(_safe_next(next), status_code=303)


@router.post("/logout")
def logout(request: Request) -> Response:
    end_session(request)
    return RedirectResponse("/login", status_code=303)


@router.get("/")
def overview_page(request: Request, _: LoggedIn) -> Response:
    return render(request, "overview.html", {"o": service.overview(request), "poll": OVERVIEW_POLL})


@router.get("/fragments/overview")
def overview_fragment(request: Request, _: LoggedIn) -> Response:
    return render(request, "fragments/overview.html", {"o": service.overview(request)})


@dataclass
class StudyFilters:
    """The studies list's query parameters, declared once for the page and its live fragment."""

    state: str | None = Query(None, max_length=MAX_TEXT)
    received_from: str | None = Query(None, max_length=10)
    received_to: str | None = Query(None, max_length=10)
    q: str | None = Query(None, max_length=MAX_TEXT)
    offset: Offset = 0

    def form(self) -> dict[str, Any]:
        """The filters as the form shows them."""
        return {"state": self.state or "", "received_from": self.received_from or "",
                "received_to": self.received_to or "", "q": self.q or "", "offset": self.offset}


Filters = Annotated[StudyFilters, Depends()]


def _studies(request: Request, f: StudyFilters) -> tuple[dict[str, Any], Any]:
    """The form's filters and one page of matching studies (page and fragment alike)."""
    data = service.studies(request, state=f.state, received_from=f.received_from, received_to=f.received_to,
                           q=f.q, limit=50, offset=f.offset)
    return f.form(), data


@router.get("/studies")
def studies_page(request: Request, _: LoggedIn, f: Filters) -> Response:
    filters, data = _studies(request, f)
    return render(request, "studies.html", {
        "data": data, "filters": filters, "states": queries.STATES, "poll": STUDIES_POLL,
        "query": urlencode({k: v for k, v in filters.items() if v}),
    })


@router.get("/fragments/studies")
def studies_fragment(request: Request, _: LoggedIn, f: Filters) -> Response:
    filters, data = _studies(request, f)
    return render(request, "fragments/studies.html", {"data": data, "filters": filters})


def _study_live(request: Request, study: dict[str, Any]) -> tuple[str, str]:
    """The live part of the study page and a digest of it, so an unchanged poll swaps nothing."""
    template = request.app.state.templates.get_template("fragments/study_live.html")
    html = template.render({"s": study, "request": request})
    return html, hashlib.sha256(html.encode()).hexdigest()[:16]


@router.get("/studies/{study_id}")
def study_page(request: Request, study_id: StudyId, _: LoggedIn) -> Response:
    study = service.study(request, study_id)
    live, digest = _study_live(request, study)
    return render(request, "study.html", {"s": study, "live": live, "digest": digest, "poll": DETAIL_POLL})


@router.get("/fragments/studies/{study_id}")
def study_fragment(
    request: Request, study_id: StudyId, _: LoggedIn, v: str | None = Query(None, max_length=MAX_TEXT)
) -> Response:
    study = service.study(request, study_id)
    live, digest = _study_live(request, study)
    if v == digest:
        return Response(status_code=204)  # htmx keeps the page as it is: no flicker, focus kept
    return render(request, "fragments/study_live_wrapper.html",
                  {"s": study, "live": live, "digest": digest, "poll": DETAIL_POLL})


@router.post("/studies/{study_id}/{action}")
def study_action(
    request: Request, study_id: StudyId, action: str, user: Admin
) -> Response:
    if action not in ("resend", "reprocess"):
        raise HTTPException(404, "unknown action")
    act: Action = "resend" if action == "resend" else "reprocess"
    try:
        outcome = service.act(request, study_id, act, user)
        message, ok = outcome["message"], True
    except HTTPException as exc:
        message, ok = str(exc.detail), False
    if request.headers.get("HX-Request"):
        return render(request, "fragments/flash.html", {"message": message, "ok": ok})
    request.session["flash"] = {"message": message, "ok": ok}
    return RedirectResponse(f"/studies/{study_id}", status_code=303)


@router.get("/results/{result_id}/thumbnail.png")
def thumbnail(request: Request, result_id: ResultId, _: LoggedIn) -> Response:
    return service.thumbnail(request, result_id)


@router.get("/model")
def model_page(request: Request, _: LoggedIn) -> Response:
    info = service.model(request)
    return render(request, "model.html", {"m": info, "site": info.get("site")})


@router.get("/config")
def config_page(request: Request, _: Admin) -> Response:
    return render(request, "config.html", {"config": masked_dump(request.app.state.settings)})


@router.get("/audit")
def audit_page(
    request: Request,
    _: LoggedIn,
    event: str | None = Query(None, max_length=MAX_TEXT),
    actor: str | None = Query(None, max_length=MAX_TEXT),
    offset: Offset = 0,
) -> Response:
    with request.app.state.db.session() as session:
        data = queries.audit_log(session, event=event or None, actor=actor or None, limit=100, offset=offset)
    filters = {"event": event or "", "actor": actor or "", "offset": offset}
    return render(request, "audit.html", {
        "data": data, "filters": filters, "poll": OVERVIEW_POLL,
        "query": urlencode({k: v for k, v in filters.items() if v}),
    })


@router.get("/fragments/audit")
def audit_fragment(
    request: Request,
    _: LoggedIn,
    event: str | None = Query(None, max_length=MAX_TEXT),
    actor: str | None = Query(None, max_length=MAX_TEXT),
    offset: Offset = 0,
) -> Response:
    with request.app.state.db.session() as session:
        data = queries.audit_log(session, event=event or None, actor=actor or None, limit=100, offset=offset)
    return render(request, "fragments/audit.html", {"data": data})


@router.get("/analyze")
def analyze_page(request: Request, _: LoggedIn) -> Response:
    return render(request, "analyze.html", {"max_mib": MAX_UPLOAD_BYTES // 2**20})


@router.get("/docs")
def docs(request: Request, _: LoggedIn) -> Response:
    return render(request, "docs.html")


@router.get("/openapi.json")
def openapi(request: Request, _: LoggedIn) -> JSONResponse:
    """The API description, for logged-in users only (it maps every route an attacker could try)."""
    return JSONResponse(request.app.openapi())
