"""Dashboard auth: login, roles, CSRF, rate limiting, session cookie flags, no PHI before login."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from sonopacs import cli
from sonopacs.config import Settings
from sonopacs.dashboard import auth as dashboard_auth
from sonopacs.dashboard.app import create_app
from sonopacs.dashboard.auth import LoginRateLimiter
from sonopacs.db.session import Database
from tests.support.dashboard_demo import DemoStudy, prepare, seed_processed_study

USERS = {"alice": ("admin", "alice-password"), "victor": ("viewer", "victor-password")}
PHI_PATIENT_ID = "PHI-PID-739184"
PHI_ACCESSION = "PHI-ACC-55120"


@pytest.fixture
def env(make_settings: Callable[..., Settings]) -> Iterator[dict[str, Any]]:
    settings = make_settings()
    db = Database(settings.database_url)
    prepare(db, USERS)
    study = seed_processed_study(db, settings.storage.root, patient_id=PHI_PATIENT_ID, accession=PHI_ACCESSION)
    app = create_app(settings, login_limiter=LoginRateLimiter(max_failures=3, window_seconds=60))
    with TestClient(app) as client:
        yield {"client": client, "settings": settings, "study": study, "db": db}
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


def test_login_rate_limit_blocks_even_the_right_password(env: dict[str, Any]) -> None:
    client: TestClient = env["client"]
    for _ in range(3):
        assert api_login(client, "alice", "wrong-password").status_code == 401
    r = api_login(client, "alice")
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) > 0
    # The form shows the same refusal.
    token = csrf(client)
    r = client.post("/login", data={"username": "alice", "password": "alice-password", "csrf_token": token},
                    headers={"Accept": "text/html"})
    assert r.status_code == 429 and "too many failed logins" in r.text
    # Another user from another address is not affected.
    assert api_login(client, "victor").status_code == 429  # same client address: locked too


def test_rate_limiter_window_and_reset() -> None:
    limiter = LoginRateLimiter(max_failures=2, window_seconds=60)
    keys = ["ip:1.2.3.4", "user:bob"]
    limiter.failed(keys)
    assert limiter.retry_after(keys) is None
    limiter.failed(keys)
    wait = limiter.retry_after(keys)
    assert wait is not None and 0 < wait <= 61
    assert limiter.retry_after(["ip:5.6.7.8", "user:carol"]) is None
    limiter.succeeded(keys)
    assert limiter.retry_after(keys) is None


def _all_get_paths(study: DemoStudy, result_id: int) -> list[str]:
    sid = study.id
    return [
        "/", "/studies", f"/studies?q={PHI_PATIENT_ID[:6]}", f"/studies/{sid}", "/fragments/overview",
        "/fragments/studies", f"/fragments/studies/{sid}", "/audit", "/fragments/audit", "/model", "/config",
        "/analyze", f"/results/{result_id}/thumbnail.png", "/api/v1/overview", "/api/v1/queue",
        "/api/v1/studies", f"/api/v1/studies?q={PHI_ACCESSION}", f"/api/v1/studies/{sid}", "/api/v1/audit",
        "/api/v1/model", "/api/v1/config", f"/api/v1/results/{result_id}/thumbnail.png", "/api/v1/auth/me",
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
    for path in ("/login", "/docs", "/openapi.json", "/metrics", "/healthz", "/readyz"):
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
    import time as real_time

    client: TestClient = env["client"]
    assert api_login(client, "victor").status_code == 200
    assert client.get("/api/v1/studies").status_code == 200

    class Later:
        """Only sonopacs.dashboard.auth's clock moves on; the cookie signature (itsdangerous) stays fresh."""

        monotonic = staticmethod(real_time.monotonic)

        @staticmethod
        def time() -> float:
            return real_time.time() + env["settings"].dashboard.session_max_age_seconds + 5

    monkeypatch.setattr(dashboard_auth, "time", Later)
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

    settings = make_settings(dashboard={"secret_key": placeholder})
    db = Database(settings.database_url)
    prepare(db, USERS)
    forged = itsdangerous.TimestampSigner(placeholder).sign(
        base64.b64encode(json.dumps({"uid": 1, "auth_at": 2_000_000_000}).encode())
    ).decode()
    with TestClient(create_app(settings)) as client:
        client.cookies.set("sonopacs_session", forged)
        assert client.get("/api/v1/studies").status_code == status
    db.dispose()
