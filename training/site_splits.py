"""Go-live rehearsals over many splits of a stand-in site: what a site calibration does to the images
it was not fitted on, as a spread over splits instead of one split's figures (``site_trial``).

    python -m sonopacs.training.site_splits runs/RUN/jobs/cross_bus-bra_to_busi \\
        --members runs/RUN/jobs/cross_bus-bra_to_busi_f{0,1,2} --index ../shared/datasets/busi/index.csv \\
        --drop-label-conflict --presence-from models/weights/model.json --splits 20 --out DIR

Each image goes once through the one cleaning path and the Analyzer (as ``evaluate`` runs it); its raw
logits and its detection mask's area and confidence are kept. Then, for seeds ``--seed`` onwards,
the site set is drawn as ``site_trial`` draws it, ``fit_site_calibration`` is fitted on it exactly
as ``sonopacs calibrate`` fits it, and the other images are scored as the Analyzer scores them with
that file: calibrated, prior-shifted probabilities and the presence rule in force
(``SiteCalibration.presence_rule``). One pass of the networks serves every split, so 20 splits cost
about one ``evaluate``. Not modelled: which field of a multi-field image is reported (chosen once,
without the site calibration). Images not assessed are left out, as ``calibrate`` leaves them out.
With ``--scope-bank BANK`` (a bank built for the job's network, e.g. ``scope_bank --reference
bus-bra``) the scope gate is rehearsed too: the share of check images the bank alone refuses and the
share it refuses with the split's site images pooled in (as a site file's ``scope_features``), and
how many of scikit-image's photographs each refuses.
``summary.json``: every split's figures, then mean, minimum and maximum over splits; ``images.npz``:
the networks' per-image outputs, for studying other site fits without running the networks again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sonopacs.models.analyzer import Analyzer
from sonopacs.models.calibrate_site import fold_group_column, read_site_images
from sonopacs.models.calibration import brier_score, ece_if_calibrated, expected_calibration_error, log_loss
from sonopacs.models.data import read_index
from sonopacs.models.metrics import benign_vs_malignant_auc
from sonopacs.models.scope import FeatureBank
from sonopacs.models.site_calibration import (
    SiteCalibration,
    fit_site_calibration,
    presence_rule_holds,
    reported_probs,
)
from sonopacs.training.scope_photos import photographs
from sonopacs.training.site_trial import rehearsal_parser, rehearsal_setup, split_by_group


@dataclass
class SiteImages:
    """What the networks said about each assessed image, once: the inputs of every split."""

    names: list[str]
    labels: np.ndarray
    logits: np.ndarray
    area: np.ndarray
    confidence: np.ndarray
    given: np.ndarray  # given a lesion by the Analyzer without a site calibration
    features: np.ndarray | None = None  # scope-gate features of the reported field (``--scope-bank``)


@dataclass
class ScopeCheck:
    """A scope bank and the photographs' features: each split's breast images and photographs not
    assessed by the bank alone and by the bank with the split's site images pooled in
    (``FeatureBank.with_site``, as the Analyzer pools a site file's ``scope_features``)."""

    bank: FeatureBank
    photos: np.ndarray

    def figures(self, check: np.ndarray, site: np.ndarray | None) -> dict[str, float | None]:
        bank = self.bank if site is None else self.bank.with_site(site)
        photos = bank.distance(self.photos)
        return {"breast_not_assessed_by_scope_bank": float((bank.distance(check) > bank.threshold).mean()),
                "photographs_not_assessed": float((photos > bank.threshold).sum()),
                "lowest_photograph_score": float(photos.min())}


def analyse_index(index_csv: Path, analyzer: Analyzer, features: bool = False) -> SiteImages:
    """Each labelled image once through the Analyzer (run without a scope bank: the bank is applied
    per split from ``features``), as ``calibrate`` reads a site; images not assessed are left out."""
    rows = [r for r in read_site_images(index_csv, analyzer)[0] if not r.out_of_bank]
    return SiteImages([r.name for r in rows], np.asarray([r.label for r in rows]),
                      np.asarray([r.logits for r in rows], np.float64), np.asarray([r.area for r in rows]),
                      np.asarray([r.confidence for r in rows]), np.asarray([r.given for r in rows]),
                      np.asarray([r.features for r in rows]) if features else None)


def save_images(images: SiteImages, path: Path) -> None:
    """The networks' per-image outputs (``images.npz`` beside the summary), so that other site fits
    can be studied on them without running the networks again (``load_images``)."""
    arrays: dict[str, Any] = {"names": np.asarray(images.names), "labels": images.labels, "logits": images.logits,
                              "area": images.area, "confidence": images.confidence, "given": images.given}
    if images.features is not None:
        arrays["features"] = images.features
    np.savez_compressed(path, **arrays)


def load_images(path: Path) -> SiteImages:
    with np.load(path) as z:
        return SiteImages([str(n) for n in z["names"]], z["labels"], z["logits"], z["area"], z["confidence"],
                          z["given"], z["features"] if "features" in z.files else None)


def split_figures(images: SiteImages, site: SiteCalibration | None, check: np.ndarray, analyzer: Analyzer
                  ) -> dict[str, float | None]:
    """The check images' figures without (``site`` None: the Analyzer as loaded) or with a site calibration."""
    y, logits = images.labels[check], images.logits[check]
    if site is None:
        probs = analyzer.reported_probabilities(logits)
        given = images.given[check]
    else:
        probs = reported_probs(site.calibration, site.class_priors, logits, site.expected_normal_fraction)
        given = site.presence_rule(analyzer.presence).given(probs[:, 0], images.area[check], images.confidence[check])
    lesion = y > 0
    ece = expected_calibration_error(probs, y)
    return {"lesion_sensitivity": float(given[lesion].mean()) if lesion.any() else None,
            "normal_false_lesion_rate": float(given[~lesion].mean()) if (~lesion).any() else None,
            "ece": None if ece is None else float(ece),
            "ece_if_calibrated": ece_if_calibrated(probs),
            "log_loss": log_loss(probs, y), "brier": brier_score(probs, y),  # proper scores: the fair judges
            "auc_benign_vs_malignant": benign_vs_malignant_auc(probs, y)}


def rehearse(images: SiteImages, index_csv: Path, analyzer: Analyzer, out: Path, splits: int, seed: int,
             site_size: int, group_column: str = "group", scope: ScopeCheck | None = None) -> dict[str, Any]:
    """``splits`` seeded site/check splits: each one's figures without and with its site calibration
    (with ``scope`` and the images' features, the scope gate's too)."""
    rows = []
    for k in range(splits):
        folder = out / f"split_{seed + k}"
        folder.mkdir(parents=True, exist_ok=True)
        site_csv, _ = split_by_group(index_csv, folder, site_size, seed + k, group_column)
        # the groups as ``sonopacs calibrate`` reads them from site.csv (its out-of-fold check's folds)
        site_groups = {r.image.name: r.group for r in read_index(site_csv, group_column=fold_group_column(site_csv))}
        s = np.array([n in site_groups for n in images.names])
        site = fit_site_calibration(images.logits[s], images.labels[s], model_name=analyzer.name,
                                    model_version=analyzer.version, shipped=analyzer.calibration,
                                    shipped_priors=analyzer.class_priors,
                                    normal_fraction=analyzer.expected_normal_fraction, n_boot=0,
                                    mask_area=images.area[s], mask_confidence=images.confidence[s],
                                    shipped_presence=analyzer.presence,
                                    groups=[site_groups[n] for n, x in zip(images.names, s, strict=True) if x])
        without, with_site = split_figures(images, None, ~s, analyzer), split_figures(images, site, ~s, analyzer)
        if scope is not None and images.features is not None:
            without.update(scope.figures(images.features[~s], None))
            with_site.update(scope.figures(images.features[~s], images.features[s]))
        rows.append({"seed": seed + k, "site_images": int(s.sum()), "check_images": int((~s).sum()),
                     "presence_rule_applied": presence_rule_holds(site.lesion_presence),
                     "without": without, "with_site_calibration": with_site})
    return {"splits": rows, "over_splits": {side: _spread([r[side] for r in rows])  # type: ignore[misc]
                                            for side in ("without", "with_site_calibration")},
            "presence_rule_applied": sum(r["presence_rule_applied"] for r in rows)}


def _spread(figures: list[dict[str, float | None]]) -> dict[str, dict[str, float]]:
    out = {}
    for key in figures[0]:
        v = np.array([f[key] for f in figures if f[key] is not None], np.float64)
        if len(v):
            out[key] = {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max())}
    return out


