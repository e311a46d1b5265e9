"""Turn a training run's job outputs into a shippable weights folder.

Temperature and both operating points are fitted on the pooled out-of-fold predictions of the CV
jobs; the same numbers then describe the final model, which trained on all data (the usual
assumption that fold models and the final model behave alike — stated in the model card).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from sonopacs.models.calibration import Calibration, expected_calibration_error, operating_points
from sonopacs.models.lesion_shape import SHAPE_FEATURES
from sonopacs.models.metrics import classification_metrics, withhold_masks
from sonopacs.models.plots import plot_confusion, plot_reliability, plot_roc
from sonopacs.models.presence import PresenceRule, fit_rule, fit_rule_over_thresholds
from sonopacs.models.priors import shift_priors, target_priors
from sonopacs.models.second_look import SecondLook
from sonopacs.training.analyzer_oof import load_or_write, records_by_name, summary, with_analyzer_logits
from sonopacs.training.weights_folder import save_ensemble_members, save_half_state

log = logging.getLogger(__name__)


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _load_preds(paths: list[Path]) -> dict[str, np.ndarray]:
    return _concat([dict(np.load(p)) for p in paths])


def _at_threshold(d: dict[str, np.ndarray], key: str, threshold: float) -> np.ndarray:
    """``key`` (``area``, or ungated ``dice``/``iou``) of masks drawn at ``threshold``: the
    per-threshold columns where the run stored them, else the 0.5 ones."""
    if f"{key}_by_threshold" in d:
        grid = [round(float(t), 4) for t in d["mask_thresholds"]]
        if round(threshold, 4) not in grid:
            raise ValueError(f"mask threshold {threshold} is not among the stored thresholds {grid}")
        return d[f"{key}_by_threshold"][:, grid.index(round(threshold, 4))]
    if round(threshold, 4) != 0.5:
        raise KeyError(f"these predictions hold {key} at mask threshold 0.5 only: re-run sonopacs.training.train --repredict")
    if key == "area":
        sf = d["shape_features"]
        return np.exp(sf[:, SHAPE_FEATURES.index("log_area_fraction")]) * (sf[:, SHAPE_FEATURES.index("lesion_present")] > 0)
    return d[f"{key}_ungated"]


def _shown(d: dict[str, np.ndarray], key: str, rule: PresenceRule) -> np.ndarray:
    """``key`` (ungated ``dice``/``iou``) of the outline the Analyzer would show under ``rule``
    (``PresenceRule.contour``): at the contour threshold where a mask reaches it, else at the
    detection threshold."""
    detected = _at_threshold(d, key, rule.mask_threshold)
    if rule.contour_threshold <= rule.mask_threshold:
        return detected
    return np.where(_at_threshold(d, "area", rule.contour_threshold) > 0,
                    _at_threshold(d, key, rule.contour_threshold), detected)


def _seg_summary(d: dict[str, np.ndarray], sel: np.ndarray, labels_pred: np.ndarray,
                 rule: PresenceRule | None = None) -> dict[str, float | None]:
    """Mean Dice/IoU over images with a lesion of the outlines ``rule`` shows (default: the mask
    at 0.5), withheld where ``labels_pred`` says normal (as the Analyzer withholds it). Runs that
    stored no ungated scores keep the gate of the uncalibrated argmax."""
    rule = rule or PresenceRule()
    if "dice_ungated" in d:
        dice = withhold_masks(_shown(d, "dice", rule)[sel], labels_pred)
        iou = withhold_masks(_shown(d, "iou", rule)[sel], labels_pred)
    else:
        dice, iou = d["dice"][sel], d["iou"][sel]
    ok = np.isfinite(dice)
    return {"dice": float(dice[ok].mean()) if ok.any() else None,
            "iou": float(iou[ok].mean()) if ok.any() else None, "n_masks": int(ok.sum())}


def calibrated(cal: Calibration, d: dict[str, np.ndarray], sel: np.ndarray | None = None) -> np.ndarray:
    """``cal``'s probabilities for the predictions ``d`` (optionally a subset)."""
    sel = np.ones(len(d["labels"]), bool) if sel is None else sel
    return cal.probs(d["logits"][sel], d["shape_features"][sel] if cal.uses_features else None)


