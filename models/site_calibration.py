"""Site calibration: temperature, class biases (the site's class priors), both malignancy operating
points and the lesion-presence cut, fitted on a hospital's own labelled images before go-live
(``sonopacs calibrate``).

The file names the model (name and version) it belongs to; ``load_site_calibration`` refuses a file
made for another model. Bootstrap intervals are taken out-of-bag: each resample refits everything
and is scored on the images it left out.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from warnings import catch_warnings, filterwarnings

import numpy as np

from sonopacs.models.calibration import Calibration, expected_calibration_error, log_loss, operating_points
from sonopacs.models.metrics import benign_vs_malignant_auc
from sonopacs.models.presence import PresenceRule, fit_rule
from sonopacs.models.priors import shift_priors, target_priors

FORMAT = "sonopacs-site-calibration/1"
MIN_IMAGES = 50
MIN_PER_LESION_CLASS = 10
MIN_NORMALS = 5


class SiteCalibrationError(ValueError):
    """A site calibration that cannot be used (wrong model, unreadable file); the message says why."""


@dataclass
class SiteCalibration:
    model_name: str
    model_version: str
    calibration: Calibration
    class_priors: tuple[float, float, float]  # the class mix the calibration's biases encode
    operating_points: dict[str, float]
    # the normal share probabilities are reported at: the set's own (>= MIN_NORMALS normal images),
    # else the configured model.expected_normal_fraction; the operating points hold for it
    expected_normal_fraction: float
    n_images: int
    class_counts: dict[str, int]
    intervals: dict[str, list[float | None]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    created: str = ""
    # the P(normal) cut of the lesion-presence rule fitted on the site's lesion images
    # (``max_p_normal``), with the target and what it gave on the set; empty: the shipped rule
    lesion_presence: dict[str, Any] = field(default_factory=dict)
    # the scope-gate features of the site's labelled breast images (N x C, the primary network's),
    # pooled into the shipped scope bank by the Analyzer (``FeatureBank.with_site``); None: the bank alone
    scope_features: np.ndarray | None = None

    def presence_rule(self, shipped: PresenceRule) -> PresenceRule:
        """The lesion-presence rule in force with this file: the site's where it was fitted and holds
        out of fold (its floors, else the shipped area floor), else the ``shipped`` one. The site's
        areas were measured on masks at the shipped threshold, so that and the contour's stay."""
        if not presence_rule_holds(self.lesion_presence):
            return shipped
        return PresenceRule.from_dict({"min_area_fraction": shipped.min_area_fraction, **self.lesion_presence,
                                       "mask_threshold": shipped.mask_threshold,
                                       "contour_threshold": shipped.contour_threshold})

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "model": {"name": self.model_name, "version": self.model_version},
                "calibration": self.calibration.to_dict(), "class_priors": list(self.class_priors),
                "operating_points": self.operating_points,
                "expected_normal_fraction": self.expected_normal_fraction, "n_images": self.n_images,
                "class_counts": self.class_counts, "intervals_95": self.intervals, "warnings": self.warnings,
                "created": self.created, "lesion_presence": self.lesion_presence,
                **({"scope_features": _encode(self.scope_features)} if self.scope_features is not None else {})}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SiteCalibration:
        if d.get("format") != FORMAT:
            raise SiteCalibrationError(f"not a sonopacs site calibration (format {d.get('format')!r}, "
                                       f"expected {FORMAT!r})")
        pri = tuple(float(x) for x in d["class_priors"])
        return cls(str(d["model"]["name"]), str(d["model"]["version"]), Calibration.from_dict(d["calibration"]),
                   (pri[0], pri[1], pri[2]), {k: float(v) for k, v in d["operating_points"].items()},
                   float(d["expected_normal_fraction"]), int(d["n_images"]),
                   {k: int(v) for k, v in d["class_counts"].items()}, d.get("intervals_95", {}),
                   list(d.get("warnings", [])), str(d.get("created", "")), dict(d.get("lesion_presence") or {}),
                   _decode(d["scope_features"]) if d.get("scope_features") else None)

    def save(self, path: Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))


def _encode(features: np.ndarray) -> dict[str, Any]:
    """An N x C feature array as JSON: float32 bytes in base64 (a few hundred kB for 150 images)."""
    x = np.ascontiguousarray(features, np.float32)
    return {"dtype": "float32", "shape": list(x.shape), "base64": base64.b64encode(x.tobytes()).decode("ascii")}


