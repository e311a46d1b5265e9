"""REST API `/api/v1`: the dashboard's data and actions as JSON (OpenAPI at `/docs`).

Authentication is the same signed session cookie as the pages. Scripts: `GET /api/v1/auth/csrf`,
`POST /api/v1/auth/login` with that token in `X-CSRF-Token`, then send the token returned by the
login on every later POST.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, Field

from sonopacs.config import masked_dump
from sonopacs.dashboard import queries, service
from sonopacs.dashboard.analysis import MAX_UPLOAD_BYTES, analyze_upload
from sonopacs.dashboard.auth import Admin, LoggedIn, attempt_login, csrf_token, end_session
from sonopacs.dashboard.params import MAX_ROW_ID, MAX_TEXT, Offset, ResultId, StudyId

router = APIRouter(prefix="/api/v1")


class LoginBody(BaseModel):
    username: str = Field(max_length=64)
    password: str = Field(max_length=1024)


class LoginReply(BaseModel):
    username: str
    role: str
    csrf_token: str


@router.get("/auth/csrf", tags=["auth"], summary="A CSRF token for this session (needed to log in)")
def get_csrf(request: Request) -> dict[str, str]:
    return {"csrf_token": csrf_token(request)}


@router.post("/auth/login", tags=["auth"], response_model=LoginReply)
def login(request: Request, body: LoginBody) -> LoginReply:
    user = attempt_login(request, body.username, body.password)
    return LoginReply(username=user.username, role=user.role, csrf_token=csrf_token(request))


@router.post("/auth/logout", tags=["auth"])
def logout(request: Request) -> dict[str, bool]:
    end_session(request)
    return {"ok": True}


@router.get("/auth/me", tags=["auth"])
def me(request: Request, user: LoggedIn) -> dict[str, Any]:
    return {"username": user.username, "role": user.role, "csrf_token": csrf_token(request)}


@router.get("/overview", tags=["monitoring"], summary="Queue depth, workers, studies today, latency, failures")
def get_overview(request: Request, _: LoggedIn) -> dict[str, Any]:
    return service.overview(request)


@router.get("/queue", tags=["monitoring"], summary="Broker queue depth and workers online")
def get_queue(request: Request, _: LoggedIn) -> dict[str, Any]:
    return dict(request.app.state.broker.status().as_dict())


@router.get("/studies", tags=["studies"])
def list_studies(
    request: Request,
    _: LoggedIn,
    state: str | None = Query(None, max_length=MAX_TEXT, description="one of " + ", ".join(queries.STATES)),
    received_from: str | None = Query(None, max_length=10,
                                      description="first image received on or after (YYYY-MM-DD, UTC)"),
    received_to: str | None = Query(None, max_length=10,
                                    description="first image received on or before (YYYY-MM-DD, UTC)"),
    q: str | None = Query(None, max_length=MAX_TEXT, description="start of accession number or patient ID"),
    limit: int = Query(50, ge=1, le=500),
    offset: Offset = 0,
) -> dict[str, Any]:
    return service.studies(
        request, state=state, received_from=received_from, received_to=received_to, q=q, limit=limit, offset=offset
    )


@router.get("/studies/{study_id}", tags=["studies"])
def get_study(request: Request, study_id: StudyId, _: LoggedIn) -> dict[str, Any]:
    return service.study(request, study_id)


@router.post("/studies/{study_id}/resend", tags=["studies"], summary="Send the current results again (admin)")
def resend(request: Request, study_id: StudyId, user: Admin) -> dict[str, Any]:
    return service.act(request, study_id, "resend", user)


@router.post("/studies/{study_id}/reprocess", tags=["studies"], summary="Run the pipeline again (admin)")
def reprocess(request: Request, study_id: StudyId, user: Admin) -> dict[str, Any]:
    return service.act(request, study_id, "reprocess", user)


@router.get(
    "/results/{result_id}/thumbnail.png",
    tags=["studies"],
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def result_thumbnail(request: Request, result_id: ResultId, _: LoggedIn) -> Response:
    return service.thumbnail(request, result_id)


@router.get("/audit", tags=["audit"])
def audit(
    request: Request,
    _: LoggedIn,
    event: str | None = Query(None, max_length=MAX_TEXT),
    actor: str | None = Query(None, max_length=MAX_TEXT),
    study_id: int | None = Query(None, ge=1, le=MAX_ROW_ID),
    limit: int = Query(100, ge=1, le=1000),
    offset: Offset = 0,
) -> dict[str, Any]:
    with request.app.state.db.session() as session:
        return queries.audit_log(session, event=event, actor=actor, study_id=study_id, limit=limit, offset=offset)


@router.get("/model", tags=["model"], summary="Model card, metrics, operating points, version, outcomes at this site")
def model(request: Request, _: LoggedIn) -> dict[str, Any]:
    info = service.model(request)
    info.pop("model_card_html", None)
    return info


@router.get("/config", tags=["admin"], summary="Effective configuration, secrets masked (admin)")
def config(request: Request, _: Admin) -> dict[str, Any]:
    return masked_dump(request.app.state.settings)


@router.post(
    "/analyze",
    tags=["research"],
    summary=f"Analyse one PNG/JPEG/DICOM image (research use, at most {MAX_UPLOAD_BYTES // 2**20} MiB)",
    description="Returns the analysis JSON and the overlay and mask as base64 PNG. "
    "AI result, for assistance only, not for diagnosis.",
)
async def analyze(
    request: Request, file: Annotated[UploadFile, File()], _: LoggedIn
) -> dict[str, Any]:
    data = await file.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise HTTPException(413, f"file is larger than {MAX_UPLOAD_BYTES // 2**20} MiB")
    return await run_in_threadpool(analyze_upload, request.app.state.settings, data, file.filename)
