"""Dashboard hardening: every route behind the login (enumerated from the app), security headers on
every response, no inline script the CSP would have to allow, 4xx (never 500) on out-of-range input,
/readyz public yes/no without C-ECHO, and forwarding headers believed only from trusted proxies."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from starlette.routing import Mount

from sonopacs.config import Settings
from sonopacs.dashboard.app import create_app
from sonopacs.db.models import ResultObject
from sonopacs.db.session import Database
from tests.support.dashboard_demo import prepare, seed_processed_study, serving

USERS = {"alice": ("admin", "alice-password"), "victor": ("viewer", "victor-password")}
TEMPLATES = Path(__file__).resolve().parents[1] / "dashboard" / "templates"

# The only routes anyone may reach without logging in, each with its reason.
PUBLIC = {
    ("GET", "/login"): "the login form",
    ("POST", "/login"): "logging in",
    ("POST", "/logout"): "logging out (ends whatever session the cookie names)",
    ("GET", "/api/v1/auth/csrf"): "the token the API login needs",
    ("POST", "/api/v1/auth/login"): "logging in",
    ("POST", "/api/v1/auth/logout"): "logging out",
    ("GET", "/healthz"): "liveness",
    ("GET", "/readyz"): "readiness, yes or no only",
    ("GET", "/metrics"): "Prometheus counts, no identifiers",
}
PUBLIC_MOUNTS = {"/static": "CSS, JavaScript, licences"}


@pytest.fixture
def env(make_settings: Callable[..., Settings]) -> Iterator[dict[str, Any]]:
    settings = make_settings(dashboard={"secret_key": "security-test-secret-key-0123456789"})
    db = Database(settings.database_url)
    prepare(db, USERS)
    study = seed_processed_study(db, settings.storage.root, patient_id="PID-SEC-1", accession="ACC-SEC-1")
    with db.session() as session:
        result_id = session.query(ResultObject.id).filter(ResultObject.kind == "sc").scalar()
    app = create_app(settings)
    yield {"app": app, "settings": settings, "db": db, "study": study, "result_id": result_id}
    db.dispose()


def login(client: TestClient, user: str = "alice") -> str:
    token = client.get("/api/v1/auth/csrf").json()["csrf_token"]
    r = client.post("/api/v1/auth/login", json={"username": user, "password": USERS[user][1]},
                    headers={"X-CSRF-Token": token})
    assert r.status_code == 200, r.text
    return str(r.json()["csrf_token"])


def _routes(app: Any) -> list[tuple[str, str, APIRoute]]:
    """(method, full path, route) for every route the app serves, included routers expanded."""
    out = []
    for ctx in iter_route_contexts(app.routes):
        route = ctx.original_route
        if isinstance(route, APIRoute):
            assert ctx.path
            out += [(method, ctx.path, route) for method in sorted(route.methods)]
        elif isinstance(route, Mount):
            assert route.path in PUBLIC_MOUNTS, f"mount {route.path} is not in the public list"
        else:
            raise AssertionError(f"route of unknown kind: {route!r}")
    return out


def _concrete(path: str, env: dict[str, Any]) -> str:
    """The route path with its parameters filled in by real rows (so 401 is not a 404 in disguise)."""
    values = {"study_id": env["study"].id, "result_id": env["result_id"], "action": "resend"}

    def fill(m: re.Match[str]) -> str:
        name = m.group(1).split(":")[0]
        assert name in values, f"no sample value for path parameter {name!r}: add one to the test"
        return str(values[name])

    return re.sub(r"\{([^}]+)\}", fill, path)


def _assert_security_headers(r: httpx.Response, what: str) -> None:
    csp = r.headers.get("content-security-policy", "")
    script_src = re.search(r"script-src ([^;]*)", csp)
    assert script_src and "'unsafe-inline'" not in script_src.group(1) and "'unsafe-eval'" not in csp, (what, csp)
    assert "frame-ancestors 'none'" in csp, (what, csp)
    assert r.headers.get("x-content-type-options") == "nosniff", what
    assert r.headers.get("referrer-policy") in ("same-origin", "no-referrer", "strict-origin-when-cross-origin"), what
    assert r.headers.get("x-frame-options") == "DENY", what


def test_every_route_needs_a_login_except_the_public_few(env: dict[str, Any]) -> None:
    """Walk app.routes: a route added later without an auth dependency fails this test."""
    routes = _routes(env["app"])
    assert set(PUBLIC) <= {(m, p) for m, p, _ in routes}, "the public list names a route that does not exist"
    checked = []
    with TestClient(env["app"], raise_server_exceptions=False) as client:
        token = client.get("/api/v1/auth/csrf").json()["csrf_token"]  # an anonymous session's token
        for method, path, _route in routes:
            if (method, path) in PUBLIC:
                continue
            url = _concrete(path, env)
            for accept in ("application/json", "text/html"):
                r = client.request(method, url, headers={"Accept": accept, "X-CSRF-Token": token},
                                   follow_redirects=False)
                what = f"{method} {url} ({accept})"
                if r.status_code == 303:
                    assert r.headers["location"].startswith("/login"), what
                else:
                    assert r.status_code == 401, (what, r.status_code, r.text[:200])
                assert "PID-SEC-1" not in r.text and "ACC-SEC-1" not in r.text, what
                _assert_security_headers(r, what)
            checked.append((method, path))
        # The same walk logged in as a viewer reaches the routes (the check above is not vacuous).
        login(client, "victor")
        for method, path in checked:
            if method == "GET":
                r = client.get(_concrete(path, env), follow_redirects=False)
                assert r.status_code in (200, 403), (path, r.status_code)
    assert len(checked) >= 20, checked
    # Public routes answer without a login.
    with TestClient(env["app"]) as anonymous:
        for method, path in PUBLIC:
            if method == "GET":
                r = anonymous.get(path)
                assert r.status_code in (200, 503), (path, r.status_code)
                _assert_security_headers(r, path)
        r = anonymous.get("/static/app.css")
        assert r.status_code == 200
        _assert_security_headers(r, "/static/app.css")


def test_security_headers_on_errors_too(env: dict[str, Any]) -> None:
    with TestClient(env["app"], raise_server_exceptions=False) as client:
        login(client)
        for r in (
            client.get("/no/such/page", headers={"Accept": "text/html"}),
            client.get("/api/v1/studies/424242"),
            client.get("/api/v1/studies", params={"limit": "0"}),
            client.post("/api/v1/auth/logout"),  # no CSRF token: 403
            client.post("/api/v1/analyze", content=b"x" * (2 * 1024 * 1024), headers={"Content-Length": "99999999999"}),
            client.get("/docs", headers={"Accept": "text/html"}),
            client.get("/openapi.json"),
        ):
            _assert_security_headers(r, f"{r.request.method} {r.request.url.path} -> {r.status_code}")


def test_templates_need_no_inline_script_or_style() -> None:
    """The CSP allows only our own script files; this keeps the templates inside it (no inline
    <script>, no on*= handlers, no javascript: URLs, no style attributes)."""
    files = sorted(TEMPLATES.rglob("*.html"))
    assert len(files) >= 10
    for path in files:
        text = path.read_text()
        for script in re.finditer(r"<script\b([^>]*)>(.*?)</script>", text, flags=re.S | re.I):
            assert "src=" in script.group(1) and not script.group(2).strip(), (path.name, script.group(0))
        assert not re.search(r"\son[a-z]+\s*=", text, flags=re.I), path.name
        assert "javascript:" not in text.lower(), path.name
        assert not re.search(r"\sstyle\s*=", text, flags=re.I), path.name


# --- out-of-range input ---------------------------------------------------------------------------

BAD_INTS = ["12345678901234567890", "2147483648", "-1", "0", "1.5", "1e3", "x", ""]
BAD_DAYS = ["9999-12-31", "0001-01-01", "1899-12-31", "2026-02-30", "20260230", "x" * 11, "-1"]
BAD_TEXT = ["x" * 5000, "%", "\\", "'", "%00", "\u202e\u00e9"]


def _params(route: APIRoute) -> list[tuple[str, str, Any]]:
    """(where, name, annotation) of every path and query parameter, sub-dependencies included."""
    def walk(dependant: Dependant) -> Iterator[Dependant]:
        yield dependant
        for sub in dependant.dependencies:
            yield from walk(sub)

    out: list[tuple[str, str, Any]] = []
    for dep in walk(route.dependant):
        out += [("path", p.name, p.field_info.annotation) for p in dep.path_params]
        out += [("query", p.name, p.field_info.annotation) for p in dep.query_params]
    return out


def test_out_of_range_input_is_a_4xx_never_a_500(env: dict[str, Any]) -> None:
    """Every int, date and text parameter of every route, enumerated from the app, with hostile values."""
    tried = 0
    with TestClient(env["app"], raise_server_exceptions=False) as client:
        token = login(client)
        for method, path, route in _routes(env["app"]):
            if path in ("/login", "/api/v1/auth/login", "/logout", "/api/v1/auth/logout"):
                continue  # tested elsewhere; would end this session
            for where, name, annotation in _params(route):
                if "received" in name:
                    values = BAD_DAYS
                elif "int" in str(annotation):
                    values = BAD_INTS
                else:
                    values = BAD_TEXT
                for value in values:
                    if where == "path":
                        url = _concrete(path.replace("{" + name + "}", "@@"), env).replace("@@", quote(value) or "%20")
                        r = client.request(method, url, headers={"X-CSRF-Token": token}, follow_redirects=False)
                    else:
                        r = client.request(method, _concrete(path, env), params={name: value},
                                           headers={"X-CSRF-Token": token}, follow_redirects=False)
                    what = f"{method} {path} {name}={value[:20]!r}"
                    assert r.status_code < 500, (what, r.status_code, r.text[:300])
                    tried += 1
    assert tried > 100
    # The cases the issue names, and their answers.
    with TestClient(env["app"], raise_server_exceptions=False) as client:
        login(client)
        for url in ("/api/v1/studies?received_to=9999-12-31", "/api/v1/studies?received_from=0001-01-01",
                    "/api/v1/results/12345678901234567890/thumbnail.png", "/results/12345678901234567890/thumbnail.png",
                    "/api/v1/studies/12345678901234567890", "/studies/99999999999", "/api/v1/studies?offset=99999999999",
                    "/api/v1/audit?study_id=12345678901234567890", "/audit?offset=12345678901234567890"):
            r = client.get(url, headers={"Accept": "application/json"})
            assert r.status_code == 422, (url, r.status_code, r.text[:200])
        assert client.get("/api/v1/studies?received_to=9999-12-30").status_code == 200
        assert client.get("/api/v1/results/2147483647/thumbnail.png").status_code == 404


# --- /readyz ------------------------------------------------------------------------------------


def test_readyz_public_answer_is_only_ready_and_never_echoes_the_pacs(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    from sonopacs.dashboard import health

    echoes: list[float] = []
    probes: list[str] = []
    real_storage = health.check_storage

    def fake_echo(settings: Settings, timeout: float) -> str:
        echoes.append(timeout)
        return "C-ECHO ok"

    def counted_storage(settings: Settings) -> dict[str, Any]:
        probes.append("storage")
        return real_storage(settings)

    monkeypatch.setattr(health, "echo_destination", fake_echo)
    monkeypatch.setattr(health, "check_storage", counted_storage)
    settings = make_settings(export={"host": "127.0.0.1", "port": 11199, "ae_title": "PACS"},
                             dashboard={"readyz_cache_seconds": 60, "readyz_echo_cache_seconds": 60})
    prepare(Database(settings.database_url), USERS)
    with TestClient(create_app(settings)) as client:
        for _ in range(25):
            r = client.get("/readyz")
            assert r.status_code == 200 and r.json() == {"status": "ready"}
        assert echoes == []  # no unauthenticated call reached the PACS
        assert probes == ["storage"]  # and the disk probe ran once for all of them
        login(client)
        for _ in range(3):
            body = client.get("/readyz").json()
            assert body["status"] == "ok"
            assert body["checks"]["destination"] == {"status": "ok", "detail": "C-ECHO ok", "ms": body[
                "checks"]["destination"]["ms"], "age_s": body["checks"]["destination"]["age_s"]}
        assert len(echoes) == 1  # logged in: echoed once, then the cached answer


# --- forwarding headers -----------------------------------------------------------------------


def _login_status(base: str, forwarded_for: str, user: str, password: str) -> int:
    with httpx.Client(base_url=base) as http:
        token = http.get("/api/v1/auth/csrf", headers={"X-Forwarded-For": forwarded_for}).json()["csrf_token"]
        r = http.post("/api/v1/auth/login", json={"username": user, "password": password},
                      headers={"X-CSRF-Token": token, "X-Forwarded-For": forwarded_for})
        return r.status_code


@pytest.mark.parametrize("trusted", [[], ["127.0.0.1"]], ids=["no-proxy-trusted", "proxy-trusted"])
def test_x_forwarded_for_counts_only_from_a_trusted_proxy(
    make_settings: Callable[..., Settings], trusted: list[str]
) -> None:
    """Over a real socket from 127.0.0.1. Untrusted: rotating X-Forwarded-For does not dodge the
    per-address back-off. Trusted: each forwarded client has its own count, and X-Forwarded-Proto
    https makes the cookie Secure."""
    settings = make_settings(dashboard={"trusted_proxies": trusted, "login_free_failures": 3,
                                        "login_backoff_base_seconds": 120,
                                        "secret_key": "proxy-test-secret-key-0123456789"})
    prepare(Database(settings.database_url), USERS)
    with serving(create_app(settings)) as base:
        for n in range(3):
            assert _login_status(base, f"198.51.100.{n + 1}", f"nobody{n}", "wrong-password") == 401
        status = _login_status(base, "198.51.100.99", "victor", USERS["victor"][1])
        with httpx.Client(base_url=base) as http:
            cookie = http.get("/login", headers={"X-Forwarded-Proto": "https"}).headers["set-cookie"].lower()
    if trusted:
        assert status == 200  # another client behind the proxy
        assert "; secure" in cookie
    else:
        assert status == 429  # the forged addresses were ignored: all three failures were 127.0.0.1's
        assert "; secure" not in cookie


def test_forwarded_client_is_the_right_most_untrusted_hop() -> None:
    from sonopacs.dashboard.proxy import forwarded_client, is_trusted, parse_networks

    nets = parse_networks(["10.0.0.0/8", "192.0.2.1"])
    assert is_trusted("10.1.2.3", nets) and is_trusted("192.0.2.1", nets) and not is_trusted("192.0.2.2", nets)
    assert not is_trusted("testclient", nets) and not is_trusted("10.0.0.1", [])
    # A client can prepend anything; only what our proxies appended counts.
    assert forwarded_client("6.6.6.6, 198.51.100.7", nets) == "198.51.100.7"
    assert forwarded_client("198.51.100.7, 10.0.0.9", nets) == "198.51.100.7"
    assert forwarded_client("not-an-ip, 10.0.0.9", nets) is None
    assert forwarded_client("10.0.0.8, 10.0.0.9", nets) == "10.0.0.8"


def test_hsts_only_over_https(env: dict[str, Any]) -> None:
    with TestClient(env["app"], base_url="https://testserver") as tls, TestClient(env["app"]) as plain:
        assert "max-age" in tls.get("/healthz").headers["strict-transport-security"]
        assert "strict-transport-security" not in plain.get("/healthz").headers


def test_served_over_tls_the_session_cookie_is_secure(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """`dashboard.tls_cert`/`tls_key`: a real https uvicorn; with the default cookie_secure=auto the
    session cookie gets `Secure` and responses carry HSTS, with nothing else configured."""
    import subprocess

    key, cert = tmp_path / "dash.key", tmp_path / "dash.crt"
    try:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"openssl cannot make a test certificate: {exc}")
    settings = make_settings(dashboard={"tls_cert": cert, "tls_key": key,
                                        "secret_key": "tls-test-secret-key-0123456789abc"})
    assert settings.dashboard.cookie_secure == "auto"
    prepare(Database(settings.database_url), USERS)
    with serving(create_app(settings)) as base, httpx.Client(base_url=base, verify=str(cert)) as http:
        assert base.startswith("https://")
        r = http.get("/login", headers={"Accept": "text/html"})
        token = r.headers.get("set-cookie", "")
        csrf = http.get("/api/v1/auth/csrf").json()["csrf_token"]
        login = http.post("/api/v1/auth/login", json={"username": "alice", "password": USERS["alice"][1]},
                          headers={"X-CSRF-Token": csrf})
        assert login.status_code == 200
        assert http.get("/api/v1/studies").status_code == 200  # the Secure cookie travels over https
    assert "; secure" in token.lower() and "; secure" in login.headers["set-cookie"].lower()
    assert "max-age" in r.headers["strict-transport-security"]


def test_an_unhandled_error_is_a_plain_500_with_the_security_headers(env: dict[str, Any]) -> None:
    app = env["app"]

    def boom() -> None:
        raise RuntimeError("secret detail PID-SEC-1")

    app.add_api_route("/test-only-boom", boom)
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/test-only-boom")
    assert r.status_code == 500 and r.json() == {"detail": "internal error"}
    _assert_security_headers(r, "500")