def _decode(d: dict[str, Any]) -> np.ndarray:
    shape = tuple(int(n) for n in d["shape"])
    x = np.frombuffer(base64.b64decode(d["base64"]), np.float32)
    if d.get("dtype") != "float32" or len(shape) != 2 or x.size != shape[0] * shape[1]:
        raise SiteCalibrationError(f"scope_features of shape {shape} do not match their data")
    return x.reshape(shape).astype(np.float64)


def load_site_calibration(path: Path, model_name: str, model_version: str) -> SiteCalibration:
    """The site calibration in ``path``, refused unless it was made for this model name and version."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SiteCalibrationError(f"cannot read site calibration {path}: {exc}") from exc
    site = SiteCalibration.from_dict(data)
    if (site.model_name, site.model_version) != (model_name, model_version):
        raise SiteCalibrationError(
            f"site calibration {path} was made for model {site.model_name} {site.model_version}, "
            f"not for the loaded model {model_name} {model_version}: run `sonopacs calibrate` again "
            f"for this model, or unset model.site_calibration")
    return site


def _fit_once(logits: np.ndarray, labels: np.ndarray, shipped: Calibration,
              shipped_priors: Sequence[float], normal_fraction: float
              ) -> tuple[Calibration, tuple[float, float, float], dict[str, float], float]:
    """Calibration, its class priors, operating points and the normal share they hold for, fitted
    on one labelled set. With enough normal images the set's own mix is the site's prior (no
    shift); with fewer, the configured ``normal_fraction`` is."""
    counts = np.bincount(labels, minlength=3).astype(np.float64)
    if counts[0] >= MIN_NORMALS:
        cal = Calibration.fit(logits, labels, "temperature_bias")
        priors = counts / counts.sum()
    else:  # lesion images only: benign vs malignant from the site, normal vs lesion as shipped
        lesion = labels >= 1
        two = Calibration.fit(logits[lesion][:, 1:], labels[lesion] - 1, "temperature_bias")
        b_benign = shipped.bias[1]
        cal = Calibration(two.temperature, (0.0, b_benign, b_benign + two.bias[1]))
        rest = 1.0 - float(shipped_priors[0])
        priors = np.array([shipped_priors[0], rest * counts[1] / counts[1:].sum(), rest * counts[2] / counts[1:].sum()])
    pri = (float(priors[0]), float(priors[1]), float(priors[2]))
    nf = pri[0] if counts[0] >= MIN_NORMALS else float(normal_fraction)
    shifted = shift_priors(cal.probs(logits), pri, target_priors(pri, nf))
    points = operating_points(shifted[:, 2], labels == 2)
    return cal, pri, points, nf


def reported_probs(cal: Calibration, priors: Sequence[float], logits: np.ndarray, normal_fraction: float
                   ) -> np.ndarray:
    return shift_priors(cal.probs(logits), priors, target_priors(priors, normal_fraction))


def fit_presence_cut(cal: Calibration, priors: Sequence[float], logits: np.ndarray, labels: np.ndarray,
                     normal_fraction: float, mask_area: np.ndarray, shipped: PresenceRule,
                     target: float, mask_confidence: np.ndarray | None = None,
                     groups: Sequence[str] | None = None) -> dict[str, Any]:
    """The lesion-presence rule for this site (``models.presence.fit_rule``): mask-area floor,
    mask-confidence floor (with the masks' ``mask_confidence`` and normal images in the set) and
    P(normal) cut at which >= ``target`` of the set's lesion images are given a lesion and the
    fewest of its normal images get one. The areas were measured on masks drawn at the ``shipped``
    rule's threshold, which the site's rule keeps, with its area floor as the floor tried first.

    The rule is the best of many on this set, so its sensitivity here is optimistic. The same fit is
    therefore also made out of fold (folds by ``groups``: patients or near-duplicate groups; each
    image its own where not given), and ``applied`` is False where those rules give fewer than
    ``target`` of the lesion images they were not fitted on a lesion: the shipped rule then stays
    (``presence_rule_holds``). One check at the target, not a search over targets: trying several
    and keeping the first that passes would pass on chance."""
    p_normal = reported_probs(cal, priors, logits, normal_fraction)[:, 0]
    lesion = labels > 0
    base = replace(shipped, max_p_normal=0.5, min_mask_confidence=0.0)
    rule = fit_rule(p_normal, mask_area, lesion, target, base=base, confidence=mask_confidence)
    given = rule.given(p_normal, mask_area, mask_confidence)  # a confidence floor only if it was given
    oof = _out_of_fold_given(p_normal, mask_area, lesion, target, base, mask_confidence,
                             groups if groups is not None else [str(i) for i in range(len(labels))])
    oof_sensitivity = float(oof[lesion].mean()) if oof is not None else None
    return {**rule.to_dict(), "lesion_sensitivity_target": target,
            "lesion_sensitivity": float(given[lesion].mean()),
            "normal_false_lesion_rate": float(given[~lesion].mean()) if (~lesion).any() else None,
            "lesion_sensitivity_out_of_fold": oof_sensitivity,
            "normal_false_lesion_rate_out_of_fold": (float(oof[~lesion].mean()) if oof is not None and (~lesion).any()
                                                     else None),
            "applied": oof_sensitivity is not None and oof_sensitivity >= target}


PRESENCE_FOLDS = 5


def _out_of_fold_given(p_normal: np.ndarray, mask_area: np.ndarray, lesion: np.ndarray, target: float,
                       base: PresenceRule, mask_confidence: np.ndarray | None, groups: Sequence[str]
                       ) -> np.ndarray | None:
    """Where a rule fitted without an image's own fold gives it a lesion (None: too few groups)."""
    from sklearn.model_selection import StratifiedGroupKFold

    g = np.asarray(list(groups))
    folds = min(PRESENCE_FOLDS, int(lesion.sum()), int(len(np.unique(g[lesion]))))
    if folds < 2:
        return None
    given = np.zeros(len(lesion), bool)
    conf = mask_confidence if mask_confidence is not None else np.ones(len(lesion))
    with catch_warnings():  # fewer normal images than folds: those folds simply hold none
        filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splits = list(StratifiedGroupKFold(folds, shuffle=True, random_state=0).split(p_normal, lesion, g))
    for train, test in splits:
        rule = fit_rule(p_normal[train], mask_area[train], lesion[train], target, base=base,
                        confidence=None if mask_confidence is None else mask_confidence[train])
        given[test] = rule.given(p_normal[test], mask_area[test], conf[test])
    return given


def presence_rule_holds(lesion_presence: dict[str, Any]) -> bool:
    """Whether a site calibration's fitted presence rule is applied (files made before the
    out-of-fold check have no ``applied`` and keep their rule)."""
    return lesion_presence.get("max_p_normal") is not None and lesion_presence.get("applied", True) is not False


def fit_site_calibration(logits: np.ndarray, labels: np.ndarray, *, model_name: str, model_version: str,
                         shipped: Calibration, shipped_priors: Sequence[float], normal_fraction: float,
                         n_boot: int = 200, seed: int = 0, mask_area: np.ndarray | None = None,
                         shipped_presence: PresenceRule | None = None, lesion_sensitivity_target: float = 0.95,
                         mask_confidence: np.ndarray | None = None, groups: Sequence[str] | None = None
                         ) -> SiteCalibration:
    """Fit on (raw mirror-mean logits, labels 0/1/2); bootstrap 95 % intervals out-of-bag. With the
    images' lesion-mask areas (``mask_area``) the presence rule is fitted too, with a floor on the
    masks' mean lesion probability when ``mask_confidence`` is given, and checked out of fold with
    folds by ``groups`` (patients or near-duplicate groups; each image its own where not given)."""
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels, np.int64)
    counts = np.bincount(labels, minlength=3)
    warnings = []
    if len(labels) < MIN_IMAGES:
        warnings.append(f"only {len(labels)} images: at least {MIN_IMAGES} are needed, ~150 recommended")
    for i, name in ((1, "benign"), (2, "malignant")):
        if counts[i] < MIN_PER_LESION_CLASS:
            warnings.append(f"only {counts[i]} {name} images (at least {MIN_PER_LESION_CLASS} needed)")
    if counts[1] == 0 or counts[2] == 0:
        raise SiteCalibrationError("a site calibration needs benign and malignant images")
    if counts[0] < MIN_NORMALS:
        warnings.append(f"{counts[0]} normal images (< {MIN_NORMALS}): normal-vs-lesion keeps the shipped "
                        f"calibration; only temperature, benign:malignant prior and operating points are fitted")
    cal, pri, points, nf = _fit_once(logits, labels, shipped, shipped_priors, normal_fraction)
    intervals, medians = _bootstrap(logits, labels, shipped, shipped_priors, normal_fraction, n_boot, seed)
    width = intervals.get("sensitivity_malignant_high", [None, None])
    if None not in width and width[1] - width[0] > 0.2:  # type: ignore[operator]
        warnings.append("the 95 % interval of the high-sensitivity operating point's sensitivity is wider "
                        "than 0.2: label more malignant images")
    # judged by log loss, a proper score: the ECE change of ~50 out-of-bag images is mostly noise (at a
    # stand-in site it flagged 5 of 20 fits, 4 of which were better calibrated on the site's other
    # images; the log loss flagged none; docs/measurements.md)
    if medians.get("log_loss_change_vs_shipped", -1.0) > 0:
        warnings.append("out of bag, the site fit was less well calibrated than the shipped calibration "
                        f"(median log-loss change {medians['log_loss_change_vs_shipped']:+.3f}, ECE change "
                        f"{medians.get('ece_change_vs_shipped', float('nan')):+.3f}): the set may not represent "
                        "the site (label images from more patients and days), or keep the shipped calibration")
    presence: dict[str, Any] = {}
    if mask_area is not None:
        presence = fit_presence_cut(cal, pri, logits, labels, nf, np.asarray(mask_area, np.float64),
                                    shipped_presence or PresenceRule(), lesion_sensitivity_target,
                                    None if mask_confidence is None else np.asarray(mask_confidence, np.float64),
                                    groups)
        if not presence["applied"]:
            oof = presence["lesion_sensitivity_out_of_fold"]
            why = ("too few patients to check it out of fold" if oof is None else
                   f"fitted without each image's own fold it gave {oof:.3f} of the lesion images a lesion "
                   f"(target {lesion_sensitivity_target:.2f})")
            warnings.append(f"the lesion-presence rule fitted on this set is not applied: {why}; the shipped rule "
                            f"stays (label more lesion images, from more patients)")
        if counts[0] < 20:
            warnings.append(f"the lesion-presence cut was fitted on lesion images and checked on only {counts[0]} "
                            f"normal images: its normal-image rate is a rough figure")
    return SiteCalibration(model_name, model_version, cal, pri, points, nf, int(len(labels)),
                           {"normal": int(counts[0]), "benign": int(counts[1]), "malignant": int(counts[2])},
                           intervals, warnings, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), presence)


