"""The site monitor: what the model has reported at this site, counted from the per-image results
in the database on both backends, judged against the assumed share of normal images, and shown on
the model page, in the API and in /metrics without identifiers."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from sonopacs.config import Settings
from sonopacs.dashboard.app import create_app
from sonopacs.dashboard.site_monitor import MIN_IMAGES, judge, site_outcomes
from sonopacs.db.models import ResultObject
from sonopacs.db.session import Database
from tests.support.dashboard_demo import prepare, seed_processed_study

USERS = {"alice": ("admin", "alice-password")}


def _results(db: Database, study_id: int, version: str, mix: dict[str, int], *, kind: str = "sc",
             superseded: bool = False, age: timedelta = timedelta(hours=1)) -> None:
    """``mix``: how many per-image results of each outcome (benign / malignant / normal / not_assessed)."""
    category = {"benign": "4A", "malignant": "4C", "normal": "1", "not_assessed": None}
    with db.session() as session:
        for outcome, n in mix.items():
            for _ in range(n):
                summary: dict[str, Any] = {"label": outcome if outcome != "not_assessed" else "benign",
                                           "assessed": outcome != "not_assessed",
                                           "likelihood_category": category[outcome]}
                session.add(ResultObject(study_id=study_id, generation=1, kind=kind, sop_class_uid="1.2",
                                         sop_instance_uid=f"2.25.{abs(hash((version, outcome, kind, superseded, age, _, n)))}",
                                         series_instance_uid="2.25.1", path="x", model_name="sono", model_version=version,
                                         summary=summary, superseded=superseded, created_at=datetime.now(UTC) - age))


def test_counts_current_per_image_results_per_model_and_warns(make_settings: Callable[..., Settings],
                                                              backend: str) -> None:
    settings = make_settings(backend)
    db = Database(settings.database_url)
    prepare(db)
    study = seed_processed_study(db, settings.storage.root)  # its one SC is "demo-model 1.0"
    # 0.9: 45 of 55 assessed images given a lesion where 40 % normal allows about 60 %; 5 of 60 not assessed
    _results(db, study.id, "0.9", {"benign": 30, "malignant": 15, "normal": 10, "not_assessed": 5})
    _results(db, study.id, "0.9", {"normal": 40}, superseded=True)  # replaced by a later run: not counted
    _results(db, study.id, "0.9", {"normal": 40}, kind="sr")  # the study's report, not an image
    _results(db, study.id, "0.9", {"normal": 40}, age=timedelta(days=31))  # outside the window
    # 1.0: a mix the configured share of normal images allows
    _results(db, study.id, "1.0", {"benign": 20, "malignant": 10, "normal": 28, "not_assessed": 1})
    out = site_outcomes(db, 0.4)
    by_version = {(m["name"], m["version"]): m for m in out["models"]}
    old, new = by_version[("sono", "0.9")], by_version[("sono", "1.0")]
    assert (old["images"], old["lesion"], old["normal"], old["not_assessed"]) == (60, 45, 10, 5)
    assert old["categories"] == {"1": 10, "3": 0, "4A": 30, "4B": 0, "4C": 15, "5": 0}
    assert old["lesion_share"] == pytest.approx(45 / 55) and old["not_assessed_share"] == pytest.approx(5 / 60)
    assert len(old["warnings"]) == 2
    assert "82% of 55 assessed images were given a lesion" in old["warnings"][0]
    assert "8% of 60 images were not assessed" in old["warnings"][1]
    assert (new["images"], new["lesion"], new["warnings"]) == (59, 30, [])
    assert by_version[("demo-model", "1.0")]["images"] == 1
    # the same counts judged for a site whose own calibration says 10 % normal: no lesion warning
    assert len({(m["name"], m["version"]): m for m in site_outcomes(db, 0.1)["models"]}[("sono", "0.9")]["warnings"]) == 1
    db.dispose()


@pytest.mark.parametrize(("lesion", "normal", "warned"), [
    (41, 9, True),    # 82 % of 50: above 60 % + 3 standard errors (0.208)
    (40, 10, False),  # 80 % of 50: just within them
    (40, 8, False),   # 83 %, but on fewer than MIN_IMAGES
])
def test_lesion_share_warns_only_beyond_chance_on_enough_images(lesion: int, normal: int, warned: bool) -> None:
    row = {"images": lesion + normal, "lesion": lesion, "normal": normal, "not_assessed": 0, "categories": {}}
    assert (lesion + normal >= MIN_IMAGES) or not warned
    assert bool(judge(row, 0.4)["warnings"]) is warned


def test_page_api_and_metrics_show_the_counts_without_identifiers(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    db = Database(settings.database_url)
    prepare(db, USERS)
    study = seed_processed_study(db, settings.storage.root, patient_id="PAT-<b>X</b>", accession="ACC-9")
    _results(db, study.id, "0.9", {"benign": 50, "normal": 5})
    with TestClient(create_app(settings)) as client:
        token = client.get("/api/v1/auth/csrf").json()["csrf_token"]
        assert client.post("/api/v1/auth/login", json={"username": "alice", "password": "alice-password"},
                           headers={"X-CSRF-Token": token}).status_code == 200
        site = client.get("/api/v1/model").json()["site"]
        page = client.get("/model", headers={"Accept": "text/html"}).text
        metrics = client.get("/metrics").text
    assert site["days"] == 30 and site["expected_normal_fraction"] == 0.4
    row = next(m for m in site["models"] if m["version"] == "0.9")
    assert (row["lesion"], row["normal"]) == (50, 5) and len(row["warnings"]) == 1
    assert "At this site, last 30 days" in page and "91 % of assessed" in page
    assert "91% of 55 assessed images were given a lesion" in page
    assert 'sonopacs_image_results_30d{model_version="0.9",outcome="lesion"} 50.0' in metrics
    assert 'sonopacs_image_results_30d{model_version="0.9",outcome="normal"} 5.0' in metrics
    assert 'sonopacs_image_likelihood_category_30d{category="4A",model_version="0.9"} 50.0' in metrics
    for ident in ("ACC-9", "PAT-", study.study_instance_uid):
        assert ident not in metrics and ident not in str(site)
    db.dispose()
