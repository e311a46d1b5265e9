"""PHI-bearing DICOM fields with markup and quote-breaking values are shown as text, never run.

Studies are seeded with `<script>`, `"><img onerror>` and `'`-breaking values in patient name, patient
ID, accession number and study description; search and filter terms reflected into forms get the same.
Every page (and htmx fragment) that shows them is checked twice: in the HTML (escaped, never raw) and
in Debian Chromium against a real uvicorn (no flag set by a payload, no dialog, no injected element).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from fastapi.testclient import TestClient
from markupsafe import escape

from sonopacs.config import Settings
from sonopacs.dashboard.app import create_app
from sonopacs.db.models import StudyState
from sonopacs.db.session import Database
from tests.support.dashboard_demo import prepare, seed_processed_study, serving

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
USERS = {"alice": ("admin", "alice-password")}

# Each payload, if it ever ran, would set window.__xss (and some would open a dialog).
HOSTILE = {
    "patient_name": "<script>window.__xss='name';alert(1)</script>",
    "patient_id": "x' autofocus onfocus='window.__xss=\"pid\"",
    "accession": "\"><img src=x onerror=\"window.__xss='acc'\">",
    "study_description": "'><svg onload=window.__xss='desc'></svg><script>alert(2)</script>",
}
SEARCH = "\"><script>window.__xss='q'</script>"
FILTER = "'><img src=x onerror=window.__xss='filter'>"


@pytest.fixture
def env(make_settings: Callable[..., Settings]) -> Iterator[dict[str, Any]]:
    settings = make_settings(dashboard={"secret_key": "xss-test-secret-key-0123456789abcdef"})
    db = Database(settings.database_url)
    prepare(db, USERS)
    # Failed, so it is on the overview's "Recent failures" too; the second one is plain.
    study = seed_processed_study(db, settings.storage.root, patient_id=HOSTILE["patient_id"],
                                 accession=HOSTILE["accession"], patient_name=HOSTILE["patient_name"],
                                 study_description=HOSTILE["study_description"], state=StudyState.EXPORT_FAILED)
    seed_processed_study(db, settings.storage.root, patient_id="PLAIN-1", accession="ACC-PLAIN-1")
    yield {"settings": settings, "db": db, "study": study, "app": create_app(settings)}
    db.dispose()


def _pages(study_id: int) -> dict[str, list[str]]:
    """Each page or fragment that shows DICOM fields (or reflects a term), and the values it shows."""
    listed = ["patient_id", "accession", "study_description"]
    return {
        "/": ["accession"],
        "/fragments/overview": ["accession"],
        "/studies": listed,
        "/fragments/studies": listed,
        f"/studies/{study_id}": listed,
        f"/fragments/studies/{study_id}": [],
        "/audit": ["accession"],
        "/fragments/audit": ["accession"],
        "/studies?" + urlencode({"q": SEARCH}): ["search"],
        "/audit?" + urlencode({"event": FILTER, "actor": SEARCH}): ["filter", "search"],
    }


def _value(key: str) -> str:
    return {"search": SEARCH, "filter": FILTER}.get(key) or HOSTILE[key]


def _login(client: TestClient) -> None:
    token = client.get("/api/v1/auth/csrf").json()["csrf_token"]
    r = client.post("/api/v1/auth/login", json={"username": "alice", "password": USERS["alice"][1]},
                    headers={"X-CSRF-Token": token})
    assert r.status_code == 200


def test_hostile_fields_are_escaped_in_every_page(env: dict[str, Any]) -> None:
    raw = [*HOSTILE.values(), SEARCH, FILTER]
    with TestClient(env["app"]) as client:
        _login(client)
        for path, shown in _pages(env["study"].id).items():
            r = client.get(path, headers={"Accept": "text/html"})
            assert r.status_code == 200, path
            assert r.headers["content-type"].startswith("text/html")
            for value in raw:
                assert value not in r.text, (path, value)
            for key in shown:
                assert str(escape(_value(key))) in r.text, (path, key)  # shown, as text
        # The login form reflects ?next= into a hidden field.
        client.post("/api/v1/auth/logout", headers={"X-CSRF-Token": client.get("/api/v1/auth/me").json()[
            "csrf_token"]})
        page = client.get("/login?" + urlencode({"next": "/" + SEARCH}), headers={"Accept": "text/html"}).text
        assert SEARCH not in page
        # The API hands the values back unchanged, as JSON (which a browser will not sniff as HTML).
        _login(client)
        r = client.get(f"/api/v1/studies/{env['study'].id}")
        assert r.headers["content-type"] == "application/json" and r.headers["x-content-type-options"] == "nosniff"
        body = r.json()
        assert body["patient_name"] == HOSTILE["patient_name"]
        assert body["accession_number"] == HOSTILE["accession"]
        assert body["study_description"] == HOSTILE["study_description"]


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed (/usr/bin/chromium)")
@pytest.mark.skipif(importlib.util.find_spec("playwright") is None, reason="playwright is not installed")
def test_no_script_runs_from_dicom_fields_in_chromium(env: dict[str, Any], tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    dialogs: list[str] = []
    study_id = env["study"].id
    with serving(env["app"]) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(f"{url}/login?" + urlencode({"next": "/" + SEARCH}))
            page.get_by_label("User name").fill("alice")
            page.get_by_label("Password").fill(USERS["alice"][1])
            page.get_by_role("button", name="Log in").click()
            page.wait_for_load_state("networkidle")
            for path, shown in _pages(study_id).items():
                page.goto(url + path)
                page.wait_for_load_state("networkidle")
                if path == f"/studies/{study_id}":
                    page.wait_for_timeout(2500)  # one htmx poll of the live part swaps in
                    page.focus("body")
                page.mouse.move(200, 300)
                state = page.evaluate(
                    """() => ({
                        flag: window.__xss === undefined ? null : String(window.__xss),
                        injected: document.querySelectorAll('img[src="x"], svg, script:not([src])').length,
                        handlers: [...document.querySelectorAll('*')].flatMap(
                            el => [...el.attributes].map(a => a.name)).filter(n => n.startsWith('on')),
                        text: document.body.innerText + ' ' + [...document.querySelectorAll('input')].map(
                            i => i.value).join(' '),
                    })"""
                )
                assert state["flag"] is None, (path, state["flag"])
                assert state["injected"] == 0 and state["handlers"] == [], (path, state)
                for key in shown:
                    assert _value(key) in state["text"], (path, key)  # the value is there, as text
            page.screenshot(path=str(tmp_path / "xss-audit.png"), full_page=True)
        finally:
            browser.close()
    assert dialogs == []