def main() -> None:
    ap = rehearsal_parser(__doc__)
    ap.add_argument("--splits", type=int, default=20)
    ap.add_argument("--scope-bank", type=Path, default=None,
                    help="also the scope gate: this bank alone and with each split's site images pooled in, on the "
                         "check images and scikit-image's photographs (e.g. a bank from scope_bank --reference bus-bra)")
    a = ap.parse_args()
    index, make_analyzer = rehearsal_setup(a)
    analyzer = make_analyzer(None)
    images = analyse_index(index, analyzer, features=a.scope_bank is not None)
    save_images(images, a.out / "images.npz")
    scope = None if a.scope_bank is None else ScopeCheck(
        FeatureBank.load(a.scope_bank), np.asarray([analyzer.scope_features([p])[0] for p in photographs().values()]))
    summary = rehearse(images, index, analyzer, a.out, a.splits, a.seed, a.site_size, a.group_column, scope)
    (a.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"{len(images.names)} assessed images, {a.splits} splits; site presence rule applied in "
          f"{summary['presence_rule_applied']}")
    for key in ("lesion_sensitivity", "normal_false_lesion_rate", "ece", "ece_if_calibrated", "auc_benign_vs_malignant",
                "breast_not_assessed_by_scope_bank", "photographs_not_assessed", "lowest_photograph_score"):
        line = [f"{key:26s}"]
        for side in ("without", "with_site_calibration"):
            s = summary["over_splits"][side].get(key)
            line.append("n/a" if s is None else f"{side}: mean {s['mean']:.3f} min {s['min']:.3f} max {s['max']:.3f}")
        print("  ".join(line))


if __name__ == "__main__":
    main()