def _bootstrap(logits: np.ndarray, labels: np.ndarray, shipped: Calibration, shipped_priors: Sequence[float],
               normal_fraction: float, n_boot: int, seed: int
               ) -> tuple[dict[str, list[float | None]], dict[str, float]]:
    """Out-of-bag 95 % intervals and medians of the refitted calibration's figures."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    draws: dict[str, list[float]] = {}
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        oob = np.setdiff1d(np.arange(n), idx)
        lab = labels[idx]
        if len(oob) < 5 or np.bincount(lab, minlength=3)[1:].min() < 2:
            continue
        try:
            cal, pri, pts, nf = _fit_once(logits[idx], lab, shipped, shipped_priors, normal_fraction)
        except ValueError:
            continue
        p = reported_probs(cal, pri, logits[oob], nf)
        y = labels[oob]
        mal = y == 2
        ece_site = expected_calibration_error(p, y)
        p_shipped = reported_probs(shipped, shipped_priors, logits[oob], nf)
        ece_shipped = expected_calibration_error(p_shipped, y)
        vals: dict[str, float | None] = {
            # paired, on the same left-out images: the site fit against the shipped calibration set
            # to the same share of normal images (< 0: the site fit is better calibrated)
            "ece_change_vs_shipped": _difference(ece_site, ece_shipped),
            # the same comparison by a proper score, the mean log loss (what the fit minimises)
            "log_loss_change_vs_shipped": _difference(log_loss(p, y), log_loss(p_shipped, y)),
            "temperature": cal.temperature, "bias_benign": cal.bias[1], "bias_malignant": cal.bias[2],
            "threshold_default": pts["default"], "threshold_high_sensitivity": pts["high_sensitivity"],
            "ece": ece_site,
            "auc_benign_vs_malignant": benign_vs_malignant_auc(p, y),
            "sensitivity_malignant": float((p[mal, 2] >= pts["default"]).mean()) if mal.any() else None,
            "specificity_malignant": float((p[~mal, 2] < pts["default"]).mean()) if (~mal).any() else None,
            "sensitivity_malignant_high": float((p[mal, 2] >= pts["high_sensitivity"]).mean()) if mal.any() else None,
            "specificity_malignant_high": float((p[~mal, 2] < pts["high_sensitivity"]).mean()) if (~mal).any() else None,
        }
        for k, v in vals.items():
            if v is not None:
                draws.setdefault(k, []).append(float(v))
    return {k: [float(np.quantile(v, 0.025)), float(np.quantile(v, 0.975))] for k, v in draws.items() if len(v) >= 10}, \
        {k: float(np.median(v)) for k, v in draws.items() if len(v) >= 10}


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else float(a) - float(b)


def describe(site: SiteCalibration) -> str:
    """A few lines for the operator: what was fitted, with 95 % bootstrap intervals, and warnings."""
    ci = site.intervals

    def iv(key: str) -> str:
        v = ci.get(key)
        return f" (95 % CI {v[0]:.3f}-{v[1]:.3f})" if v and None not in v else ""

    c = site.calibration
    lines = [
        f"site calibration for {site.model_name} {site.model_version}: {site.n_images} images "
        f"({', '.join(f'{k} {v}' for k, v in site.class_counts.items())})",
        f"  temperature {c.temperature:.3f}{iv('temperature')}",
        f"  class bias benign {c.bias[1]:.3f}{iv('bias_benign')}, malignant {c.bias[2]:.3f}{iv('bias_malignant')}",
        f"  class priors of the set: {', '.join(f'{p:.3f}' for p in site.class_priors)}; probabilities are "
        f"reported for {100 * site.expected_normal_fraction:.1f} % normal images (label a representative sample)",
        f"  operating point default P(malignant) >= {site.operating_points['default']:.4f}{iv('threshold_default')}",
        f"  operating point high_sensitivity >= {site.operating_points['high_sensitivity']:.4f}"
        f"{iv('threshold_high_sensitivity')}",
        "  out-of-bag estimates:" + "".join(
            f"\n    {k}{iv(k)}" for k in ("ece", "ece_change_vs_shipped", "log_loss_change_vs_shipped",
                                         "auc_benign_vs_malignant", "sensitivity_malignant",
                                         "specificity_malignant", "sensitivity_malignant_high",
                                         "specificity_malignant_high") if k in ci),
    ]
    lp = site.lesion_presence
    if lp:
        nfl = lp.get("normal_false_lesion_rate")
        conf = float(lp.get("min_mask_confidence") or 0.0)
        applied = presence_rule_holds(lp)
        oof_sens = lp.get("lesion_sensitivity_out_of_fold")
        lines.append(("  lesion presence: " if applied else "  lesion presence (NOT applied: the shipped rule stays): ")
                     + f"mask >= {100 * lp['min_area_fraction']:.1f} % of the model's input frame"
                     + (f", mean lesion probability in the mask >= {conf:.2f}" if conf > 0 else "")
                     + f" and shifted P(normal) < {lp['max_p_normal']:.4f} (lesion images given a lesion "
                     f"{lp['lesion_sensitivity']:.3f}, target {lp['lesion_sensitivity_target']:.2f}; normal images "
                     f"given one {'n/a' if nfl is None else f'{nfl:.3f}'}, on this set"
                     + ("" if oof_sens is None else f"; out of fold, lesion images given a lesion {oof_sens:.3f}")
                     + ")")
    if site.scope_features is not None:
        lines.append(f"  scope gate: the features of {len(site.scope_features)} of the site's breast images join the "
                     "shipped reference (the threshold stays)")
    lines += [f"WARNING: {w}" for w in site.warnings]
    return "\n".join(lines)


def check_site_calibration(path: Path, weights_dir: Path) -> SiteCalibration:
    """Refuse, before any service starts, a site calibration made for another model than the one in
    ``weights_dir`` (its manifest names it), so the operator sees it once instead of on every image."""
    manifest = json.loads((Path(weights_dir) / "model.json").read_text())
    return load_site_calibration(path, str(manifest["name"]), str(manifest["version"]))
