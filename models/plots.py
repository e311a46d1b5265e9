"""Confusion matrix, ROC and reliability diagram PNGs (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from sonopacs.models.calibration import reliability_bins  # noqa: E402
from sonopacs.models.metrics import malignant_share  # noqa: E402
from sonopacs.models.types import CLASSES  # noqa: E402


def plot_confusion(cm: list[list[int]], path: Path, title: str = "Confusion matrix") -> None:
    arr = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(arr, cmap="Blues")
    for i in range(3):
        for j in range(3):
            ax.text(j, i, str(arr[i, j]), ha="center", va="center",
                    color="white" if arr[i, j] > arr.max() / 2 else "black")
    ax.set_xticks(range(3), CLASSES)
    ax.set_yticks(range(3), CLASSES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_roc(probs: np.ndarray, labels: np.ndarray, thresholds: dict[str, float], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    mal = labels == 2
    pm = probs[:, 2] if len(labels) else np.zeros(0)
    if mal.any() and (~mal).any():
        fpr, tpr, _ = roc_curve(mal, pm)
        ax.plot(fpr, tpr, label="malignant vs rest")
        for name, t in thresholds.items():
            dec = pm >= t
            ax.plot(1 - (~dec & ~mal).sum() / (~mal).sum(), (dec & mal).sum() / mal.sum(), "o", label=name)
        bm = labels >= 1
        if (labels[bm] == 1).any() and (labels[bm] == 2).any():
            fpr2, tpr2, _ = roc_curve(mal[bm], malignant_share(probs[bm]))
            ax.plot(fpr2, tpr2, "--", label="benign vs malignant")
    else:
        ax.text(0.5, 0.5, "ROC undefined (one class only)", ha="center")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_reliability(probs: np.ndarray, labels: np.ndarray, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    bins = reliability_bins(probs, labels) if len(labels) else []
    if bins:
        ax.bar([b["confidence"] for b in bins], [b["accuracy"] for b in bins], width=1 / 15, alpha=0.7,
               edgecolor="k", label="accuracy")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("confidence (top label)")
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