def fit_calibration(d: dict[str, np.ndarray], cal_cfg: dict[str, Any]) -> Calibration:
    """The config's calibration, fitted on the predictions ``d``."""
    method = str(cal_cfg.get("method", "temperature"))
    if method != "temperature_bias_shape":
        return Calibration.fit(d["logits"], d["labels"], method)
    if "shape_features" not in d:
        raise KeyError("these predictions hold no shape_features: re-run sonopacs.training.train --repredict")
    return Calibration.fit(d["logits"], d["labels"], method, d["shape_features"], SHAPE_FEATURES,
                           float(cal_cfg.get("shape_l2", 0.01)))


def metrics_for(d: dict[str, np.ndarray], sel: np.ndarray, cal: Calibration, ops: dict[str, float],
                rule: PresenceRule | None = None) -> dict[str, Any]:
    probs = calibrated(cal, d, sel)
    return {**classification_metrics(probs, d["labels"][sel], ops),
            **_seg_summary(d, sel, probs.argmax(1), rule)}


def by_lesion_size(d: dict[str, np.ndarray], probs: np.ndarray, rule: PresenceRule | None = None) -> dict[str, Any]:
    """Images with a lesion, in thirds by the true lesion's share of the (letterboxed) frame: where
    the errors are. Small lesions are a few pixels at the training resolution."""
    if "truth_area_fraction" not in d:
        return {}
    lesion = (d["labels"] > 0) & (d["truth_area_fraction"] > 0)
    area = d["truth_area_fraction"]
    edges = np.quantile(area[lesion], [0, 1 / 3, 2 / 3, 1]) if lesion.any() else np.zeros(4)
    pred = probs.argmax(1)
    out: dict[str, Any] = {}
    for i, name in enumerate(("small", "medium", "large")):
        sel = lesion & (area >= edges[i]) & ((area < edges[i + 1]) if i < 2 else (area <= edges[i + 1]))
        cm = classification_metrics(probs[sel], d["labels"][sel], {"default": 0.5, "high_sensitivity": 0.5})
        out[name] = {"area_fraction_range": [float(edges[i]), float(edges[i + 1])], "n_images": int(sel.sum()),
                     "accuracy": cm["accuracy"], "called_normal": float((pred[sel] == 0).mean()) if sel.any() else None,
                     "auc_benign_vs_malignant": cm["auc_benign_vs_malignant"],
                     "dice": _seg_summary(d, sel, pred[sel], rule)["dice"]}
    return out


def nested_calibration(folds: list[dict[str, np.ndarray]], target: float, cal_cfg: dict[str, Any],
                       rule: PresenceRule | None = None) -> dict[str, Any]:
    """Honest check of calibration and thresholds: for each fold, fit the calibration and both
    operating points on the other folds' OOF predictions only, apply them to this fold, then pool.

    AUCs and Dice are reported too: a calibration with features re-ranks images (and its label
    gates the masks), so they are no longer the pooled OOF figures.
    """
    probs: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    ds: list[np.ndarray] = []
    dec: dict[str, list[np.ndarray]] = {"default": [], "high_sensitivity": []}
    for k, d in enumerate(folds):
        rest = _concat([f for j, f in enumerate(folds) if j != k])
        cal = fit_calibration(rest, cal_cfg)
        ops = operating_points(calibrated(cal, rest)[:, 2], rest["labels"] == 2, target)
        p = calibrated(cal, d)
        probs.append(p)
        labels.append(d["labels"])
        ds.append(d["datasets"])
        for name, thr in ops.items():
            dec[name].append(p[:, 2] >= thr)
    pa, la, da = np.concatenate(probs), np.concatenate(labels), np.concatenate(ds)
    da_dec = {k: np.concatenate(v) for k, v in dec.items()}
    pooled = _concat(folds)
    out: dict[str, Any] = {}
    for name in ["all", *sorted(set(da.tolist()))]:
        sel = np.ones(len(la), bool) if name == "all" else da == name
        mal = la[sel] == 2
        cm = classification_metrics(pa[sel], la[sel], {"default": 0.5, "high_sensitivity": 0.5})
        row: dict[str, Any] = {"ece": expected_calibration_error(pa[sel], la[sel]),
                               "accuracy": cm["accuracy"], "macro_f1": cm["macro_f1"],
                               "auc_benign_vs_malignant": cm["auc_benign_vs_malignant"],
                               "auc_malignant_vs_rest": cm["auc_malignant_vs_rest"],
                               "per_class": cm["per_class"],
                               "dice": _seg_summary(pooled, sel, pa[sel].argmax(1), rule)["dice"]}
        for suffix, key in (("", "default"), ("_high", "high_sensitivity")):
            d_ = da_dec[key][sel]
            row[f"sensitivity_malignant{suffix}"] = float((d_ & mal).sum() / mal.sum()) if mal.any() else None
            row[f"specificity_malignant{suffix}"] = float((~d_ & ~mal).sum() / (~mal).sum()) if (~mal).any() else None
        out[name] = row
    return out


