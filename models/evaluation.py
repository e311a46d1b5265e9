"""``sonopacs evaluate --index CSV --out DIR``: cleaning + the shipped Analyzer on every image.

Writes ``metrics.json`` with the contract keys (undefined ones as null), per-image predictions,
and confusion-matrix, ROC and reliability PNGs. Dice/IoU are computed in each image's cleaned
geometry against the union of its masks, over images whose mask is non-empty.

Cleaning goes through the one path (``models.clean.clean_for_model``); every field is analysed and
the most suspicious assessed one is kept, as in the pipeline. An image cleaning refuses or the scope
gate rejects is *not assessed* (reason in predictions.csv); it stays in the classification metrics
(with the network's probabilities on the whole image when cleaning failed) and counts in
``not_assessed_rate``. ``lesion_sensitivity`` / ``normal_false_lesion_rate``: the share of
lesion / normal images given a lesion (an assessed result with a contour).
"""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from sonopacs.models.analyzer import Analyzer, mark_not_assessed
from sonopacs.models.clean import CleaningFailed, clean_for_model, crop_to
from sonopacs.models.data import load_image, load_mask, read_index
from sonopacs.models.metrics import classification_metrics, dice_iou
from sonopacs.models.plots import plot_confusion, plot_reliability, plot_roc
from sonopacs.models.scope import colour_reason
from sonopacs.models.transforms import to_gray
from sonopacs.models.types import CLASSES, AnalysisResult

log = logging.getLogger(__name__)

CONTRACT_KEYS = (
    "n_images", "accuracy", "macro_f1", "auc_malignant_vs_rest", "auc_benign_vs_malignant",
    "sensitivity_malignant", "specificity_malignant", "sensitivity_malignant_high",
    "specificity_malignant_high", "dice", "iou", "ece", "seconds_per_image",
    "lesion_sensitivity", "normal_false_lesion_rate", "not_assessed_rate",
)


def evaluate_index(index_csv: Path, out_dir: Path, weights_dir: Path | None = None, clean: bool = True,
                   device: str = "auto", analyzer: Analyzer | None = None) -> dict[str, Any]:
    """Evaluate the model on every labelled row of ``index_csv``; return the metrics dict."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    analyzer = analyzer if analyzer is not None else Analyzer.load(weights_dir, device=device)
    records = [r for r in read_index(Path(index_csv)) if r.label is not None]
    probs, labels, dices, ious, rows = [], [], [], [], []
    given_lesion, assessed_flags = [], []
    seconds = 0.0
    for rec in records:
        img = load_image(rec.image)
        truth = load_mask(rec.masks, img.shape[:2])
        t0 = time.perf_counter()
        res, truth = analyse_image(analyzer, img, truth, clean)
        seconds += time.perf_counter() - t0
        p = [res.probabilities[c] for c in CLASSES]
        probs.append(p)
        labels.append(rec.label)
        given_lesion.append(bool(res.assessed and res.mask.any()))
        assessed_flags.append(res.assessed)
        d = i = None
        if truth.any():
            d, i = dice_iou(res.mask, truth)
            dices.append(d)
            ious.append(i)
        rows.append({"image": str(rec.image.name), "label": CLASSES[rec.label or 0], "pred": res.label,
                     **{f"p_{c}": v for c, v in zip(CLASSES, p, strict=True)},
                     "assessed": res.assessed, "likelihood_category": res.likelihood_category or "",
                     "lesion_found": given_lesion[-1],
                     "dice": d, "iou": i, "not_assessed_reason": res.not_assessed_reason or "",
                     "ood_score": res.extra.get("ood_score"), "fields": res.extra.get("fields", 1),
                     # the mask the network found before the presence rule: what a site's rule is fitted on
                     "lesion_area_fraction": res.extra.get("lesion_area_fraction"),
                     "lesion_mask_confidence": res.extra.get("lesion_mask_confidence")})
    pa = np.asarray(probs, np.float64).reshape(-1, 3)
    la = np.asarray(labels, np.int64)
    m = classification_metrics(pa, la, analyzer.operating_points)
    m["dice"] = float(np.mean(dices)) if dices else None
    m["iou"] = float(np.mean(ious)) if ious else None
    m["n_masks"] = len(dices)
    m["seconds_per_image"] = seconds / len(records) if records else None
    m.update(presence_metrics(la, np.asarray(given_lesion, bool), np.asarray(assessed_flags, bool)))
    m["expected_normal_fraction"] = analyzer.expected_normal_fraction
    m["calibration"] = analyzer.calibration_source
    m["operating_points"] = dict(analyzer.operating_points)
    m["model"] = {"name": analyzer.name, "version": analyzer.version}
    m["cleaned"] = clean
    for k in CONTRACT_KEYS:
        m.setdefault(k, None)
    (out_dir / "metrics.json").write_text(json.dumps(m, indent=2))
    with (out_dir / "predictions.csv").open("w", newline="") as f:
        if rows:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    plot_confusion(m.get("confusion_matrix", [[0] * 3] * 3), out_dir / "confusion_matrix.png")
    plot_roc(pa, la, analyzer.operating_points, out_dir / "roc.png")
    plot_reliability(pa, la, out_dir / "reliability.png")
    return m


def presence_metrics(labels: np.ndarray, given_lesion: np.ndarray, assessed: np.ndarray) -> dict[str, Any]:
    """lesion_sensitivity, normal_false_lesion_rate (None without such images) and not_assessed_rate."""
    lesion = labels >= 1
    return {
        "lesion_sensitivity": float(given_lesion[lesion].mean()) if lesion.any() else None,
        "normal_false_lesion_rate": float(given_lesion[~lesion].mean()) if (~lesion).any() else None,
        "not_assessed_rate": float((~assessed).mean()) if len(assessed) else None,
    }


def analyse_image(analyzer: Analyzer, img: np.ndarray, truth: np.ndarray, clean: bool = True
                  ) -> tuple[AnalysisResult, np.ndarray]:
    """One labelled image through the one cleaning path, the Analyzer and the colour gate.

    Returns the reported result (the most suspicious assessed field, as in the pipeline) and the
    truth mask in that result's geometry. When cleaning fails the whole image is analysed for the
    probabilities and the result is marked not assessed with the cleaning's reason.
    """
    res, _, field_truth = analyse_image_field(analyzer, img, truth, clean)
    return res, field_truth


def analyse_image_field(analyzer: Analyzer, img: np.ndarray, truth: np.ndarray, clean: bool = True
                        ) -> tuple[AnalysisResult, np.ndarray, np.ndarray]:
    """``analyse_image``, with the gray image the reported result was analysed on (its field)."""
    if not clean:
        gray = to_gray(img)
        return analyzer.analyze(gray), gray, truth
    try:
        fields = clean_for_model(img)
    except CleaningFailed as exc:
        gray = to_gray(img)
        return mark_not_assessed(analyzer.analyze(gray), str(exc)), gray, truth
    grays = [to_gray(f.image) for f in fields]
    results = analyzer.analyze_batch(grays)
    for f, r in zip(fields, results, strict=True):
        reason = colour_reason(f.summary)  # as the pipeline's clean_frame: whatever model.scope_gate says
        if reason is not None and r.assessed:
            mark_not_assessed(r, reason)
    best = max(range(len(results)), key=lambda k: (results[k].assessed, results[k].malignancy_probability, -k))
    results[best].extra["fields"] = len(results)
    return results[best], grays[best], crop_to(fields[best], truth)
