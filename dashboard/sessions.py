"""Sessions: a signed cookie that names a server-side session row, and the cookie's `Secure` flag.

The cookie (Starlette's signed session: HttpOnly, SameSite=Lax) carries the CSRF token and, once
logged in, a random session token. Only the token's SHA-256 is stored, in `dashboard_session`, so
logout (which deletes the row) makes a copied cookie worthless, and a leaked database holds no
usable cookies. `Secure` is set per request: always, never, or (auto) when the request came over https.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import delete, select
from starlette.middleware.sessions import SessionMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from sonopacs.db.models import DashboardSession, User
from sonopacs.db.session import Database

SecureMode = Literal["auto", "always", "never"]


class SessionCookieMiddleware:
    """Starlette's SessionMiddleware, with the `Secure` flag decided by the request's scheme."""

    def __init__(self, app: ASGIApp, *, secure: SecureMode = "auto", **options: Any) -> None:
        self.plain = SessionMiddleware(app, https_only=secure == "always", **options)
        self.tls = SessionMiddleware(app, https_only=secure != "never", **options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        over_tls = scope.get("scheme") in ("https", "wss")
        await (self.tls if over_tls else self.plain)(scope, receive, send)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


def create(db: Database, user_id: int, max_age_seconds: int) -> str:
    """A new session row for the user; returns the token for the cookie. Expired rows are pruned."""
    token = secrets.token_urlsafe(32)
    now = _now()
    with db.session() as session:
        session.execute(delete(DashboardSession).where(DashboardSession.expires_at <= now))
        session.add(DashboardSession(token_sha256=_digest(token), user_id=user_id, created_at=now,
                                     expires_at=now + timedelta(seconds=max_age_seconds)))
    return token


def active_user(db: Database, token: str) -> User | None:
    """The active user of an unexpired session with this token, else None."""
    with db.session() as session:
        user = session.scalar(
            select(User)
            .join(DashboardSession, DashboardSession.user_id == User.id)
            .where(DashboardSession.token_sha256 == _digest(token))
            .where(DashboardSession.expires_at > _now())
            .where(User.active.is_(True))
        )
        if user is not None:
            session.expunge(user)
        return user


def revoke(db: Database, token: str) -> None:
    """Delete the session row: the cookie that carries this token no longer logs anyone in."""
    with db.session() as session:
        session.execute(delete(DashboardSession).where(DashboardSession.token_sha256 == _digest(token)))


def revoke_all(db: Database, user_id: int) -> int:
    """End every session of a user (e.g. after a password reset); returns how many there were."""
    with db.session() as session:
        result = session.execute(delete(DashboardSession).where(DashboardSession.user_id == user_id))
        return int(getattr(result, "rowcount", 0) or 0)