def _oof_areas(oof: dict[str, np.ndarray], thresholds: list[float] | None) -> dict[float, np.ndarray]:
    """Each image's mask area (share of the frame) at each mask threshold asked for; without
    ``thresholds``, at 0.5 (from the shape features in runs before the per-threshold areas)."""
    if thresholds and "area_by_threshold" not in oof:
        raise KeyError("these predictions hold no area_by_threshold: re-run sonopacs.training.train --repredict")
    return {float(t): _at_threshold(oof, "area", float(t)) for t in (thresholds or [0.5])}


def _dice_shown(oof: dict[str, np.ndarray], rule: PresenceRule, given: np.ndarray, sel: np.ndarray) -> float | None:
    """Mean Dice over lesion images of the outline ``rule`` shows, 0 where it gives no lesion (the
    contour is withheld), as the Analyzer shows it; None for runs that stored no ungated Dice."""
    if "dice_ungated" not in oof and "dice_by_threshold" not in oof:
        return None
    shown = withhold_masks(_shown(oof, "dice", rule)[sel], np.where(given[sel], 1, 0))
    ok = np.isfinite(shown)
    return float(shown[ok].mean()) if ok.any() else None


def fit_presence(oof: dict[str, np.ndarray], probs: np.ndarray, class_mix: np.ndarray,
                 cfg: dict[str, Any]) -> tuple[PresenceRule, dict[str, Any]]:
    """The lesion-presence rule, its P(normal) cut fitted on the OOF predictions.

    ``calibration.lesion_sensitivity_target`` (absent: the config's rule as written): the mask-area
    floor and the cut on the prior-shifted P(normal) (at ``model.expected_normal_fraction``'s
    default) at which every dataset's lesion images are given a lesion at >= the target and the
    fewest normal images get one (``models.presence.fit_rule``); with ``calibration.mask_thresholds``
    the mask's probability threshold too (``fit_rule_over_thresholds``). Like the malignancy
    operating points: fitted on the same OOF data it is reported on.
    """
    base = PresenceRule.from_dict(cfg.get("lesion_presence"))
    cal_cfg = cfg.get("calibration") or {}
    target = cal_cfg.get("lesion_sensitivity_target")
    normal_fraction = float(cal_cfg.get("presence_normal_fraction", 0.4))
    pn = shift_priors(probs, class_mix, target_priors(class_mix, normal_fraction))[:, 0]
    thresholds = cal_cfg.get("mask_thresholds")
    if not thresholds and base.mask_threshold != 0.5:
        raise ValueError("lesion_presence.mask_threshold other than 0.5 needs calibration.mask_thresholds "
                         "(the per-threshold mask areas of the out-of-fold predictions)")
    areas = _oof_areas(oof, thresholds)
    lesion = oof["labels"] > 0
    datasets = ["all", *sorted(set(oof["datasets"].tolist()))]
    strata = [oof["datasets"] == ds for ds in datasets[1:]]
    rule = base
    by_threshold: dict[float, PresenceRule] = {}
    if target is not None and thresholds:
        rule, by_threshold = fit_rule_over_thresholds(pn, areas, lesion, float(target), strata, base)
    elif target is not None:
        rule = fit_rule(pn, areas[0.5], lesion, float(target), strata, base)

    def rates(r: PresenceRule) -> dict[str, Any]:
        given = r.given(pn, areas[r.mask_threshold])
        out: dict[str, Any] = {}
        for ds in datasets:
            sel = np.ones(len(lesion), bool) if ds == "all" else oof["datasets"] == ds
            out[ds] = {"lesion_sensitivity": float(given[sel & lesion].mean()) if (sel & lesion).any() else None,
                       "normal_false_lesion_rate": float(given[sel & ~lesion].mean()) if (sel & ~lesion).any() else None,
                       "dice_shown": _dice_shown(oof, r, given, sel)}
        return out

    report: dict[str, Any] = {"rule": rule.to_dict(), "sensitivity_target": target, "normal_fraction": normal_fraction,
                              **rates(rule)}
    if by_threshold:  # what each threshold's best rule gave: the choice in full
        report["by_mask_threshold"] = {str(t): {"rule": r.to_dict(), **rates(r)} for t, r in sorted(by_threshold.items())}
    return rule, report


