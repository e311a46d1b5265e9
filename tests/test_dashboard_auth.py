"""Dashboard auth: login, roles, CSRF, login back-off, server-side sessions, cookie flags, no PHI before login."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from sonopacs import cli
from sonopacs.config import Settings
from sonopacs.dashboard.app import create_app
from sonopacs.dashboard.auth import LoginRateLimiter
from sonopacs.db.session import Database
from tests.support.dashboard_demo import DemoStudy, prepare, seed_processed_study

USERS = {"alice": ("admin", "alice-password"), "victor": ("viewer", "victor-password")}
PHI_PATIENT_ID = "PHI-PID-739184"
PHI_ACCESSION = "PHI-ACC-55120"


class FakeClock:
    """The login limiter's clock, moved by hand: back-off is tested without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def env(make_settings: Callable[..., Settings]) -> Iterator[dict[str, Any]]:
    settings = make_settings()
    db = Database(settings.database_url)
    prepare(db, USERS)
    study = seed_processed_study(db, settings.storage.root, patient_id=PHI_PATIENT_ID, accession=PHI_ACCESSION)
    clock = FakeClock()
    limiter = LoginRateLimiter(free_failures=3, base_seconds=2, max_seconds=60, clock=clock)
    app = create_app(settings, login_limiter=limiter)
    with TestClient(app) as client:
        yield {"client": client, "settings": settings, "study": study, "db": db, "clock": clock, "app": app}
    db.dispose()


def csrf(client: TestClient) -> str:
    return str(client.get("/api/v1/auth/csrf").json()["csrf_token"])


def api_login(client: TestClient, user: str, password: str | None = None) -> Any:
    token = csrf(client)
    return client.post(
        "/api/v1/auth/login",
        json={"username": user, "password": password or USERS[user][1]},
        headers={"X-CSRF-Token": token},
    )


