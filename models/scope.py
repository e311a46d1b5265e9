"""Scope gate, model side: is this cleaned image one the model can vouch for?

Two pieces of evidence that need no DICOM header (header evidence is read in
``dicom_node.eligibility.scope_reason``):

- colour content: the share of the field cleaning found in colour-map (Doppler / elastography)
  pixels, from the cleaning summary;
- field shape: the share of near-black pixels in the two top-corner triangles of the cleaned field
  (``sector_score``): a phased-array / curvilinear sector (cardiac, abdominal, obstetric) leaves them
  black, the linear-array rectangle of breast ultrasound fills them with tissue;
- image content: the Mahalanobis distance of the network's pooled deepest encoder features to a
  reference bank of training-image features (``weights/scope_bank.npz``: mean + shrunk precision
  matrix, ~0.4 MB), above a threshold chosen to keep 99.5 % of held-out breast images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

BANK_FILE = "scope_bank.npz"
# cleaning flags a field "doppler" from 0.5 % colour-map pixels; a few coloured pixels are markers
COLOUR_FRACTION_LIMIT = 0.005
# breast images (BUSI + BUS-BRA, 2498 fields): 99.5th percentile 0.37 (BUSI) / 0.08 (BUS-BRA), max 0.80
SECTOR_LIMIT = 0.6
DARK_LEVEL = 12


def sector_score(gray: np.ndarray) -> float:
    """Share of near-black pixels in the darker-filled of the two top-corner triangles (legs: half
    the height, a third of the width) of a cleaned field: ~1 for a sector, ~0 for a rectangle."""
    g = gray if gray.ndim == 2 else gray.max(axis=2)
    h, w = g.shape
    ch, cw = max(h // 2, 1), max(w // 3, 1)
    yy, xx = np.mgrid[0:ch, 0:cw]
    tri = (yy / ch + xx / cw) < 1.0
    left = g[:ch, :cw][tri]
    right = g[:ch, w - cw :][:, ::-1][tri]
    return float(min((left <= DARK_LEVEL).mean(), (right <= DARK_LEVEL).mean()))


def sector_reason(score: float) -> str | None:
    if score >= SECTOR_LIMIT:
        return (f"sector-shaped field ({100 * score:.0f} % of the top corners black): a phased-array or "
                f"curvilinear image, not a linear-array breast image")
    return None


def colour_reason(summary: dict[str, Any] | None) -> str | None:
    """Why a cleaned field is not B-mode from its colour content, or None."""
    if not summary:
        return None
    frac = float(summary.get("doppler_fraction") or 0.0)
    flags = summary.get("flags") or []
    if frac >= COLOUR_FRACTION_LIMIT or "doppler" in flags:
        return f"colour Doppler or elastography content ({100 * frac:.1f} % of the field in colour)"
    return None


OUT_OF_DISTRIBUTION = "image content unlike the breast ultrasound the model was trained on"


@dataclass(frozen=True)
class FeatureBank:
    """Mean and precision of reference features; ``threshold`` on the Mahalanobis distance."""

    mean: np.ndarray
    precision: np.ndarray
    threshold: float
    n_reference: int
    keep_quantile: float

    def distance(self, features: np.ndarray) -> np.ndarray:
        d = np.atleast_2d(np.asarray(features, np.float64)) - self.mean
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, self.precision, d), 0.0))

    def reason(self, distance: float) -> str | None:
        if distance > self.threshold:
            return f"{OUT_OF_DISTRIBUTION} (out-of-distribution score {distance:.1f} > {self.threshold:.1f})"
        return None

    @classmethod
    def fit(cls, reference: np.ndarray, held_out: np.ndarray, keep_quantile: float = 0.995) -> FeatureBank:
        """Ledoit-Wolf mean/precision on ``reference``; threshold = ``keep_quantile`` of the
        distances of ``held_out`` (images the bank did not see)."""
        from sklearn.covariance import LedoitWolf

        ref = np.asarray(reference, np.float64)
        lw = LedoitWolf().fit(ref)
        bank = cls(lw.location_, lw.precision_, float("inf"), len(ref), keep_quantile)
        thr = float(np.quantile(bank.distance(held_out), keep_quantile))
        return cls(bank.mean, bank.precision, thr, len(ref), keep_quantile)

    def with_site(self, features: np.ndarray) -> FeatureBank:
        """This bank with a site's own breast images pooled into its reference (pooled mean and
        covariance, the threshold kept): the images a site labelled as breast ultrasound in
        ``sonopacs calibrate``. Why: at a hospital the model never saw the bank refused 18 % of the
        breast images; with 150 of the site's images pooled in, 3.3 % of its others, and every test
        photograph still (model card, scope gate). Refitting needs the reference features, which the
        shipped bank does not carry; its mean and covariance are all pooling needs."""
        x = np.atleast_2d(np.asarray(features, np.float64))
        if not len(x):
            return self
        n1, n2 = self.n_reference, len(x)
        site_mean = x.mean(axis=0)
        mean = (n1 * self.mean + n2 * site_mean) / (n1 + n2)
        d1, d2 = self.mean - mean, site_mean - mean
        cov = (n1 * (np.linalg.inv(self.precision) + np.outer(d1, d1))
               + n2 * (np.cov(x, rowvar=False, bias=True).reshape(len(mean), len(mean)) + np.outer(d2, d2))) / (n1 + n2)
        return FeatureBank(mean, np.linalg.inv(cov), self.threshold, n1 + n2, self.keep_quantile)

    def save(self, path: Path) -> None:
        np.savez_compressed(path, mean=self.mean.astype(np.float32), precision=self.precision.astype(np.float32),
                            threshold=self.threshold, n_reference=self.n_reference, keep_quantile=self.keep_quantile)

    @classmethod
    def load(cls, path: Path) -> FeatureBank:
        z = np.load(path)
        return cls(z["mean"].astype(np.float64), z["precision"].astype(np.float64), float(z["threshold"]),
                   int(z["n_reference"]), float(z["keep_quantile"]))
