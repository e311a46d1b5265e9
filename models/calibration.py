"""Temperature scaling (optionally with class biases), expected calibration error and malignancy
operating points.

All fitted on out-of-fold predictions, so thresholds and temperature never see the data the
fold's model trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


def fit_temperature_bias_features(logits: np.ndarray, labels: np.ndarray, features: np.ndarray, l2: float
                                  ) -> tuple[float, np.ndarray, np.ndarray]:
    """T, class biases and per-class feature weights W (normal's row fixed at 0) minimising
    NLL(softmax(logits / T + b + features @ W.T)) + l2 * |W|^2, with ``features`` standardised.

    A multinomial logistic layer over the logits and a few lesion-shape numbers: with W = 0 it is
    ``fit_temperature_bias``; the ridge penalty keeps W small where the shape adds nothing.
    """
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels, np.int64)
    f = np.asarray(features, np.float64)
    n, k = logits.shape
    nf = f.shape[1]
    rows = np.arange(n)

    def unpack(params: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        w = np.vstack([np.zeros((1, nf)), params[k:].reshape(k - 1, nf)])
        return float(params[0]), np.r_[0.0, params[1:k]], w

    def nll_grad(params: np.ndarray) -> tuple[float, np.ndarray]:
        log_t, b, w = unpack(params)
        t = np.exp(log_t)
        z = logits / t + b + f @ w.T
        lp = log_softmax(z, axis=1)
        r = np.exp(lp)
        r[rows, labels] -= 1.0  # d(mean NLL)/dz, times n
        r /= n
        g_log_t = float(-(r * logits).sum() / t)
        g_b = r.sum(axis=0)[1:]
        g_w = (r.T @ f)[1:] + 2 * l2 * w[1:]
        loss = float(-lp[rows, labels].mean() + l2 * (w**2).sum())
        return loss, np.r_[g_log_t, g_b, g_w.ravel()]

    x0 = np.zeros(k + (k - 1) * nf)
    bounds = [(-3.0, 3.0)] + [(-10.0, 10.0)] * (k - 1) + [(None, None)] * ((k - 1) * nf)
    res = minimize(nll_grad, x0, jac=True, method="L-BFGS-B", bounds=bounds)
    log_t, b, w = unpack(res.x)
    return float(np.exp(log_t)), b, w


METHODS = ("temperature", "temperature_bias", "temperature_bias_shape")


@dataclass(frozen=True)
class Calibration:
    """How logits (and, for ``temperature_bias_shape``, lesion-shape features) become the
    reported probabilities: softmax(logits / temperature + bias + standardised(features) @ W.T)."""

    temperature: float = 1.0
    bias: tuple[float, ...] = (0.0, 0.0, 0.0)
    feature_names: tuple[str, ...] = ()
    feature_mean: tuple[float, ...] = ()
    feature_scale: tuple[float, ...] = ()
    feature_weights: tuple[tuple[float, ...], ...] = ()  # one row per class, one column per feature

    @property
    def uses_features(self) -> bool:
        return bool(self.feature_names)

    def probs(self, logits: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
        z = np.asarray(logits, np.float64) / self.temperature + np.asarray(self.bias, np.float64)
        if self.uses_features:
            if features is None:
                raise ValueError(f"this calibration needs the features {', '.join(self.feature_names)}")
            z = z + self._standardise(features) @ np.asarray(self.feature_weights, np.float64).T
        return np.asarray(softmax(z, axis=1))

    def _standardise(self, features: np.ndarray) -> np.ndarray:
        f = np.asarray(features, np.float64)
        if f.ndim != 2 or f.shape[1] != len(self.feature_names):
            raise ValueError(f"expected N x {len(self.feature_names)} features, got shape {f.shape}")
        return (f - np.asarray(self.feature_mean)) / np.asarray(self.feature_scale)

    @classmethod
    def fit(cls, logits: np.ndarray, labels: np.ndarray, method: str = "temperature",
            features: np.ndarray | None = None, feature_names: tuple[str, ...] = (), l2: float = 0.01
            ) -> Calibration:
        k = np.asarray(logits).shape[1]
        if method == "temperature":
            return cls(fit_temperature(logits, labels), (0.0,) * k)
        if method == "temperature_bias":
            t, b = fit_temperature_bias(logits, labels)
            return cls(t, tuple(float(x) for x in b))
        if method == "temperature_bias_shape":
            if features is None or len(feature_names) != np.asarray(features).shape[1]:
                raise ValueError("temperature_bias_shape needs features and one name per feature column")
            f = np.asarray(features, np.float64)
            mean = f.mean(axis=0)
            scale = f.std(axis=0)
            scale[scale < 1e-9] = 1.0  # a constant feature: weight stays ~0 under the penalty
            t, b, w = fit_temperature_bias_features(logits, labels, (f - mean) / scale, l2)
            return cls(t, tuple(float(x) for x in b), tuple(feature_names), tuple(float(x) for x in mean),
                       tuple(float(x) for x in scale), tuple(tuple(float(x) for x in row) for row in w))
        raise ValueError(f"unknown calibration method {method!r} ({', '.join(METHODS)})")

    def to_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "bias": list(self.bias),
                "feature_names": list(self.feature_names), "feature_mean": list(self.feature_mean),
                "feature_scale": list(self.feature_scale), "feature_weights": [list(r) for r in self.feature_weights]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        return cls(float(d["temperature"]), tuple(float(x) for x in d["bias"]),
                   tuple(str(x) for x in d.get("feature_names", ())),
                   tuple(float(x) for x in d.get("feature_mean", ())),
                   tuple(float(x) for x in d.get("feature_scale", ())),
                   tuple(tuple(float(x) for x in r) for r in d.get("feature_weights", ())))


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


def log_loss(probs: np.ndarray, labels: np.ndarray) -> float | None:
    """Mean negative log probability of the true class (None for no samples): a proper score, so
    unlike the ECE it cannot be improved by a miscalibration, and it is far less noisy on a few
    hundred images (a site calibration is judged by it)."""
    if len(labels) == 0:
        return None
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())


def brier_score(probs: np.ndarray, labels: np.ndarray) -> float | None:
    """Mean squared distance between the probabilities and the one-hot truth, summed over classes
    (None for no samples): the other common proper score, bounded where the log loss is not."""
    if len(labels) == 0:
        return None
    onehot = np.eye(probs.shape[1])[labels]
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def ece_if_calibrated(probs: np.ndarray, n_bins: int = 15, draws: int = 200, seed: int = 0) -> float | None:
    """The mean ECE these probabilities would show if they were exactly calibrated: labels drawn from
    the probabilities themselves. On a few hundred images this floor is far from zero, so an ECE
    goal is read against it (a measured ECE at the floor is as calibrated as the set can show)."""
    if len(probs) == 0:
        return None
    rng = np.random.default_rng(seed)
    cum = np.cumsum(probs / probs.sum(axis=1, keepdims=True), axis=1)
    eces: list[float] = []
    for _ in range(draws):
        labels = (rng.random((len(probs), 1)) > cum).sum(axis=1).clip(max=probs.shape[1] - 1)
        eces.append(expected_calibration_error(probs, labels, n_bins) or 0.0)  # never None: probs is not empty
    return float(np.mean(eces))


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
