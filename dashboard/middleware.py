"""ASGI middleware: request size limits, security headers, and an access log without PHI.

The access log records method, path, status and time only: never the query string (searches
carry accession numbers and patient IDs) and never a body.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("sonopacs.dashboard.access")
error_log = logging.getLogger("sonopacs.dashboard.errors")

DEFAULT_BODY_LIMIT = 1024 * 1024
UPLOAD_PATHS = ("/api/v1/analyze", "/analyze")

CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
# Swagger UI sets inline styles; it still runs only our own scripts.
CSP_DOCS = CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")


def _upload_limit() -> int:
    from sonopacs.dashboard.analysis import MAX_UPLOAD_BYTES

    return MAX_UPLOAD_BYTES + 64 * 1024  # multipart framing


class _TooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """413 before a handler parses a body larger than the route allows (Content-Length or streamed)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = _upload_limit() if scope["path"] in UPLOAD_PATHS else DEFAULT_BODY_LIMIT
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _reject(send, limit)
            return
        seen = 0
        tracking_send = _StartTracker(send)

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not tracking_send.started:
                await _reject(send, limit)


class _StartTracker:
    """A send that remembers whether the response has started (after that, no other answer fits)."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.started = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        await self.send(message)


async def _reject(send: Send, limit: int) -> None:
    await _send_json(send, 413, b'{"detail":"request body larger than %d MiB"}' % max(1, limit // (1024 * 1024)))


async def _send_json(send: Send, status: int, body: bytes) -> None:
    """A whole JSON response sent by a middleware that stopped the app before it answered."""
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ErrorShieldMiddleware:
    """An unhandled exception becomes a plain 500 here, inside the security headers (Starlette's own
    last-resort handler sits outside every middleware, so its 500 would go out without them)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tracking_send = _StartTracker(send)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            error_log.exception("unhandled error in %s %s", scope["method"], scope["path"])
            if tracking_send.started:
                raise
            await _send_json(send, 500, b'{"detail":"internal error"}')


class SecurityHeadersMiddleware:
    """CSP, no framing, no MIME sniffing, no referrer leaks, HSTS over https; pages are never cached."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]

        async def add_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [
                    (b"content-security-policy", (CSP_DOCS if path == "/docs" else CSP).encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"same-origin"),
                ]
                if not path.startswith("/static/"):
                    extra.append((b"cache-control", b"no-store"))
                if scope.get("scheme") == "https":
                    # Over TLS (direct or via a trusted proxy): browsers never fall back to http.
                    extra.append((b"strict-transport-security", b"max-age=31536000"))
                names = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (k, v) for k, v in extra if k not in names
                ]
            await send(message)

        await self.app(scope, receive, add_headers)


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.monotonic()
        status: dict[str, Any] = {"code": 500}

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            client = scope.get("client") or ("-", 0)
            access_log.info(
                "%s %s %s %s %.0fms",
                client[0],
                scope["method"],
                scope["path"],
                status["code"],
                (time.monotonic() - start) * 1000,
            )
