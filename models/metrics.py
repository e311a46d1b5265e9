"""The evaluation metrics of the ``sonopacs evaluate`` contract, from arrays.

Every metric that is undefined for the data at hand (one class only, no masks) is ``None``: an
index of only benign images must still evaluate.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support, roc_auc_score

from sonopacs.models.calibration import brier_score, ece_if_calibrated, expected_calibration_error, log_loss
from sonopacs.models.types import CLASSES


def auc_or_none(y: np.ndarray, score: np.ndarray) -> float | None:
    """ROC AUC of ``score`` for the boolean ``y``; None when only one kind is there (undefined)."""
    if len(y) == 0 or y.all() or (~y).all():
        return None
    return float(roc_auc_score(y, score))


def malignant_share(probs: np.ndarray) -> np.ndarray:
    """P(malignant) / (P(benign) + P(malignant)) per image: the benign-vs-malignant score, which
    leaves the normal class out so that it ranks lesions by kind alone."""
    probs = np.asarray(probs, np.float64)
    return probs[:, 2] / np.clip(probs[:, 1] + probs[:, 2], 1e-12, None)


def benign_vs_malignant_auc(probs: np.ndarray, labels: np.ndarray) -> float | None:
    """The AUC of :func:`malignant_share` over the lesion images (labels 1 and 2); None when only one
    kind is there."""
    labels = np.asarray(labels)
    lesion = labels >= 1
    return auc_or_none(labels[lesion] == 2, malignant_share(np.asarray(probs)[lesion]))


def _rate(num: np.ndarray, den: np.ndarray) -> float | None:
    return float(num.sum() / den.sum()) if den.sum() > 0 else None


def dice_iou(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    inter = float(np.logical_and(pred, truth).sum())
    s = float(pred.sum() + truth.sum())
    union = float(np.logical_or(pred, truth).sum())
    return (2 * inter / s if s else 1.0), (inter / union if union else 1.0)


def withhold_masks(scores: np.ndarray, labels_pred: np.ndarray) -> np.ndarray:
    """Per-image mask scores as shown: 0 where the label is normal (the Analyzer withholds the
    mask there) and the truth has a lesion; NaN (no lesion in the truth) stays NaN."""
    return np.where((labels_pred == 0) & np.isfinite(scores), 0.0, scores)


def classification_metrics(probs: np.ndarray, labels: np.ndarray, thresholds: dict[str, float]
                           ) -> dict[str, Any]:
    """Contract metrics + per-class precision/recall and the confusion matrix."""
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels, np.int64)
    n = len(labels)
    pred = probs.argmax(axis=1) if n else np.zeros(0, np.int64)
    pm = probs[:, 2] if n else np.zeros(0)
    mal = labels == 2
    present = sorted(set(labels.tolist()))
    out: dict[str, Any] = {
        "n_images": int(n),
        "accuracy": float((pred == labels).mean()) if n else None,
        "macro_f1": float(f1_score(labels, pred, labels=present, average="macro")) if n else None,
        "auc_malignant_vs_rest": auc_or_none(mal, pm),
    }
    out["auc_benign_vs_malignant"] = benign_vs_malignant_auc(probs, labels)
    for suffix, key in (("", "default"), ("_high", "high_sensitivity")):
        dec = pm >= thresholds[key]
        out[f"sensitivity_malignant{suffix}"] = _rate(dec & mal, mal)
        out[f"specificity_malignant{suffix}"] = _rate(~dec & ~mal, ~mal)
    out["ece"] = expected_calibration_error(probs, labels) if n else None
    out["ece_if_calibrated"] = ece_if_calibrated(probs)  # the floor an ECE on this many images can show
    out["log_loss"] = log_loss(probs, labels)  # proper scores: what to compare calibrations by
    out["brier"] = brier_score(probs, labels)
    if n:
        p, r, _, s = precision_recall_fscore_support(labels, pred, labels=[0, 1, 2], zero_division=0)
        out["per_class"] = {
            c: {"precision": float(p[i]) if (pred == i).any() else None,
                "recall": float(r[i]) if s[i] else None, "support": int(s[i])}
            for i, c in enumerate(CLASSES)
        }
        out["confusion_matrix"] = confusion_matrix(labels, pred, labels=[0, 1, 2]).tolist()
    return out
