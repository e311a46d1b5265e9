"""Unauthenticated operations endpoints: `/healthz`, `/readyz` (details only when logged in), `/metrics`
(counts only, no PHI)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from sonopacs.dashboard.auth import current_user_or_none
from sonopacs.dashboard.metrics import render

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness: the process answers")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: ready or not; logged in, also the checks (database, broker, storage, destination C-ECHO)",
)
def readyz(request: Request) -> JSONResponse:
    probe = request.app.state.readiness
    code, body = probe.detailed() if current_user_or_none(request) else probe.public()
    return JSONResponse(body, status_code=code)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(request: Request) -> Response:
    return Response(render(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)
