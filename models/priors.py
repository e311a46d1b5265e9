"""Prior-shift correction: move calibrated probabilities from the class mix they were fitted on to
the mix expected where the model runs (Saerens et al., Neural Computation 2002).

p'(c | x) is proportional to p(c | x) * target(c) / fitted(c). Only the share of normal images is
configured (``model.expected_normal_fraction``); benign and malignant keep their fitted ratio, so
P(malignant | lesion) = p(malignant) / (p(benign) + p(malignant)) is unchanged by the shift.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def target_priors(fitted: Sequence[float], normal_fraction: float) -> tuple[float, float, float]:
    """(normal, benign, malignant) priors with ``normal_fraction`` normal images, the benign:malignant
    ratio of ``fitted`` kept."""
    if not 0.0 < normal_fraction < 1.0:
        raise ValueError(f"expected_normal_fraction must be in (0, 1), got {normal_fraction}")
    _, b, m = (float(x) for x in fitted)
    if b <= 0 or m <= 0:
        raise ValueError(f"fitted priors need benign and malignant shares > 0, got {tuple(fitted)}")
    rest = 1.0 - normal_fraction
    return normal_fraction, rest * b / (b + m), rest * m / (b + m)


def shift_priors(probs: np.ndarray, fitted: Sequence[float], target: Sequence[float]) -> np.ndarray:
    """Rows of class probabilities re-weighted from the ``fitted`` priors to the ``target`` priors."""
    p = np.atleast_2d(np.asarray(probs, np.float64))
    w = np.asarray(target, np.float64) / np.asarray(fitted, np.float64)
    q = p * w
    return np.asarray(q / q.sum(axis=1, keepdims=True))