def test_form_login_sets_hardened_cookie_and_reaches_overview(env: dict[str, Any]) -> None:
    client: TestClient = env["client"]
    page = client.get("/login", headers={"Accept": "text/html"})
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token
    r = client.post(
        "/login",
        data={"username": "alice", "password": "alice-password", "csrf_token": token.group(1), "next": "/studies"},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/studies"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie
    assert PHI_ACCESSION in client.get("/studies").text


def test_wrong_password_is_401_and_right_one_works(env: dict[str, Any]) -> None:
    client: TestClient = env["client"]
    assert api_login(client, "alice", "nope-nope").status_code == 401
    r = api_login(client, "alice")
    assert r.status_code == 200
    assert r.json()["role"] == "admin"
    assert client.get("/api/v1/auth/me").json()["username"] == "alice"


def test_login_redirect_target_must_be_local(env: dict[str, Any]) -> None:
    client: TestClient = env["client"]
    token = csrf(client)
    r = client.post(
        "/login",
        data={"username": "alice", "password": "alice-password", "csrf_token": token, "next": "//evil.example/"},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/"


def test_post_without_or_with_wrong_csrf_token_is_rejected(env: dict[str, Any]) -> None:
    client: TestClient = env["client"]
    # Even the login needs the token (login CSRF).
    r = client.post("/api/v1/auth/login", json={"username": "alice", "password": "alice-password"})
    assert r.status_code == 403 and "CSRF" in r.json()["detail"]
    assert api_login(client, "alice").status_code == 200
    sid = env["study"].id
    assert client.post(f"/api/v1/studies/{sid}/resend").status_code == 403
    assert client.post(f"/api/v1/studies/{sid}/resend", headers={"X-CSRF-Token": "forged"}).status_code == 403
    r = client.post(f"/studies/{sid}/resend", data={"csrf_token": "forged"}, headers={"Accept": "text/html"})
    assert r.status_code == 403
    assert client.post("/api/v1/auth/logout").status_code == 403


def test_viewer_cannot_act_or_see_configuration(env: dict[str, Any]) -> None:
    client: TestClient = env["client"]
    r = api_login(client, "victor")
    token = r.json()["csrf_token"]
    sid = env["study"].id
    for action in ("resend", "reprocess"):
        r = client.post(f"/api/v1/studies/{sid}/{action}", headers={"X-CSRF-Token": token})
        assert r.status_code == 403, action
    assert client.get("/api/v1/config").status_code == 403
    assert client.get("/config", headers={"Accept": "text/html"}).status_code == 403
    study_page = client.get(f"/studies/{sid}", headers={"Accept": "text/html"}).text
    assert "btn-resend" not in study_page and "Configuration</a>" not in study_page
    # ...but reads everything else.
    assert client.get(f"/api/v1/studies/{sid}").json()["accession_number"] == PHI_ACCESSION


def test_admin_sees_masked_configuration(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(broker={"url": "redis://:s3cret-pw@127.0.0.1:6379/3"},
                             dashboard={"secret_key": "a-long-enough-secret-key-value"})
    db = Database(settings.database_url)
    prepare(db, USERS)
    with TestClient(create_app(settings)) as client:
        token = api_login(client, "alice").json()["csrf_token"]
        assert token
        cfg = client.get("/api/v1/config").json()
        page = client.get("/config", headers={"Accept": "text/html"}).text
    db.dispose()
    assert cfg["dashboard"]["secret_key"] == "***"
    for text in (str(cfg), page):
        assert "s3cret-pw" not in text and "a-long-enough-secret-key-value" not in text


def _bad_login_checked(client: TestClient, clock: FakeClock, user: str) -> int | None:
    """One wrong password that is really checked (401): wait out any back-off first; returns the wait."""
    r = api_login(client, user, "wrong-password")
    wait = None
    if r.status_code == 429:
        wait = int(r.headers["retry-after"])
        clock.advance(wait)
        r = api_login(client, user, "wrong-password")
    assert r.status_code == 401, r.text
    return wait


def test_five_bad_logins_back_off_then_the_right_password_works(env: dict[str, Any]) -> None:
    """Back-off, not a lock: three free failures, then 2, 4, 8 s; the right password works after the wait."""
    client: TestClient = env["client"]
    clock: FakeClock = env["clock"]
    waits = [_bad_login_checked(client, clock, "alice") for _ in range(5)]
    assert waits == [None, None, None, 2, 4]
    r = api_login(client, "alice")  # the right password, but too early
    assert r.status_code == 429 and int(r.headers["retry-after"]) == 8
    assert "too many failed logins" in r.json()["detail"]
    token = csrf(client)
    r = client.post("/login", data={"username": "alice", "password": "alice-password", "csrf_token": token},
                    headers={"Accept": "text/html"})
    assert r.status_code == 429 and "too many failed logins" in r.text
    # Refused attempts are not counted: hammering during the wait does not make it longer.
    for _ in range(20):
        assert api_login(client, "alice", "wrong-password").status_code == 429
    clock.advance(7)
    assert api_login(client, "alice").status_code == 429
    clock.advance(1)
    r = api_login(client, "alice")
    assert r.status_code == 200, r.text
    # A success forgets the failures: the next typo is free again.
    clock.advance(1)
    assert api_login(client, "alice", "typo-typo").status_code == 401
    assert api_login(client, "alice").status_code == 200


def test_backoff_is_capped_and_the_account_owner_is_not_locked_out() -> None:
    clock = FakeClock()
    limiter = LoginRateLimiter(free_failures=3, base_seconds=2, max_seconds=60, clock=clock)
    owner_keys = limiter.keys("192.0.2.10", "admin")
    limiter.succeeded(owner_keys, "192.0.2.10", "admin")  # the admin's usual workstation, yesterday
    attacker = limiter.keys("203.0.113.9", "admin")
    waits = []
    for _ in range(12):
        wait = limiter.retry_after(attacker)
        if wait:
            waits.append(wait)
            clock.advance(wait)
        limiter.failed(attacker)
    assert waits == [2, 4, 8, 16, 32, 60, 60, 60, 60]  # doubling, then the cap: never for good
    assert limiter.retry_after(limiter.keys("198.51.100.7", "admin")) == 60  # the account waits...
    # ...except from an address that has logged into it before: there only its own failures count.
    assert limiter.retry_after(limiter.keys("192.0.2.10", "ADMIN")) is None
    # Other accounts from the attacking address wait as well (per-address limit).
    assert limiter.retry_after(limiter.keys("203.0.113.9", "victor")) == 60
    # After a long quiet spell the failures are forgotten.
    clock.advance(60 * 4)
    assert limiter.retry_after(limiter.keys("203.0.113.9", "admin")) is None
    assert limiter.delay(1000) == 60


def _all_get_paths(study: DemoStudy, result_id: int) -> list[str]:
    sid = study.id
    return [
        "/", "/studies", f"/studies?q={PHI_PATIENT_ID[:6]}", f"/studies/{sid}", "/fragments/overview",
        "/fragments/studies", f"/fragments/studies/{sid}", "/audit", "/fragments/audit", "/model", "/config",
        "/analyze", f"/results/{result_id}/thumbnail.png", "/api/v1/overview", "/api/v1/queue",
        "/api/v1/studies", f"/api/v1/studies?q={PHI_ACCESSION}", f"/api/v1/studies/{sid}", "/api/v1/audit",
        "/api/v1/model", "/api/v1/config", f"/api/v1/results/{result_id}/thumbnail.png", "/api/v1/auth/me",
        "/docs", "/openapi.json",
    ]


def test_no_phi_anywhere_before_login(env: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    client: TestClient = env["client"]
    study: DemoStudy = env["study"]
    phi = [PHI_PATIENT_ID, PHI_ACCESSION, study.study_instance_uid, "DEMO^PATIENT"]
    caplog.set_level("DEBUG")
    for path in _all_get_paths(study, 1):
        for accept in ("text/html", "application/json"):
            r = client.get(path, headers={"Accept": accept}, follow_redirects=False)
            assert r.status_code in (401, 303), (path, r.status_code)
            assert not any(p in r.text for p in phi), path
    for path in ("/login", "/metrics", "/healthz", "/readyz"):
        r = client.get(path, headers={"Accept": "text/html"})
        assert r.status_code in (200, 503), path
        assert not any(p in r.text for p in phi), path
    # Search terms travel in query strings: the access log must not contain them.
    assert api_login(client, "alice").status_code == 200
    client.get(f"/api/v1/studies?q={PHI_PATIENT_ID}")
    client.get(f"/studies?q={PHI_ACCESSION}", headers={"Accept": "text/html"})
    ours = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith(("httpx", "httpcore")))
    assert "GET /studies" in ours  # the access log did record the request...
    assert not any(p in ours for p in phi)  # ...without the search term
    assert "alice-password" not in ours


def test_deactivated_user_loses_session(env: dict[str, Any]) -> None:
    from sqlalchemy import update

    from sonopacs.db.models import User

    client: TestClient = env["client"]
    assert api_login(client, "victor").status_code == 200
    assert client.get("/api/v1/studies").status_code == 200
    with env["db"].session() as session:
        session.execute(update(User).where(User.username == "victor").values(active=False))
    assert client.get("/api/v1/studies").status_code == 401


def test_logout_ends_the_session(env: dict[str, Any]) -> None:
    client: TestClient = env["client"]
    token = api_login(client, "victor").json()["csrf_token"]
    assert client.post("/api/v1/auth/logout", headers={"X-CSRF-Token": token}).status_code == 200
    assert client.get("/api/v1/studies").status_code == 401


def test_logout_revokes_a_copied_cookie(env: dict[str, Any]) -> None:
    """The session lives on the server: a cookie copied before logout is worthless after it."""
    client: TestClient = env["client"]
    token = api_login(client, "victor").json()["csrf_token"]
    stolen = client.cookies.get("sonopacs_session")
    assert stolen
    with TestClient(env["app"]) as thief:
        thief.cookies.set("sonopacs_session", stolen)
        assert thief.get("/api/v1/studies").status_code == 200  # the copy works while the session lives
        assert client.post("/logout", data={"csrf_token": token}, follow_redirects=False).status_code == 303
        assert thief.get("/api/v1/studies").status_code == 401
        assert thief.get("/studies", headers={"Accept": "text/html"}, follow_redirects=False).status_code == 303
    # The session row is gone, not only the browser's cookie.
    from sqlalchemy import func, select

    from sonopacs.db.models import DashboardSession

    with env["db"].session() as session:
        assert session.scalar(select(func.count(DashboardSession.id))) == 0


def test_password_reset_ends_existing_sessions(env: dict[str, Any]) -> None:
    from sonopacs.dashboard.users import upsert_user

    client: TestClient = env["client"]
    assert api_login(client, "victor").status_code == 200
    assert client.get("/api/v1/studies").status_code == 200
    with env["db"].session() as session:
        upsert_user(session, "victor", "viewer", "a-new-password")
    assert client.get("/api/v1/studies").status_code == 401


def test_session_cookie_carries_no_identity(env: dict[str, Any]) -> None:
    """The cookie names a random server-side session, not the user: no uid to tamper with."""
    import base64
    import json

    client: TestClient = env["client"]
    assert api_login(client, "alice").status_code == 200
    cookie = client.cookies.get("sonopacs_session")
    assert cookie
    payload = json.loads(base64.b64decode(cookie.split(".")[0]))
    assert set(payload) == {"sid", "csrf"}
    assert "alice" not in json.dumps(payload)


@pytest.mark.parametrize(
    ("mode", "base_url", "secure"),
    [("auto", "http://testserver", False), ("auto", "https://testserver", True),
     ("always", "http://testserver", True), ("never", "https://testserver", False)],
)
def test_secure_cookie_follows_the_setting_and_the_scheme(
    make_settings: Callable[..., Settings], mode: str, base_url: str, secure: bool
) -> None:
    settings = make_settings(dashboard={"cookie_secure": mode})
    db = Database(settings.database_url)
    prepare(db, USERS)
    with TestClient(create_app(settings), base_url=base_url) as client:
        r = client.get("/login", headers={"Accept": "text/html"})
    db.dispose()
    cookie = r.headers["set-cookie"].lower()
    assert "sonopacs_session=" in cookie and "httponly" in cookie
    assert ("; secure" in cookie) is secure, cookie


def test_user_add_cli_hashes_password(make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy import select

    from sonopacs.dashboard.users import add_user, verify_password
    from sonopacs.db.models import User

    settings = make_settings()
    db = Database(settings.database_url)
    prepare(db)
    prompts = iter(["typed-password-1", "typed-password-1"])
    monkeypatch.setattr("getpass.getpass", lambda _prompt="": next(prompts))
    add_user(settings, "carol", role="admin", password=None)
    add_user(settings, "dave", role="viewer", password="given-password")
    with db.session() as session:
        carol = session.scalar(select(User).where(User.username == "carol"))
        assert carol is not None and carol.role == "admin"
        assert carol.password_hash.startswith("$argon2") and "typed-password-1" not in carol.password_hash
        assert verify_password(carol.password_hash, "typed-password-1")
    with pytest.raises(SystemExit):
        add_user(settings, "eve", role="viewer", password="short")
    db.dispose()


def test_session_has_an_absolute_lifetime(env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import timedelta

    from sonopacs.dashboard import sessions

    client: TestClient = env["client"]
    assert api_login(client, "victor").status_code == 200
    assert client.get("/api/v1/studies").status_code == 200
    real_now = sessions._now
    # The server's clock moves past the session's end; the cookie itself (itsdangerous) stays fresh.
    later = env["settings"].dashboard.session_max_age_seconds + 5
    monkeypatch.setattr(sessions, "_now", lambda: real_now() + timedelta(seconds=later))
    assert client.get("/api/v1/studies").status_code == 401


def test_database_errors_do_not_log_search_terms(env: dict[str, Any]) -> None:
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    db = env["client"].app.state.db
    with pytest.raises(OperationalError) as err, db.session() as session:
        session.execute(text("SELECT * FROM no_such_table WHERE patient_id = :q"), {"q": PHI_PATIENT_ID})
    assert PHI_PATIENT_ID not in str(err.value)


def test_sonopacs_user_add_command(make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:

    settings = make_settings()
    prepare(Database(settings.database_url))
    monkeypatch.setenv("SONOPACS_DATABASE__URL", settings.database_url)
    assert cli.main(["user", "add", "frank", "--role", "admin", "--password", "frank-password"]) == 0
    with TestClient(create_app(settings)) as client:
        token = csrf(client)
        r = client.post("/api/v1/auth/login", json={"username": "frank", "password": "frank-password"},
                        headers={"X-CSRF-Token": token})
    assert r.status_code == 200 and r.json()["role"] == "admin"


@pytest.mark.parametrize(
    ("placeholder", "status"),
    [("change-me", 401), ("change-me-in-production", 401), ("short", 401), ("a-real-site-secret-0123456789", 200)],
)
def test_placeholder_secret_key_is_never_used_for_signing(
    make_settings: Callable[..., Settings], placeholder: str, status: int
) -> None:
    """A cookie signed with a published key must not be accepted as a session (a real key: control)."""
    import base64
    import json

    import itsdangerous

    from sonopacs.dashboard import sessions

    settings = make_settings(dashboard={"secret_key": placeholder})
    db = Database(settings.database_url)
    prepare(db, USERS)
    # A live server-side session: only the signature of the cookie that names it differs.
    sid = sessions.create(db, user_id=1, max_age_seconds=3600)
    forged = itsdangerous.TimestampSigner(placeholder).sign(
        base64.b64encode(json.dumps({"sid": sid}).encode())
    ).decode()
    with TestClient(create_app(settings)) as client:
        client.cookies.set("sonopacs_session", forged)
        assert client.get("/api/v1/studies").status_code == status
    db.dispose()