def out_of_fold(cfg: dict[str, Any], cv: list[Path], fit_on: str) -> tuple[list[dict[str, np.ndarray]], dict[str, Any]]:
    """Each cv job's held-out predictions, and what they were taken from. ``fit_on: network``: the
    training's own (``preds.npz``, the network on its packed frames); ``fit_on: analyzer``: the same
    with the logits the shipped Analyzer reports for those images (``analyzer_oof``: a recipe whose
    Analyzer looks twice reports other logits than the network's first look)."""
    folds = [dict(np.load(p)) for p in cv]
    if fit_on == "network":
        return folds, {"fit_on": fit_on}
    if fit_on != "analyzer":
        raise ValueError(f"calibration.fit_on: {fit_on!r} is neither 'network' nor 'analyzer'")
    records = records_by_name(cfg)
    seen = [load_or_write(p.parent, cfg, records) for p in cv]
    return ([with_analyzer_logits(f, a) for f, a in zip(folds, seen, strict=True)],
            {"fit_on": fit_on, "analyzer": summary(seen)})


def finalize(cfg: dict[str, Any], out: Path) -> dict[str, Any]:
    jobs = out / "jobs"
    cv = sorted(jobs.glob("cv*/preds.npz"))
    if not cv:
        raise FileNotFoundError(f"no cross-validation predictions under {jobs}")
    cal_cfg: dict[str, Any] = dict(cfg.get("calibration") or {})
    method = str(cal_cfg.get("method", "temperature"))
    folds, analyzer_report = out_of_fold(cfg, cv, str(cal_cfg.get("fit_on", "network")))
    oof = _concat(folds)
    cal = fit_calibration(oof, cal_cfg)
    probs = calibrated(cal, oof)
    target = float(cfg.get("calibration", {}).get("high_sensitivity_target", 0.95))
    ops = operating_points(probs[:, 2], oof["labels"] == 2, target)
    everything = np.ones(len(oof["labels"]), bool)
    counts = np.bincount(oof["labels"], minlength=3)
    class_mix = counts / counts.sum()
    presence, presence_report = fit_presence(oof, probs, class_mix, cfg)
    report: dict[str, Any] = {
        "temperature": cal.temperature,
        "class_bias": list(cal.bias),
        "calibration_method": method,
        "calibration_fit_on": analyzer_report["fit_on"],
        "calibration": cal.to_dict(),
        "operating_points": ops,
        "oof": {"all": metrics_for(oof, everything, cal, ops, presence)},
        "oof_uncalibrated_ece": metrics_for(oof, everything, Calibration(), ops)["ece"],
        "cross_dataset": {},
        "jobs": {},
    }
    for ds in sorted(set(oof["datasets"].tolist())):
        report["oof"][ds] = metrics_for(oof, oof["datasets"] == ds, cal, ops, presence)
    report["oof_by_lesion_size"] = by_lesion_size(oof, probs, presence)
    if len(cv) > 1:
        report["oof_nested_calibration"] = nested_calibration(folds, target, cal_cfg, presence)
    plot_confusion(report["oof"]["all"]["confusion_matrix"], out / "oof_confusion.png", "OOF confusion")
    plot_roc(probs, oof["labels"], ops, out / "oof_roc.png")
    plot_reliability(probs, oof["labels"], out / "oof_reliability.png")
    for p in sorted(jobs.glob("cross_*/preds.npz")):
        d = _load_preds([p])
        sel = np.ones(len(d["labels"]), bool)
        # a model trained on one dataset: its own calibration is unknown, report uncalibrated (T=1)
        report["cross_dataset"][p.parent.name] = metrics_for(d, sel, Calibration(), ops, presence)
    for info in sorted(jobs.glob("*/info.json")):
        report["jobs"][info.parent.name] = json.loads(info.read_text())
    report["oof_lesion_presence"] = presence_report
    if "analyzer" in analyzer_report:
        report["oof_analyzer"] = analyzer_report["analyzer"]
    final = jobs / "final" / "model.pt"
    if final.exists():
        wdir = out / "weights"
        wdir.mkdir(parents=True, exist_ok=True)
        ck = save_half_state(final, wdir / "model.pt")
        cfg_text = Path(cfg["_path"]).read_text()
        manifest = {
            "name": cfg["name"],
            "version": cfg["version"],
            "image_size": int(cfg["data"]["image_size"]),
            "model": cfg["model"],
            "temperature": cal.temperature,
            "class_bias": list(cal.bias),
            "calibration": cal.to_dict(),
            "operating_points": ops,
            "best_epoch": ck.get("best_epoch"),
            "config_sha256": hashlib.sha256(cfg_text.encode()).hexdigest(),
            "seed": cfg["seed"],
            "overrides": cfg.get("_overrides", []),
            # the class mix the calibration's biases encode: the Analyzer shifts from it to the
            # site's expected share of normal images (models.priors)
            "calibration_class_priors": class_mix.tolist(),
            "calibration_class_priors_note": "class mix of the out-of-fold predictions the calibration was fitted on "
                                             f"({', '.join(f'{int(n)} {c}' for n, c in zip(counts, ('normal', 'benign', 'malignant'), strict=True))})",
            "lesion_presence": presence.to_dict(),
        }
        members = [str(j) for j in (cfg.get("ship") or {}).get("ensemble", [])]
        if members:  # e.g. the fold models, averaged with the final one
            manifest["ensemble_members"] = save_ensemble_members([jobs / j / "model.pt" for j in members], wdir,
                                                                 cfg["model"])
            manifest["ensemble_member_jobs"] = members
            manifest["ensemble_note"] = ("class logits and lesion probability averaged over the final network and "
                                         "these; calibration and presence rule fitted on the single fold models' "
                                         "out-of-fold predictions (no out-of-fold ensemble exists)")
        look = SecondLook.from_dict((cfg.get("ship") or {}).get("second_look"))
        if look is not None:  # an inference step of the shipped Analyzer (models.second_look)
            manifest["second_look"] = look.to_dict()
        seg_from = (cfg.get("ship") or {}).get("segmentation_from")
        if seg_from:  # pair this classifier with an already trained segmenter (its own folder)
            shutil.copytree(Path(seg_from), wdir / "segmentation", dirs_exist_ok=True)
            manifest["segmentation_weights"] = "segmentation"
        (wdir / "model.json").write_text(json.dumps(manifest, indent=2))
        (wdir / "config.yaml").write_text(cfg_text)
        (wdir / "metrics.json").write_text(json.dumps(report, indent=2))
    (out / "report.json").write_text(json.dumps(report, indent=2))
    log.info("OOF: %s", json.dumps({k: v for k, v in report["oof"]["all"].items() if not isinstance(v, (dict, list))}))
    return report


def load_manifest(wdir: Path) -> dict[str, Any]:
    m: dict[str, Any] = json.loads((wdir / "model.json").read_text())
    return m

