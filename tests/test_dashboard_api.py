"""Dashboard REST API and operations endpoints: data, thumbnails, metrics, health, analyze upload."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from sonopacs.config import Settings
from sonopacs.dashboard import analysis as dashboard_analysis
from sonopacs.dashboard.app import create_app
from sonopacs.db.models import StudyState
from sonopacs.db.session import Database
from tests.support.dashboard_demo import prepare, seed_processed_study

USERS = {"alice": ("admin", "alice-password"), "victor": ("viewer", "victor-password")}


def login(client: TestClient, user: str = "alice") -> str:
    token = client.get("/api/v1/auth/csrf").json()["csrf_token"]
    r = client.post("/api/v1/auth/login", json={"username": user, "password": USERS[user][1]},
                    headers={"X-CSRF-Token": token})
    assert r.status_code == 200, r.text
    return str(r.json()["csrf_token"])


@pytest.fixture
def env(make_settings: Callable[..., Settings]) -> Iterator[dict[str, Any]]:
    settings = make_settings()
    db = Database(settings.database_url)
    prepare(db, USERS)
    done = seed_processed_study(db, settings.storage.root, patient_id="PAT-A", accession="ACC-100")
    failed = seed_processed_study(db, settings.storage.root, patient_id="PAT-B", accession="ACC-200",
                                  state=StudyState.EXPORT_FAILED)
    with TestClient(create_app(settings)) as client:
        token = login(client)
        yield {"client": client, "token": token, "settings": settings, "db": db, "done": done, "failed": failed}
    db.dispose()


def test_studies_list_filters_and_search(env: dict[str, Any]) -> None:
    client: TestClient = env["client"]
    all_ = client.get("/api/v1/studies").json()
    assert all_["total"] == 2
    assert {s["accession_number"] for s in all_["items"]} == {"ACC-100", "ACC-200"}
    failed = client.get("/api/v1/studies", params={"state": "export_failed"}).json()
    assert [s["accession_number"] for s in failed["items"]] == ["ACC-200"]
    assert client.get("/api/v1/studies", params={"q": "PAT-A"}).json()["items"][0]["accession_number"] == "ACC-100"
    assert client.get("/api/v1/studies", params={"q": "acc-2"}).json()["total"] == 1
    assert client.get("/api/v1/studies", params={"q": "%"}).json()["total"] == 0  # LIKE wildcards are literal
    assert client.get("/api/v1/studies", params={"received_from": "2000-01-01", "received_to": "2000-01-02"}
                      ).json()["total"] == 0
    assert client.get("/api/v1/studies", params={"state": "nonsense"}).status_code == 422
    assert client.get("/api/v1/studies", params={"received_from": "yesterday"}).status_code == 422


def test_study_detail_has_everything_the_page_needs(env: dict[str, Any]) -> None:
    client: TestClient = env["client"]
    s = client.get(f"/api/v1/studies/{env['failed'].id}").json()
    assert s["state"] == "export_failed" and "rejected" in s["state_reason"]
    assert len(s["instances"]) == 2
    assert [j["stage"] for j in s["jobs"]] == ["clean", "analyze", "publish", "export"]
    assert {r["kind"] for r in s["results"]} == {"sc", "sr"}
    assert s["exports"][0]["success"] is False
    assert any(a["to_state"] == "results_ready" for a in s["audit"])
    assert "not for diagnosis" in s["disclaimer"]
    assert client.get("/api/v1/studies/999999").status_code == 404


def test_study_page_shows_results_thumbnail_and_disclaimer(env: dict[str, Any]) -> None:
    client: TestClient = env["client"]
    page = client.get(f"/studies/{env['done'].id}", headers={"Accept": "text/html"}).text
    assert "AI result, for assistance only, not for diagnosis" in page
    assert 'id="btn-resend"' in page and "Stage timings" in page and "Export attempts" in page
    img = re.search(r'src="(/results/\d+/thumbnail\.png)"', page)
    assert img
    r = client.get(img.group(1))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    png = Image.open(io.BytesIO(r.content))
    assert png.mode == "RGB" and max(png.size) <= 480
    # The yellow contour drawn into the SC pixels survives in the thumbnail.
    arr = np.asarray(png)
    assert ((arr[..., 0] > 200) & (arr[..., 1] > 180) & (arr[..., 2] < 80)).sum() > 50


def test_overview_and_fragments(env: dict[str, Any]) -> None:
    client: TestClient = env["client"]
    o = client.get("/api/v1/overview").json()
    assert o["studies_today"]["exported"] == 1 and o["studies_today"]["export_failed"] == 1
    assert o["throughput_last_24h"] == 2
    assert o["latency_seconds"]["n"] == 2 and o["latency_seconds"]["median"] > 0
    assert set(o["broker"]["queues"]) >= {"clean", "inference", "export"}
    assert any(f["accession_number"] == "ACC-200" for f in o["recent_failures"])
    html = client.get("/fragments/overview").text
    assert "Recent failures" in html and "Queues" in html
    assert "ACC-100" in client.get("/fragments/studies").text
    assert "study_state" in client.get("/fragments/audit").text


def test_audit_api_filters(env: dict[str, Any]) -> None:
    client: TestClient = env["client"]
    log = client.get("/api/v1/audit", params={"study_id": env["done"].id}).json()
    assert log["total"] >= 4
    assert all(item["study_id"] == env["done"].id for item in log["items"])
    assert client.get("/api/v1/audit", params={"actor": "nobody"}).json()["total"] == 0


def test_metrics_exposes_counts_without_identifiers(env: dict[str, Any]) -> None:
    text = env["client"].get("/metrics").text
    assert "sonopacs_instances_received_total 4.0" in text
    assert 'sonopacs_studies{state="exported"} 1.0' in text
    assert "sonopacs_export_failures_total 1.0" in text
    assert 'sonopacs_stage_duration_seconds_bucket{le="2.0",stage="clean"} 2.0' in text
    assert 'sonopacs_stage_duration_seconds_count{stage="analyze"} 2.0' in text
    assert 'sonopacs_queue_depth{queue="export"} 0.0' in text
    for ident in ("ACC-100", "PAT-A", env["done"].study_instance_uid):
        assert ident not in text


def test_health_and_readiness(env: dict[str, Any]) -> None:
    client: TestClient = env["client"]
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    body = r.json()
    assert r.status_code == 200, body
    assert {k: v["status"] for k, v in body["checks"].items()} == {
        "database": "ok", "broker": "ok", "storage": "ok", "destination": "skipped"}


def test_readiness_reports_unreachable_destination_and_database(make_settings: Callable[..., Settings]) -> None:
    from tests.support.net import free_port

    settings = make_settings(export={"host": "127.0.0.1", "port": free_port(), "ae_title": "NOPACS"})
    prepare(Database(settings.database_url), USERS)
    with TestClient(create_app(settings)) as client:
        public = client.get("/readyz")
        login(client)
        r = client.get("/readyz")
    # Anyone learns "ready" (the PACS being down does not stop receiving); only a user learns why.
    assert public.status_code == 200 and public.json() == {"status": "ready"}
    assert r.status_code == 200 and r.json()["status"] == "degraded"
    assert r.json()["checks"]["destination"]["status"] == "fail"
    bad = make_settings(database={"url": "postgresql+psycopg2://nobody@127.0.0.1:1/none"})
    with TestClient(create_app(bad)) as client:
        r = client.get("/readyz")
    assert r.status_code == 503 and r.json() == {"status": "not ready"}


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((64, 80)) * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("name", "data", "status", "reason"),
    [
        ("empty.png", b"", 400, "empty"),
        ("notes.txt", b"hello, this is not an image", 415, "not a PNG, JPEG or DICOM"),
        ("cut.png", _png_bytes()[:60], 422, "cannot be decoded"),
        ("fake.dcm", b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage", 422, "DICOM"),
    ],
    ids=["empty", "text", "truncated-png", "broken-dicom"],
)
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_analyze_rejects_bad_files_with_a_reason(
    env: dict[str, Any], name: str, data: bytes, status: int, reason: str
) -> None:
    r = env["client"].post("/api/v1/analyze", files={"file": (name, data)},
                           headers={"X-CSRF-Token": env["token"]})
    assert r.status_code == status, r.text
    assert reason in r.json()["detail"]


def test_analyze_rejects_oversized_upload_before_reading_it(env: dict[str, Any]) -> None:
    from sonopacs.dashboard.analysis import MAX_UPLOAD_BYTES

    big = b"\x89PNG\r\n\x1a\n" + b"\0" * (MAX_UPLOAD_BYTES + 100_000)
    r = env["client"].post("/api/v1/analyze", files={"file": ("big.png", big)},
                           headers={"X-CSRF-Token": env["token"]})
    assert r.status_code == 413


def test_analyze_dicom_without_pixels_is_a_4xx(env: dict[str, Any], tmp_path: Any) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    path = tmp_path / "sr.dcm"
    ds.save_as(path, enforce_file_format=True)
    r = env["client"].post("/api/v1/analyze", files={"file": ("sr.dcm", path.read_bytes())},
                           headers={"X-CSRF-Token": env["token"]})
    assert r.status_code == 422 and "no pixel data" in r.json()["detail"]


def test_analyze_page_is_there(env: dict[str, Any]) -> None:
    page = env["client"].get("/analyze", headers={"Accept": "text/html"}).text
    assert 'type="file"' in page and "not for diagnosis" in page and "/static/analyze.js" in page


def test_model_page_degrades_without_weights(env: dict[str, Any], make_settings: Callable[..., Settings],
                                             tmp_path: Any) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "model_card.md").write_text("# Demo model\n\n| metric | value |\n|---|---|\n| AUC | 0.9 |\n\n"
                                           "<script>alert(1)</script>\n")
    ops = {"default": 0.5, "high_sensitivity": 0.2}
    (weights / "model.json").write_text(json.dumps({"name": "demo-net", "version": "demo-2", "operating_points": ops,
                                                    "ensemble_members": ["member_1.pt", "member_2.pt"]}))
    (weights / "metrics.json").write_text(json.dumps({
        "operating_points": ops, "jobs": {"cv0": {"version": "not-this-one"}},
        "oof": {"all": {"accuracy": 0.81, "confusion_matrix": [[1, 0], [0, 1]]}}}))
    settings = make_settings(model={"weights_dir": weights})
    prepare(Database(settings.database_url), USERS)
    with TestClient(create_app(settings)) as client:
        login(client)
        info = client.get("/api/v1/model").json()
        page = client.get("/model", headers={"Accept": "text/html"}).text
    assert info["version"] == "demo-2" and info["operating_points"]["high_sensitivity"] == 0.2
    assert info["metrics"] == {"accuracy": 0.81} and info["name"] == "demo-net"
    assert "<table>" in page and "<script>alert" not in page and "high_sensitivity" in page
    assert info["networks"] == 3 and "Ensemble of 3 networks" in page
    empty = make_settings(model={"weights_dir": tmp_path / "missing"})
    prepare(Database(empty.database_url), USERS)
    with TestClient(create_app(empty)) as client:
        login(client)
        assert client.get("/api/v1/model").json()["available"] is False


def test_openapi_documents_the_api(env: dict[str, Any]) -> None:
    spec = env["client"].get("/openapi.json").json()
    for path in ("/api/v1/studies", "/api/v1/studies/{study_id}/resend", "/api/v1/analyze", "/api/v1/auth/login"):
        assert path in spec["paths"]
    docs = env["client"].get("/docs").text
    assert "/static/swagger-ui-bundle.js" in docs and "cdn" not in docs


def test_analyze_good_png_returns_result_and_overlay(env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The endpoint's own work (validation, temp folder, JSON + base64 PNGs) with the engine stubbed,
    so it is tested whether or not the shipped model is installed on this machine."""
    import base64
    from pathlib import Path


    def fake_analyze(settings: Settings, paths: list[Path], out: Path) -> list[dict[str, Any]]:
        stem = paths[0].stem
        Image.open(paths[0]).convert("RGB").save(out / f"{stem}_overlay.png")
        Image.new("L", Image.open(paths[0]).size).save(out / f"{stem}_mask.png")
        record = {"label": "benign", "probabilities": {"normal": 0.1, "benign": 0.7, "malignant": 0.2}}
        (out / f"{stem}.json").write_text(json.dumps(record))
        return [{"input": str(paths[0]), **record}]

    monkeypatch.setattr(dashboard_analysis, "get_analyzer", lambda settings: object())
    monkeypatch.setattr(dashboard_analysis, "analyze_files", fake_analyze)
    r = env["client"].post("/api/v1/analyze", files={"file": ("my scan (1).png", _png_bytes(), "image/png")},
                           headers={"X-CSRF-Token": env["token"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["result"]["label"] == "benign" and "input" not in body["result"]
    assert body["filename"] == "my_scan_1.png" and "not for diagnosis" in body["disclaimer"]
    overlay = Image.open(io.BytesIO(base64.b64decode(body["overlay_png_base64"])))
    assert overlay.size == (80, 64)


def test_analyze_without_a_loadable_model_is_503(env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:

    def missing(settings: Settings) -> None:
        raise ImportError("cannot import name 'Analyzer' from 'models'")

    monkeypatch.setattr(dashboard_analysis, "get_analyzer", missing)
    r = env["client"].post("/api/v1/analyze", files={"file": ("a.png", _png_bytes())},
                           headers={"X-CSRF-Token": env["token"]})
    assert r.status_code == 503 and "analysis engine" in r.json()["detail"]


def test_admin_actions_really_enqueue_and_are_audited(env: dict[str, Any]) -> None:
    """No worker runs here: the messages must be waiting in the broker, and the audit names the user."""
    from sonopacs.dashboard.broker import queue_depths

    client: TestClient = env["client"]
    sid = env["failed"].id
    headers = {"X-CSRF-Token": env["token"]}
    r = client.post(f"/api/v1/studies/{sid}/resend", headers=headers)
    assert r.status_code == 200, r.text
    assert queue_depths(env["settings"])["export"] == 1
    r = client.post(f"/api/v1/studies/{sid}/reprocess", headers=headers)
    assert r.status_code == 200 and r.json()["result"] == 2  # the new generation
    assert queue_depths(env["settings"])["control"] == 1
    study = client.get(f"/api/v1/studies/{sid}").json()
    assert study["state"] == "queued" and study["generation"] == 2
    actors = {(a["actor"], a["event"]) for a in study["audit"]}
    assert {("user:alice", "resend_requested"), ("user:alice", "study_state")} <= actors
    # The worker refuses a resend while the new run is pending: a 409 with its reason, not a 500.
    r = client.post(f"/api/v1/studies/{sid}/resend", headers=headers)
    assert r.status_code == 409 and "queued" in r.json()["detail"]
    assert client.post("/api/v1/studies/424242/resend", headers=headers).status_code == 404
    # The page form (no htmx) redirects back with a flash message.
    r = client.post(f"/studies/{env['done'].id}/resend", data={"csrf_token": env["token"]},
                    headers={"Accept": "text/html"}, follow_redirects=False)
    assert r.status_code == 303
    assert "queued for export again" in client.get(r.headers["location"], headers={"Accept": "text/html"}).text


def test_overview_shows_disk_usage_and_what_retention_removes_next(env: dict[str, Any]) -> None:
    """The exported demo study is due within 7 days once its originals' retention is under a week."""
    settings, client = env["settings"], env["client"]
    received = settings.storage.root / "received" / "x.dcm"
    received.parent.mkdir(parents=True, exist_ok=True)
    received.write_bytes(b"\0" * 4096)
    storage = client.get("/api/v1/overview").json()["storage"]
    assert storage["usage"]["received"] == 4096 and storage["usage"]["free"] > 0
    assert storage["usage"]["results"] > 0  # the demo study's SC and SR
    assert storage["due_now"]["items"] == 0  # exported minutes ago: 30 days to go
    client.app.state.storage.settings = settings.model_copy(  # type: ignore[attr-defined]
        update={"retention": settings.retention.model_copy(update={"originals_days": 3})}
    )
    client.app.state.storage.cache_seconds = 0  # type: ignore[attr-defined]
    storage = client.get("/api/v1/overview").json()["storage"]
    assert storage["due_7_days"]["items"] == 1 and storage["next"][0]["study_id"] == env["done"].id
    assert "Storage and retention" in client.get("/fragments/overview").text
