"""Unauthenticated operations endpoints: `/healthz`, `/readyz`, `/metrics` (counts only, no PHI)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from sonopacs.dashboard.health import readiness
from sonopacs.dashboard.metrics import render

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness: the process answers")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: database, broker, storage and destination C-ECHO")
def readyz(request: Request) -> JSONResponse:
    code, body = readiness(request.app.state.settings, request.app.state.db)
    return JSONResponse(body, status_code=code)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(request: Request) -> Response:
    return Response(render(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)
