"""The go-live rehearsal's split (training/site_trial.split_by_group): whole groups, seeded, disjoint."""

from __future__ import annotations

import csv
from pathlib import Path

from sonopacs.training.site_trial import split_by_group


def _index(tmp_path: Path) -> Path:
    p = tmp_path / "index.csv"
    with p.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label", "mask", "group", "label_conflict"])
        for i in range(60):
            w.writerow([f"img{i}.png", "benign" if i % 3 else "normal", "", f"g{i // 4}" if i < 50 else "", 0])
    return p


def _images(path: Path) -> list[str]:
    with path.open(newline="") as f:
        return [r["image"] for r in csv.DictReader(f)]


def test_site_set_takes_whole_groups_until_the_size_and_check_set_the_rest(tmp_path: Path) -> None:
    index = _index(tmp_path)
    site, check = split_by_group(index, tmp_path, 20, seed=16)
    s, c = _images(site), _images(check)
    assert 20 <= len(s) < 24 and len(s) + len(c) == 60 and not set(s) & set(c)
    group = {f"img{i}.png": (f"g{i // 4}" if i < 50 else f"img{i}.png") for i in range(60)}
    assert not {group[x] for x in s} & {group[x] for x in c}  # no near-duplicate group on both sides
    again = split_by_group(index, tmp_path / ".." / tmp_path.name, 20, seed=16)[0]
    assert _images(again) == s
    other = tmp_path / "other"
    other.mkdir()
    assert _images(split_by_group(index, other, 20, seed=17)[0]) != s


def test_site_splits_score_each_check_set_as_the_analyzer_would_with_that_splits_file(tmp_path: Path) -> None:
    """training/site_splits: one pass of the networks, many site calibrations; each split's figures
    are those of an Analyzer loaded with that split's file (same probabilities, same presence rule)."""
    import numpy as np

    from sonopacs.models.analyzer import Analyzer
    from sonopacs.models.site_calibration import fit_site_calibration
    from sonopacs.training.site_splits import SiteImages, rehearse

    shipped = Analyzer.load(device="cpu")
    rng = np.random.default_rng(0)
    n = 120
    index = tmp_path / "index.csv"
    labels = rng.choice(3, size=n, p=[0.2, 0.5, 0.3])
    with index.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label", "mask", "group"])
        for i in range(n):
            w.writerow([f"img{i}.png", ("normal", "benign", "malignant")[labels[i]], "", f"g{i // 2}"])
    logits = 2.0 * np.eye(3)[labels] + rng.normal(size=(n, 3))
    area = np.where(labels > 0, rng.uniform(0.0, 0.05, n), rng.uniform(0.0, 0.01, n))
    confidence = rng.uniform(0.4, 0.9, n)
    given = shipped.presence.given(shipped.reported_probabilities(logits)[:, 0], area, confidence)
    images = SiteImages([f"img{i}.png" for i in range(n)], labels, logits, area, confidence, given)
    summary = rehearse(images, index, shipped, tmp_path / "out", splits=3, seed=16, site_size=40)
    assert [r["seed"] for r in summary["splits"]] == [16, 17, 18]
    first = summary["splits"][0]
    assert first["site_images"] + first["check_images"] == n and 40 <= first["site_images"] < 44
    # without: the Analyzer as loaded, given as it gave
    lesion = labels > 0
    site_names = {r["image"] for r in csv.DictReader((tmp_path / "out" / "split_16" / "site.csv").open())}
    check = np.array([f"img{i}.png" not in site_names for i in range(n)])
    assert first["without"]["lesion_sensitivity"] == given[check & lesion].sum() / (check & lesion).sum()
    # with: an Analyzer loaded with this split's site calibration file scores the check set the same
    s = ~check
    site = fit_site_calibration(logits[s], labels[s], model_name=shipped.name, model_version=shipped.version,
                                shipped=shipped.calibration, shipped_priors=shipped.class_priors,
                                normal_fraction=0.4, n_boot=0, mask_area=area[s], mask_confidence=confidence[s],
                                shipped_presence=shipped.presence, groups=[f"index:g{i // 2}" for i in np.flatnonzero(s)])
    site.save(tmp_path / "site.json")
    with_site = Analyzer.load(device="cpu", site_calibration=tmp_path / "site.json")
    probs = with_site.reported_probabilities(logits[check])
    given_site = with_site.presence.given(probs[:, 0], area[check], confidence[check])
    assert first["with_site_calibration"]["lesion_sensitivity"] == given_site[lesion[check]].mean()
    assert first["with_site_calibration"]["normal_false_lesion_rate"] == given_site[~lesion[check]].mean()
    assert first["presence_rule_applied"] == site.lesion_presence["applied"]
    assert set(summary["over_splits"]["with_site_calibration"]) >= {"lesion_sensitivity", "ece", "log_loss", "brier"}


def test_site_splits_scope_check_pools_each_splits_site_images_into_the_bank() -> None:
    """training/site_splits --scope-bank: without, the bank alone; with, the bank with the split's
    site features pooled in exactly as the Analyzer pools a site file's (``FeatureBank.with_site``)."""
    import numpy as np

    from sonopacs.models.scope import FeatureBank
    from sonopacs.training.site_splits import ScopeCheck

    rng = np.random.default_rng(1)
    ref = rng.normal(size=(400, 6))
    bank = FeatureBank.fit(ref[:300], ref[300:], 0.99)
    site_feats = rng.normal(size=(200, 6)) + np.r_[3.0, 0, 0, 0, 0, 0]  # a shifted site
    photos = rng.normal(size=(5, 6)) * 6.0 + 15.0
    check = ScopeCheck(bank, photos)
    alone, pooled = check.figures(site_feats[50:], None), check.figures(site_feats[50:], site_feats[:50])
    assert alone["breast_not_assessed_by_scope_bank"] == (bank.distance(site_feats[50:]) > bank.threshold).mean()
    joint = bank.with_site(site_feats[:50])
    assert pooled["breast_not_assessed_by_scope_bank"] == (joint.distance(site_feats[50:]) > joint.threshold).mean()
    assert pooled["breast_not_assessed_by_scope_bank"] < alone["breast_not_assessed_by_scope_bank"]
    assert alone["photographs_not_assessed"] == pooled["photographs_not_assessed"] == 5
