"""The dashboard in a real browser: Debian chromium via Playwright against a real uvicorn, a real
Celery worker and a real Orthanc as the PACS. Log in, find the failed study, open it, see the AI
overlay thumbnail, click "Resend", and watch the state turn to exported without reloading.

Screenshots go to the test's tmp_path (never into the checkout); SONOPACS_UPDATE_SCREENSHOTS=1 refreshes
the README's docs/dashboard-study.png and docs/dashboard-overview.png from them.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sonopacs.config import Settings
from sonopacs.db.migrate import upgrade
from sonopacs.db.models import StudyState
from sonopacs.db.session import Database
from tests.support.dashboard_demo import prepare, seed_processed_study
from tests.support.net import free_port, wait_for_port, wait_until
from tests.support.worker_proc import log_tail, study_jobs

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.orthanc,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed (/usr/bin/chromium)"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None, reason="playwright is not installed"),
]


def _resend_available() -> bool:
    try:
        from sonopacs.worker.actions import resend_study  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture
def served(make_settings: Callable[..., Settings], orthanc_factory: Callable[..., Any], tmp_path: Path
           ) -> Iterator[dict[str, Any]]:
    """Orthanc as the PACS, a real `sonopacs worker`, and the dashboard on uvicorn, sharing one config."""
    if not _resend_available():
        pytest.skip("sonopacs.worker.actions.resend_study has not landed yet: resend cannot really run")
    import uvicorn

    from sonopacs.dashboard.app import create_app
    from tests.support.worker_proc import worker_process, write_config

    pacs = orthanc_factory()
    settings = make_settings(
        export={"host": "127.0.0.1", "port": pacs.dicom_port, "ae_title": pacs.ae_title, "timeout": 5,
                "backoff_base_seconds": 0.3, "backoff_max_seconds": 1.0},
        dashboard={"secret_key": "browser-test-secret-key-0123456789"},
    )
    upgrade(settings.database_url)
    db = Database(settings.database_url)
    prepare(db, {"admin": ("admin", "admin-password")})
    seed_processed_study(db, settings.storage.root, patient_id="DEMO-0002", accession="ACC-2026-0417")
    failed = seed_processed_study(db, settings.storage.root, patient_id="DEMO-0001", accession="ACC-2026-0418",
                                  state=StudyState.EXPORT_FAILED)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           access_log=False, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    config = write_config(settings, tmp_path / "sonopacs.yaml")
    log = tmp_path / "worker.log"
    with worker_process(config, log, concurrency=1):
        thread.start()
        wait_for_port(port, timeout=30)
        # The export must not race the worker's start on a loaded machine: the resend below waits 60 s.
        wait_until(lambda: log.exists() and " ready." in log.read_text(errors="replace"), timeout=120)
        try:
            yield {"url": f"http://127.0.0.1:{port}", "study": failed, "pacs": pacs, "db": db,
                   "worker_log": log}
        finally:
            server.should_exit = True
            thread.join(timeout=10)
    db.dispose()


def _shot(page: Any, name: str, artifacts: Path) -> Path:
    artifacts.mkdir(parents=True, exist_ok=True)
    path = artifacts / name
    page.screenshot(path=str(path), full_page=True)
    return path


def test_login_see_study_resend_and_watch_it_export(served: dict[str, Any], tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, study = served["url"], served["study"]
    artifacts = tmp_path / "screenshots"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 800})
            page.goto(f"{url}/studies")
            expect(page).to_have_url(f"{url}/login?next=/studies")
            assert "ACC-2026" not in page.content()  # nothing about patients before login
            _shot(page, "01-login.png", artifacts)
            page.get_by_label("User name").fill("admin")
            page.get_by_label("Password").fill("admin-password")
            page.get_by_role("button", name="Log in").click()
            expect(page).to_have_url(f"{url}/studies")
            expect(page.get_by_role("link", name=study.accession_number)).to_be_visible()
            _shot(page, "02-studies.png", artifacts)

            page.get_by_role("link", name="Overview").click()
            expect(page.get_by_role("heading", name="Recent failures")).to_be_visible()
            _shot(page, "03-overview.png", artifacts)

            page.goto(f"{url}/studies/{study.id}")
            state = page.locator("#study-state")
            expect(state).to_have_attribute("data-state", "export_failed")
            thumb = page.locator("figure.result img").first
            expect(thumb).to_be_visible()
            page.wait_for_function(
                "() => [...document.querySelectorAll('figure.result img')].every(i => i.complete && i.naturalWidth > 0)"
            )
            expect(page.get_by_text("AI result, for assistance only, not for diagnosis").first).to_be_visible()
            _shot(page, "04-study-export-failed.png", artifacts)

            page.get_by_role("button", name="Resend results to PACS").click()
            expect(page.locator("#action-result")).to_contain_text("queued for export again")
            # htmx polling brings the new state in without a reload.
            try:
                expect(state).to_have_attribute("data-state", "exported", timeout=60_000)
            except AssertionError as exc:  # say what the worker did, not only what the page shows
                raise AssertionError(f"{exc}\n--- {study_jobs(served['db'], study.id)}\n--- worker log:\n"
                                     f"{log_tail(served['worker_log'])}") from None
            expect(page.locator("#h-exports + table tbody tr").first).to_contain_text("Sent 2")
            time.sleep(0.3)  # let the badge transition paint before the screenshot
            final = _shot(page, "05-study-exported.png", artifacts)

            # The other pages render for an admin; the upload page explains a bad file.
            for link, heading, name in (("Audit log", "Audit log", "06-audit.png"), ("Model", "Model", "07-model.png"),
                                        ("Configuration", "Configuration", "08-config.png")):
                page.get_by_role("link", name=link, exact=True).click()
                expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
                _shot(page, name, artifacts)
            page.get_by_role("link", name="Analyze image").click()
            page.get_by_label("Image file").set_input_files(
                files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image"}])
            page.get_by_role("button", name="Analyze").click()
            expect(page.get_by_role("alert")).to_contain_text("not a PNG, JPEG or DICOM")
            _shot(page, "09-analyze-bad-file.png", artifacts)
        finally:
            browser.close()

    assert set(study.result_sop_uids) <= served["pacs"].sop_instance_uids()
    # The README screenshots: refreshed on request, so a test run leaves tracked files alone.
    docs = REPO / "docs"
    assert final.stat().st_size > 0 and (artifacts / "03-overview.png").exists()
    if os.environ.get("SONOPACS_UPDATE_SCREENSHOTS"):
        for source, name in ((final, "dashboard-study.png"), (artifacts / "03-overview.png", "dashboard-overview.png")):
            docs.mkdir(exist_ok=True)
            shutil.copyfile(source, docs / name)
