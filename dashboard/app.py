"""App factory and entry point: `create_app(settings)` for tests and uvicorn, `run_dashboard` for the CLI."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from sonopacs.dashboard.auth import LoginRateLimiter, NotAuthenticated, csrf_guard
from sonopacs.dashboard.broker import BrokerProbe
from sonopacs.dashboard.health import Readiness
from sonopacs.dashboard.middleware import (
    AccessLogMiddleware,
    BodyLimitMiddleware,
    ErrorShieldMiddleware,
    SecurityHeadersMiddleware,
)
from sonopacs.dashboard.proxy import TrustedProxyMiddleware
from sonopacs.dashboard.sessions import SessionCookieMiddleware
from sonopacs.dashboard.storage import StorageProbe

if TYPE_CHECKING:
    from sonopacs.config import Settings

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
SESSION_COOKIE = "sonopacs_session"
DEFAULT_SECRET = "change-me"


def _secret_key(settings: Settings) -> str:
    key = settings.dashboard.secret_key.get_secret_value()
    # A published placeholder ("change-me", compose's "change-me-in-production") would let anyone
    # forge an admin session cookie, so it is never used as the signing key.
    if key.lower().startswith(DEFAULT_SECRET) or len(key) < 16:
        log.warning(
            "dashboard.secret_key is a placeholder or short: using a random key, so sessions end when "
            "the dashboard restarts; set SONOPACS_DASHBOARD__SECRET_KEY"
        )
        return secrets.token_urlsafe(48)
    return key


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    app.state.db.dispose()


def create_app(settings: Settings, *, login_limiter: LoginRateLimiter | None = None) -> FastAPI:
    """The dashboard on the configured database: pages, `/api/v1`, `/metrics`, `/healthz`, `/readyz`."""
    from sonopacs.dashboard import api, health_routes, pages
    from sonopacs.dashboard.metrics import make_registry
    from sonopacs.dashboard.templating import make_templates
    from sonopacs.db.session import Database

    app = FastAPI(
        title="sonopacs dashboard API",
        version="1",
        description=(
            "Studies, queue, failures and actions of a sonopacs node. Log in with "
            "`POST /api/v1/auth/login`, then send the returned token as `X-CSRF-Token` on every "
            "POST. AI results are for assistance only, not for diagnosis."
        ),
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served by pages.openapi, behind the login
        dependencies=[Depends(csrf_guard)],
        lifespan=_lifespan,
    )
    app.state.settings = settings
    # hide_parameters: a failing query's error (and traceback in the log) must not show search terms.
    app.state.db = Database(settings.database_url, hide_parameters=True)
    app.state.broker = BrokerProbe(settings)
    app.state.storage = StorageProbe(settings, app.state.db)
    app.state.registry = make_registry(app.state.db, app.state.broker)
    app.state.login_limiter = login_limiter or LoginRateLimiter.from_settings(settings)
    app.state.readiness = Readiness(settings, app.state.db)
    app.state.templates = make_templates(HERE / "templates")

    # Outermost last: access log sees the final status; security headers go on every response; the
    # proxy headers are applied (when trusted) before the session decides on `Secure` and before the
    # login limits read the client address; the body limit runs before any parsing.
    app.add_middleware(
        SessionCookieMiddleware,
        secure=settings.dashboard.cookie_secure,
        secret_key=_secret_key(settings),
        session_cookie=SESSION_COOKIE,
        max_age=settings.dashboard.session_max_age_seconds,
        same_site="lax",
    )
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(TrustedProxyMiddleware, trusted=settings.dashboard.trusted_proxies)
    app.add_middleware(ErrorShieldMiddleware)
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(AccessLogMiddleware)

    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(health_routes.router)
    app.include_router(api.router)
    app.include_router(pages.router)
    _install_handlers(app)
    return app


def _wants_json(request: Request) -> bool:
    path = request.url.path
    if path.startswith(("/api/", "/metrics", "/healthz", "/readyz", "/openapi.json")):
        return True
    if request.headers.get("HX-Request"):
        return False
    return "text/html" not in request.headers.get("accept", "")


def _install_handlers(app: FastAPI) -> None:
    @app.exception_handler(NotAuthenticated)
    async def _login_required(request: Request, _exc: NotAuthenticated) -> Response:
        if _wants_json(request):
            return JSONResponse({"detail": "login required"}, status_code=401)
        if request.headers.get("HX-Request"):
            # A poll after the session expired: send the whole page to the login form.
            return Response(status_code=401, headers={"HX-Redirect": "/login"})
        return RedirectResponse(f"/login?next={request.url.path}", status_code=303)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        headers = getattr(exc, "headers", None)
        if _wants_json(request):
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)
        from sonopacs.dashboard.pages import render

        context: dict[str, Any] = {"status": exc.status_code, "detail": exc.detail}
        response = render(request, "error.html", context, status_code=exc.status_code)
        response.headers.update(headers or {})
        return response


def server_config(app: FastAPI, settings: Settings, port: int | None = None) -> Any:
    """uvicorn's configuration for the dashboard: our PHI-free access log, forwarding headers left to
    TrustedProxyMiddleware, and https when `dashboard.tls_cert`/`tls_key` are set."""
    import uvicorn

    d = settings.dashboard
    if bool(d.tls_cert) != bool(d.tls_key):
        raise SystemExit("dashboard.tls_cert and dashboard.tls_key must be set together")
    return uvicorn.Config(
        app,
        host=d.host,
        port=d.port if port is None else port,
        access_log=False,  # uvicorn's would log query strings, which can carry patient IDs
        log_config=None,
        proxy_headers=False,  # forwarding headers count only from dashboard.trusted_proxies
        server_header=False,
        ssl_certfile=str(d.tls_cert) if d.tls_cert else None,
        ssl_keyfile=str(d.tls_key) if d.tls_key else None,
    )


def run_dashboard(settings: Settings) -> int:
    """`sonopacs dashboard`: serve on dashboard.host:port (https with a configured certificate)."""
    import uvicorn

    config = server_config(create_app(settings), settings)
    scheme = "https" if settings.dashboard.tls_cert else "http"
    log.info("dashboard on %s://%s:%s", scheme, settings.dashboard.host, settings.dashboard.port)
    uvicorn.Server(config).run()
    return 0
