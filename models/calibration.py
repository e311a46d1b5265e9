"""Temperature scaling (optionally with class biases), expected calibration error and malignancy
operating points.

All fitted on out-of-fold predictions, so thresholds and temperature never see the data the
fold's model trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import log_softmax, softmax


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """T > 0 minimising the negative log-likelihood of softmax(logits / T)."""
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels, np.int64)

    def nll(log_t: float) -> float:
        lp = log_softmax(logits / np.exp(log_t), axis=1)
        return float(-lp[np.arange(len(labels)), labels].mean())

    res = minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded")
    return float(np.exp(res.x))


def fit_temperature_bias(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """T > 0 and per-class biases (normal's fixed at 0) minimising the NLL of softmax(logits / T + b).

    Bias-corrected temperature scaling: training with balanced class weights teaches the network
    equal class priors, so its argmax over-calls the rare class (BUSI benign images called normal);
    the biases restore the priors of the data, which temperature alone cannot.
    """
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels, np.int64)
    k = logits.shape[1]

    def nll(params: np.ndarray) -> float:
        z = logits / np.exp(params[0]) + np.r_[0.0, params[1:]]
        return float(-log_softmax(z, axis=1)[np.arange(len(labels)), labels].mean())

    res = minimize(nll, np.zeros(k), method="L-BFGS-B", bounds=[(-3.0, 3.0)] + [(-10.0, 10.0)] * (k - 1))
    return float(np.exp(res.x[0])), np.r_[0.0, res.x[1:]]


@dataclass(frozen=True)
class Calibration:
    """How logits become the reported probabilities: softmax(logits / temperature + bias)."""

    temperature: float = 1.0
    bias: tuple[float, ...] = (0.0, 0.0, 0.0)

    def probs(self, logits: np.ndarray) -> np.ndarray:
        z = np.asarray(logits, np.float64) / self.temperature + np.asarray(self.bias, np.float64)
        return np.asarray(softmax(z, axis=1))

    @classmethod
    def fit(cls, logits: np.ndarray, labels: np.ndarray, method: str = "temperature") -> Calibration:
        if method == "temperature":
            return cls(fit_temperature(logits, labels), (0.0,) * np.asarray(logits).shape[1])
        if method == "temperature_bias":
            t, b = fit_temperature_bias(logits, labels)
            return cls(t, tuple(float(x) for x in b))
        raise ValueError(f"unknown calibration method {method!r} (temperature, temperature_bias)")


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float | None:
    """Top-label ECE with equal-width confidence bins (None for no samples)."""
    if len(labels) == 0:
        return None
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> list[dict[str, float]]:
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    out = []
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            out.append({"bin": b, "confidence": float(conf[sel].mean()), "accuracy": float(correct[sel].mean()),
                        "count": int(sel.sum())})
    return out


def operating_points(p_malignant: np.ndarray, is_malignant: np.ndarray, target_sensitivity: float = 0.95
                     ) -> dict[str, float]:
    """``default``: Youden-J threshold; ``high_sensitivity``: highest threshold with sens >= target."""
    p = np.asarray(p_malignant, np.float64)
    y = np.asarray(is_malignant, bool)
    if y.all() or (~y).all():
        raise ValueError("operating points need both malignant and non-malignant samples")
    cands = np.unique(p)
    sens = np.array([(p[y] >= t).mean() for t in cands])
    spec = np.array([(p[~y] < t).mean() for t in cands])
    default = float(cands[int(np.argmax(sens + spec - 1))])
    ok = np.flatnonzero(sens >= target_sensitivity)
    high = float(cands[ok.max()]) if ok.size else float(cands.min())
    return {"default": default, "high_sensitivity": min(high, default)}
