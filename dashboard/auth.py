"""Who is asking: server-side sessions, roles, CSRF tokens and login back-off.

The session cookie (signed, HttpOnly, SameSite=Lax, Secure over https) holds a CSRF token and, once
logged in, the token of a `dashboard_session` row (see `sessions`), never PHI. Every state-changing
request must echo the CSRF token, in the `X-CSRF-Token` header (API, htmx, fetch) or a `csrf_token`
form field (plain HTML forms).
"""

from __future__ import annotations

import hmac
import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, HTTPException, Request

from sonopacs.dashboard import sessions

if TYPE_CHECKING:
    from sonopacs.config import Settings

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


def start_session(request: Request, user_id: int) -> str:
    """Log the user in: a fresh cookie (no fixation), a new server-side session, a fresh CSRF token."""
    end_session(request)
    max_age = request.app.state.settings.dashboard.session_max_age_seconds
    request.session["sid"] = sessions.create(request.app.state.db, user_id, max_age)
    return csrf_token(request)


def end_session(request: Request) -> None:
    """Revoke the server-side session (a copy of the cookie stops working too) and clear the cookie."""
    sid = request.session.get("sid")
    if isinstance(sid, str):
        sessions.revoke(request.app.state.db, sid)
    request.session.clear()


def current_user_or_none(request: Request) -> CurrentUser | None:
    """The logged-in user, re-read from the database so a revoked session, a deactivated or demoted
    user loses access now. A session's lifetime is absolute (set at login), though the cookie slides."""
    sid = request.session.get("sid")
    if not isinstance(sid, str):
        return None
    user = sessions.active_user(request.app.state.db, sid)
    if user is None:
        request.session.pop("sid", None)
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
    """Exponential back-off on failed logins, per client address and per account; never a lock.

    After `free_failures` failures on a key, the next attempt waits `base_seconds`, doubling with each
    further failure up to `max_seconds`. Refused attempts (429) are not checked and not counted, so
    the wait never grows past the cap, and the right password works once it has passed. A client
    address that has logged into an account before is slowed only by its own failures on it, so
    failures from elsewhere cannot keep the account's owner out. In memory, per process.
    """

    def __init__(
        self,
        free_failures: int = 3,
        base_seconds: float = 2.0,
        max_seconds: float = 300.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 10_000,
    ) -> None:
        self.free_failures = free_failures
        self.base_seconds = base_seconds
        self.max_seconds = max_seconds
        self.clock = clock
        self.max_keys = max_keys
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()  # key: (count, last failure)
        self._known: OrderedDict[tuple[str, str], None] = OrderedDict()  # (account, address) that logged in
        self._lock = threading.Lock()

    def delay(self, failures: int) -> float:
        """Seconds to wait after this many consecutive failures."""
        if failures < self.free_failures:
            return 0.0
        return float(min(self.max_seconds, self.base_seconds * 2 ** min(failures - self.free_failures, 60)))

    def keys(self, address: str, username: str) -> list[str]:
        account = username.strip().lower()
        with self._lock:
            known = (account, address) in self._known
        return [f"ip:{address}", f"user:{account}@{address}" if known else f"user:{account}"]

    def _entry(self, key: str, now: float) -> tuple[int, float] | None:
        entry = self._failures.get(key)
        # Forgotten after a quiet spell twice the cap: old failures do not slow anyone down forever.
        if entry is not None and now - entry[1] > 2 * self.max_seconds + self.delay(entry[0]):
            del self._failures[key]
            return None
        return entry

    def retry_after(self, keys: list[str]) -> int | None:
        """Whole seconds until another attempt is allowed, or None when it is allowed now."""
        now = self.clock()
        with self._lock:
            waits = []
            for key in keys:
                entry = self._entry(key, now)
                if entry is not None:
                    waits.append(entry[1] + self.delay(entry[0]) - now)
        wait = max(waits, default=0.0)
        return max(1, math.ceil(wait)) if wait > 0 else None

    def failed(self, keys: list[str]) -> None:
        now = self.clock()
        with self._lock:
            for key in keys:
                entry = self._entry(key, now)
                self._failures[key] = ((entry[0] if entry else 0) + 1, now)
                self._failures.move_to_end(key)
            while len(self._failures) > self.max_keys:
                self._failures.popitem(last=False)

    def succeeded(self, keys: list[str], address: str, username: str) -> None:
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)
            self._known[(username.strip().lower(), address)] = None
            self._known.move_to_end((username.strip().lower(), address))
            while len(self._known) > self.max_keys:
                self._known.popitem(last=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> LoginRateLimiter:
        d = settings.dashboard
        return cls(d.login_free_failures, d.login_backoff_base_seconds, d.login_backoff_max_seconds)


def client_address(request: Request) -> str:
    """The client's address (a trusted proxy's X-Forwarded-For is applied by TrustedProxyMiddleware)."""
    return request.client.host if request.client else "unknown"


def attempt_login(request: Request, username: str, password: str) -> CurrentUser:
    """Check the password under the rate limit; start the session on success.

    Raises 429 (with Retry-After) while the client or the account must wait, 401 otherwise.
    Neither the user name nor the password is logged.
    """
    from sonopacs.dashboard.users import authenticate

    limiter: LoginRateLimiter = request.app.state.login_limiter
    address = client_address(request)
    keys = limiter.keys(address, username)
    wait = limiter.retry_after(keys)
    if wait is not None:
        raise HTTPException(
            429, f"too many failed logins; try again in {wait} s", headers={"Retry-After": str(wait)}
        )
    with request.app.state.db.session() as session:
        user = authenticate(session, username, password)
        found = None if user is None else CurrentUser(id=user.id, username=user.username, role=user.role)
    # The login's own transaction is committed before the session row is written (one writer at a time).
    if found is None:
        limiter.failed(keys)
        raise HTTPException(401, "unknown user or wrong password")
    limiter.succeeded(keys, address, username)
    start_session(request, found.id)
    return found


LoggedIn = Annotated[CurrentUser, Depends(require_user)]
Admin = Annotated[CurrentUser, Depends(require_admin)]
