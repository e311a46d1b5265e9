"""Is there a lesion? Decided from the segmenter's mask together with the prior-shifted classifier.

The mask (largest component of lesion probability >= ``mask_threshold``) is evidence that does not
depend on the class mix the calibration was fitted on; the classifier's P(normal) does, which is why it is
first shifted to the site's expected share of normal images (``models.priors``). A lesion is
present when the mask covers at least ``min_area_fraction`` of the network's input frame (the image
letterboxed to a square, where training measures areas) and the shifted
P(normal) is below ``max_p_normal``, and (when set) the mean lesion probability inside the mask is
at least ``min_mask_confidence``. A normal decision withholds the contour.

The detection mask's threshold is fitted with the rest of the rule on a run's out-of-fold
predictions (``fit_rule_over_thresholds``): a segmenter's lesion probability saturates at its own
level (0.5.0 near 0.77, v8's networks near 0.68, 0.8.1 at 0.7424), so a fixed 0.5 is an arbitrary
point on each network's scale. That level is the segmentation head's bias: behind the decoder's last
ReLU every channel learnt to fire on background, so a lesion pixel is one where none fires
(``training.seg_head_probe``; ``model.linear_seg_features`` removes the ReLU, measured without gain). The contour shown stays at ``contour_threshold`` (0.5) wherever the probability
reaches it.

The confidence floor is off (0) in a shipped rule and fitted only where there are normal images to
fit it on: a site calibration's set. At an unseen site the masks that fire on normal tissue are
often faint (lesion probability just over 0.5), which neither the area nor P(normal) sees.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from sonopacs.models.measure import lesion_mask


@dataclass(frozen=True)
class PresenceRule:
    min_area_fraction: float = 0.002
    max_p_normal: float = 0.5
    min_mask_confidence: float = 0.0  # mean lesion probability inside the mask; 0 = not used
    mask_threshold: float = 0.5  # the lesion probability the detection mask is drawn at (areas are measured at it)
    contour_threshold: float = 0.5  # the contour shown: drawn here where the probability reaches it (``contour``)

    def lesion_present(self, p_normal: float, mask_area_fraction: float, mask_confidence: float | None = None) -> bool:
        return bool(self.given(p_normal, mask_area_fraction, mask_confidence))

    def given(self, p_normal: Any, mask_area_fraction: Any, mask_confidence: Any = None) -> np.ndarray:
        """The rule on arrays (or scalars): where a lesion is given. The one place it is written.

        ``mask_confidence`` is needed only when the rule has a confidence floor."""
        out = (np.asarray(mask_area_fraction) >= self.min_area_fraction) & (np.asarray(p_normal) < self.max_p_normal)
        if self.min_mask_confidence > 0:
            if mask_confidence is None:
                raise ValueError("this presence rule has a mask-confidence floor: pass the masks' confidence")
            out = out & (np.asarray(mask_confidence) >= self.min_mask_confidence)
        return out

    def contour(self, prob: np.ndarray, detected: np.ndarray) -> np.ndarray:
        """The outline shown for a present lesion: the largest component at ``contour_threshold``
        where one reaches it, else the detection mask. A low detection threshold finds faint
        lesions, but its outlines run wide of the lesion (out of fold, BUS-BRA Dice 0.825 at 0.5,
        0.783 at 0.15)."""
        if self.contour_threshold <= self.mask_threshold:
            return detected
        drawn = lesion_mask(prob, self.contour_threshold)
        return drawn if drawn.any() else detected

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> PresenceRule:
        return cls(**{k: float(v) for k, v in (d or {}).items() if k in cls.__dataclass_fields__})


def mask_evidence(prob: np.ndarray, found: np.ndarray, fill: float) -> tuple[float, float]:
    """What the rule reads off a detection mask ``found`` drawn on ``prob``: its share of the
    network's letterboxed input frame, where training measured the areas the floor was fitted on
    (``fill``: the image's share of that frame, ``Letterbox.fill``; a share of the image alone is
    larger by 1 / fill), and its mean lesion probability (0 without a mask)."""
    area_fraction = float(found.mean()) * fill
    confidence = float(prob[found].mean()) if found.any() else 0.0
    return area_fraction, confidence


def fit_p_normal_cut(p_normal: np.ndarray, has_mask: np.ndarray, lesion: np.ndarray, target: float,
                     strata: Iterable[np.ndarray] | None = None) -> float:
    """The lowest cut on P(normal) at which lesion images with a mask are given a lesion at >=
    ``target`` (in every stratum, e.g. every dataset, when given): the fewest normal images get one
    at that sensitivity. 1.0 when even no cut reaches it (the masks alone miss more)."""
    p_normal, has_mask, lesion = (np.asarray(a) for a in (p_normal, has_mask, lesion))
    groups = _lesion_groups(lesion, list(strata) if strata is not None else None)
    for cut in np.unique(np.concatenate([p_normal[lesion], [1.0]])):
        given = has_mask & (p_normal < cut)
        if all(given[g].mean() >= target for g in groups):
            return float(cut)
    return 1.0


AREA_CANDIDATES = (0.002, 0.005, 0.01, 0.02)  # mask share of the model frame: 0.3.0's 0.2 % up to 2 %
# confidence floors tried: those that drop this share of the lesion images' masks (the faintest), as
# quantiles of the set's own values: a network's lesion probability saturates at its own level
# (0.5.0: 0.77), so no fixed list of floors fits every network
CONFIDENCE_QUANTILES = (0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3)


def confidence_candidates(confidence: np.ndarray, lesion_masks: np.ndarray) -> list[float]:
    """0 (no floor) and the ``CONFIDENCE_QUANTILES`` of the lesion images' mask confidences."""
    c = np.asarray(confidence, np.float64)[np.asarray(lesion_masks, bool)]
    return [0.0, *(sorted({float(q) for q in np.quantile(c, CONFIDENCE_QUANTILES)}) if len(c) else [])]


