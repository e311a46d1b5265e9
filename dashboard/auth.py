"""Who is asking: signed-cookie sessions, roles, CSRF tokens and login rate limiting.

The session cookie (Starlette's SessionMiddleware, itsdangerous-signed, HttpOnly, SameSite=Lax) holds
only the user id and a CSRF token, never PHI. Every state-changing request must echo the token, in
the `X-CSRF-Token` header (API, htmx, fetch) or a `csrf_token` form field (plain HTML forms).
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from sqlalchemy import select

from sonopacs.db.models import User

CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


@dataclass(frozen=True)
class CurrentUser:
    id: int
    username: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def actor(self) -> str:
        """The audit-trail actor name for actions taken by this user."""
        return f"user:{self.username}"


class NotAuthenticated(Exception):
    """Raised by the auth dependencies; turned into 401 (API) or a redirect to /login (pages)."""


def csrf_token(request: Request) -> str:
    """The session's CSRF token, created on first use (also for anonymous sessions: the login form)."""
    token = request.session.get("csrf")
    if not isinstance(token, str) or len(token) < 32:
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


async def csrf_guard(request: Request) -> None:
    """App-wide dependency: reject any non-safe request whose token does not match the session's."""
    if request.method in SAFE_METHODS:
        return
    expected = request.session.get("csrf")
    sent = request.headers.get(CSRF_HEADER)
    if not sent and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        form = await request.form()
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    if not expected or not sent or not hmac.compare_digest(str(expected), sent):
        raise HTTPException(403, "CSRF token missing or invalid: send the X-CSRF-Token header")


def start_session(request: Request, user: User) -> str:
    """Log the user in: a fresh session (no fixation) with a fresh CSRF token, which is returned."""
    request.session.clear()
    request.session["uid"] = user.id
    request.session["auth_at"] = int(time.time())
    return csrf_token(request)


def end_session(request: Request) -> None:
    request.session.clear()


def current_user_or_none(request: Request) -> CurrentUser | None:
    """The logged-in user, re-read from the database so a deactivated or demoted user loses access now."""
    uid = request.session.get("uid")
    if not isinstance(uid, int):
        return None
    # The cookie is re-issued on every response (sliding); this caps a session's total lifetime too.
    max_age = request.app.state.settings.dashboard.session_max_age_seconds
    auth_at = request.session.get("auth_at")
    if not isinstance(auth_at, int) or time.time() - auth_at > max_age:
        request.session.clear()
        return None
    database = request.app.state.db
    with database.session() as session:
        user = session.scalar(select(User).where(User.id == uid))
        if user is None or not user.active:
            return None
        return CurrentUser(id=user.id, username=user.username, role=user.role)


def require_user(request: Request) -> CurrentUser:
    user = current_user_or_none(request)
    if user is None:
        raise NotAuthenticated()
    request.state.user = user
    return user


def require_admin(request: Request) -> CurrentUser:
    user = require_user(request)
    if not user.is_admin:
        raise HTTPException(403, "this needs the admin role")
    return user


class LoginRateLimiter:
    """Failed logins per key (client address, user name) in a sliding window; in memory, per process."""

    def __init__(self, max_failures: int = 5, window_seconds: float = 300) -> None:
        self.max_failures = max_failures
        self.window_seconds = window_seconds
        self._failures: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def _prune(self, key: str, now: float) -> deque[float]:
        times = self._failures[key]
        while times and now - times[0] > self.window_seconds:
            times.popleft()
        return times

    def retry_after(self, keys: list[str]) -> int | None:
        """Seconds until another attempt is allowed, or None when it is allowed now."""
        now = time.monotonic()
        with self._lock:
            waits = []
            for key in keys:
                times = self._prune(key, now)
                if len(times) >= self.max_failures:
                    waits.append(self.window_seconds - (now - times[0]))
            return max(1, int(max(waits)) + 1) if waits else None

    def failed(self, keys: list[str]) -> None:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                self._prune(key, now).append(now)

    def succeeded(self, keys: list[str]) -> None:
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)


def limiter_keys(request: Request, username: str) -> list[str]:
    client = request.client.host if request.client else "unknown"
    return [f"ip:{client}", f"user:{username.lower()}"]


def attempt_login(request: Request, username: str, password: str) -> CurrentUser:
    """Check the password under the rate limit; start the session on success.

    Raises 429 (with Retry-After) while the client or the user name is locked out, 401 otherwise.
    Neither the user name nor the password is logged.
    """
    from sonopacs.dashboard.users import authenticate

    limiter: LoginRateLimiter = request.app.state.login_limiter
    keys = limiter_keys(request, username)
    wait = limiter.retry_after(keys)
    if wait is not None:
        raise HTTPException(
            429, f"too many failed logins; try again in {wait} s", headers={"Retry-After": str(wait)}
        )
    with request.app.state.db.session() as session:
        user = authenticate(session, username, password)
        if user is None:
            limiter.failed(keys)
            raise HTTPException(401, "unknown user or wrong password")
        limiter.succeeded(keys)
        start_session(request, user)
        return CurrentUser(id=user.id, username=user.username, role=user.role)


LoggedIn = Annotated[CurrentUser, Depends(require_user)]
Admin = Annotated[CurrentUser, Depends(require_admin)]
