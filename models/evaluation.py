"""``sonopacs evaluate --index CSV --out DIR``: cleaning + the shipped Analyzer on every image.

Writes ``metrics.json`` with the contract keys (undefined ones as null), per-image predictions,
and confusion-matrix, ROC and reliability PNGs. Dice/IoU are computed in each image's cleaned
geometry against the union of its masks, over images whose mask is non-empty.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from sonopacs.models.analyzer import Analyzer
from sonopacs.models.clean import clean_for_model
from sonopacs.models.data import load_image, load_mask, read_index
from sonopacs.models.metrics import classification_metrics, dice_iou
from sonopacs.models.plots import plot_confusion, plot_reliability, plot_roc
from sonopacs.models.transforms import to_gray
from sonopacs.models.types import CLASSES

log = logging.getLogger(__name__)

CONTRACT_KEYS = (
    "n_images", "accuracy", "macro_f1", "auc_malignant_vs_rest", "auc_benign_vs_malignant",
    "sensitivity_malignant", "specificity_malignant", "sensitivity_malignant_high",
    "specificity_malignant_high", "dice", "iou", "ece", "seconds_per_image",
)


def evaluate_index(index_csv: Path, out_dir: Path, weights_dir: Path | None = None, clean: bool = True,
                   device: str = "auto") -> dict[str, Any]:
    """Evaluate the model on every labelled row of ``index_csv``; return the metrics dict."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    analyzer = Analyzer.load(weights_dir, device=device)
    records = [r for r in read_index(Path(index_csv)) if r.label is not None]
    probs, labels, dices, ious, rows = [], [], [], [], []
    seconds = 0.0
    for rec in records:
        img = load_image(rec.image)
        truth = load_mask(rec.masks, img.shape[:2])
        t0 = time.perf_counter()
        summary: dict[str, object] = {}
        if clean:
            c = clean_for_model(img)
            (r0, c0), (h, w) = c.offset, c.image.shape[:2]
            img, truth, summary = c.image, truth[r0 : r0 + h, c0 : c0 + w], c.summary
        res = analyzer.analyze(to_gray(img))
        seconds += time.perf_counter() - t0
        p = [res.probabilities[c] for c in CLASSES]
        probs.append(p)
        labels.append(rec.label)
        d = i = None
        if truth.any():
            d, i = dice_iou(res.mask, truth)
            dices.append(d)
            ious.append(i)
        rows.append({"image": str(rec.image.name), "label": CLASSES[rec.label or 0], "pred": res.label,
                     **{f"p_{c}": v for c, v in zip(CLASSES, p, strict=True)},
                     "dice": d, "iou": i, "cleaning": summary.get("implementation", "none")})
    pa = np.asarray(probs, np.float64).reshape(-1, 3)
    la = np.asarray(labels, np.int64)
    m = classification_metrics(pa, la, analyzer.operating_points)
    m["dice"] = float(np.mean(dices)) if dices else None
    m["iou"] = float(np.mean(ious)) if ious else None
    m["n_masks"] = len(dices)
    m["seconds_per_image"] = seconds / len(records) if records else None
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