def _lesion_groups(lesion: np.ndarray, strata: list[np.ndarray] | None) -> list[np.ndarray]:
    return [g for g in ([np.asarray(s, bool) & lesion for s in strata] if strata else [lesion]) if g.any()]


def _rule_key(given: np.ndarray, lesion: np.ndarray, groups: list[np.ndarray], target: float) -> tuple[float, float]:
    """Smaller is better: reached in every group, the fewest normal images given a lesion; not
    reached, the most lesions found in the worst group."""
    sensitivity = min(float(given[g].mean()) for g in groups) if groups else 0.0
    false_rate = float(given[~lesion].mean()) if (~lesion).any() else 0.0
    return (0.0, false_rate) if sensitivity >= target else (1.0, -sensitivity)


def fit_rule(p_normal: np.ndarray, area: np.ndarray, lesion: np.ndarray, target: float,
             strata: Iterable[np.ndarray] | None = None, base: PresenceRule | None = None,
             confidence: np.ndarray | None = None) -> PresenceRule:
    """The rule's thresholds: for each candidate mask-area floor (and, with the masks'
    ``confidence``, each confidence floor) the lowest P(normal) cut that reaches ``target``
    (``fit_p_normal_cut``), then the rule that gives the fewest normal images a lesion (ties: the
    smaller floors). Without normal images only the cut is fitted, on ``base``'s floors: nothing
    would show what a higher floor saves. ``area`` was measured on masks drawn at ``base``'s
    ``mask_threshold``, which the rule keeps."""
    p_normal, area, lesion = (np.asarray(a) for a in (p_normal, area, lesion))
    base = base or PresenceRule()
    strata = list(strata) if strata is not None else None
    has_normals = bool((~lesion).any())
    floors = sorted(set(AREA_CANDIDATES) | {base.min_area_fraction}) if has_normals else [base.min_area_fraction]
    conf_floors = [base.min_mask_confidence]
    conf = np.asarray(confidence) if confidence is not None else np.ones(len(area))
    if confidence is not None and has_normals:
        conf_floors = sorted(set(confidence_candidates(conf, lesion & (area > 0))) | {base.min_mask_confidence})
    groups = _lesion_groups(lesion, strata)
    best: tuple[tuple[float, float], PresenceRule] | None = None
    for floor in floors:
        for conf_floor in conf_floors:
            cut = fit_p_normal_cut(p_normal, (area >= floor) & (conf >= conf_floor), lesion, target, strata)
            rule = replace(base, min_area_fraction=float(floor), max_p_normal=cut, min_mask_confidence=float(conf_floor))
            key = _rule_key(rule.given(p_normal, area, conf), lesion, groups, target)
            if best is None or key < best[0]:
                best = (key, rule)
    assert best is not None
    return best[1]


def fit_rule_over_thresholds(p_normal: np.ndarray, areas: Mapping[float, np.ndarray], lesion: np.ndarray,
                             target: float, strata: Iterable[np.ndarray] | None = None,
                             base: PresenceRule | None = None) -> tuple[PresenceRule, dict[float, PresenceRule]]:
    """``fit_rule`` at each mask threshold (``areas[t]``: each image's mask area drawn at lesion
    probability >= t), then the threshold whose rule best meets ``target`` (``_rule_key``; ties:
    the higher threshold, the nearer to the 0.5 the network was trained towards). Returns that rule
    and every threshold's, so a report can show the whole choice."""
    lesion = np.asarray(lesion, bool)
    base = base or PresenceRule()
    strata = list(strata) if strata is not None else None
    groups = _lesion_groups(lesion, strata)
    rules = {float(t): fit_rule(p_normal, areas[t], lesion, target, strata, replace(base, mask_threshold=float(t)))
             for t in areas}
    best: tuple[tuple[float, float], PresenceRule] | None = None
    for t in sorted(rules, reverse=True):
        key = _rule_key(rules[t].given(p_normal, areas[t]), lesion, groups, target)
        if best is None or key < best[0]:
            best = (key, rules[t])
    if best is None:
        raise ValueError("no mask thresholds to fit over")
    return best[1], rules
