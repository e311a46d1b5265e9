"""The presence rule's ``mask_threshold``: the Analyzer draws the lesion mask at it, and a site
calibration (whose mask areas were measured at the shipped threshold) keeps it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np

from sonopacs.models.analyzer import DEFAULT_WEIGHTS, Analyzer
from sonopacs.models.calibration import Calibration
from sonopacs.models.presence import PresenceRule
from sonopacs.models.site_calibration import fit_site_calibration

DATA = Path(__file__).parent / "data" / "bus-bra"


def _weights(folder: Path, mask_threshold: float) -> Path:
    """The shipped weights with the presence rule's mask threshold changed (and no scope bank)."""
    folder.mkdir(parents=True)
    for name in ("model.pt", "model.json"):
        shutil.copy(DEFAULT_WEIGHTS / name, folder / name)
    manifest = json.loads((folder / "model.json").read_text())
    manifest["lesion_presence"] = {**manifest.get("lesion_presence", {}), "mask_threshold": mask_threshold}
    (folder / "model.json").write_text(json.dumps(manifest))
    return folder


def test_the_mask_is_drawn_at_the_rules_threshold(tmp_path: Path) -> None:
    images = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sorted(DATA.glob("bus_*.jpg"))]
    at_half = Analyzer.load(_weights(tmp_path / "half", 0.5), "cpu", scope_gate=False).analyze_batch(images)
    low = Analyzer.load(_weights(tmp_path / "low", 0.15), "cpu", scope_gate=False).analyze_batch(images)
    area_half = np.array([r.extra["lesion_area_fraction"] for r in at_half])
    area_low = np.array([r.extra["lesion_area_fraction"] for r in low])
    assert (area_low >= area_half).all() and (area_low > area_half).any()
    for r in low:  # the mask holds only pixels at or above the threshold it was drawn at
        if r.extra["lesion_area_fraction"] > 0:
            assert r.extra["lesion_mask_confidence"] >= 0.15


def test_a_site_calibration_keeps_the_shipped_mask_threshold(tmp_path: Path) -> None:
    wdir = _weights(tmp_path / "w", 0.3)
    manifest = json.loads((wdir / "model.json").read_text())
    rng = np.random.default_rng(0)
    labels = rng.choice(3, size=120, p=[0.4, 0.4, 0.2])
    logits = 3.0 * (2.0 * np.eye(3)[labels] + rng.normal(size=(120, 3)))
    area = np.where(labels > 0, 0.05, rng.choice([0.0, 0.01], size=120))
    shipped = PresenceRule.from_dict(manifest["lesion_presence"])
    site = fit_site_calibration(logits, labels, model_name=manifest["name"], model_version=manifest["version"],
                                shipped=Calibration(), shipped_priors=(1 / 3, 1 / 3, 1 / 3), normal_fraction=0.4,
                                n_boot=20, mask_area=area, shipped_presence=shipped)
    assert site.lesion_presence["mask_threshold"] == 0.3
    site.lesion_presence["mask_threshold"] = 0.5  # a file that says otherwise is not believed
    site.save(tmp_path / "site.json")
    an = Analyzer.load(wdir, "cpu", scope_gate=False, site_calibration=tmp_path / "site.json")
    assert an.presence.mask_threshold == 0.3
    assert an.presence.max_p_normal == site.lesion_presence["max_p_normal"]
