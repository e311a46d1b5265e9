"""Does a found lesion hold up when the image is shown differently? Presence under extra views.

    python -m sonopacs.training.presence_views WEIGHTS_DIR --index INDEX.csv [--drop-label-conflict] \\
        [--every N] --out DIR

Why: at an unseen site about half of the normal images get a lesion at 95 % lesion sensitivity.
A mass should be found whatever the gain or framing; a mask that fires on normal tissue the
network does not know might not be. For each image (the one cleaning path and the field the
Analyzer reports, as ``evaluate``) this runs the weights folder's networks on the field as it is
and on five altered views (gamma 0.7 and 1.4, 85 % of the field, the field inside a 25 % black
margin, the field less its top and left tenth), each with its mirror, and records per view the
detection mask's share of the network's frame (at the rule's ``mask_threshold``, as the Analyzer
measures it), its mean lesion probability and the reported (prior-shifted) probabilities. ``report.json`` then
gives the presence trade-off (the P(normal) cut moved until >= 95 % of lesion images get a lesion,
as ``job_eval``'s) for the field alone and for rules that ask for the mask in at least k views.
Read-only: a lab probe on a held-out index, not a test and not the shipped rule.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sonopacs.models.analyzer import Analyzer
from sonopacs.models.data import load_image, load_mask, read_index
from sonopacs.models.evaluation import analyse_image_field
from sonopacs.models.measure import lesion_mask
from sonopacs.models.metrics import auc_or_none, benign_vs_malignant_auc
from sonopacs.models.presence import mask_evidence
from sonopacs.models.transforms import Letterbox
from sonopacs.training.job_eval import add_held_out_arguments, cut_for_sensitivity, held_out_index


def _gamma(g: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: (255.0 * (x / 255.0) ** g).round().astype(np.uint8)


def _inner(fraction: float) -> Callable[[np.ndarray], np.ndarray]:
    def crop(x: np.ndarray) -> np.ndarray:
        dh, dw = int(x.shape[0] * (1 - fraction) / 2), int(x.shape[1] * (1 - fraction) / 2)
        return x[dh:x.shape[0] - dh, dw:x.shape[1] - dw]
    return crop


def _margin(x: np.ndarray, fraction: float = 0.25) -> np.ndarray:
    out = np.zeros((round(x.shape[0] * (1 + fraction)), round(x.shape[1] * (1 + fraction))), np.uint8)
    top, left = (out.shape[0] - x.shape[0]) // 2, (out.shape[1] - x.shape[1]) // 2
    out[top:top + x.shape[0], left:left + x.shape[1]] = x
    return out


def _shifted(x: np.ndarray) -> np.ndarray:
    return x[x.shape[0] // 10:, x.shape[1] // 10:]


CURVE_SENSITIVITIES = (0.85, 0.9, 0.92, 0.94, 0.95)

VIEWS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "field": lambda x: x, "gamma_0.7": _gamma(0.7), "gamma_1.4": _gamma(1.4),
    "inner_0.85": _inner(0.85), "margin_0.25": _margin, "shifted_0.1": _shifted,
}


def view_signals(analyzer: Analyzer, gray: np.ndarray) -> dict[str, np.ndarray]:
    """Per view of ``gray`` (``VIEWS``' order): the detection mask's share of the network's frame,
    its mean lesion probability (0 without a mask) and the reported probabilities (views x classes)."""
    views = [make(gray) for make in VIEWS.values()]
    logits, probs = analyzer.look(views)
    n = len(views)
    probabilities = analyzer.reported_probabilities((logits[:n] + logits[n:]) / 2)
    area, confidence = np.zeros(n), np.zeros(n)
    for k, (view, prob) in enumerate(zip(views, probs, strict=True)):
        found = lesion_mask(prob, analyzer.presence.mask_threshold)
        area[k], confidence[k] = mask_evidence(prob, found, Letterbox(*view.shape, analyzer.size).fill)
    return {"area": area, "confidence": confidence, "probabilities": probabilities}


def collect(analyzer: Analyzer, index: Path, every: int = 1) -> dict[str, np.ndarray]:
    """``view_signals`` of every ``every``-th labelled image of ``index`` (images not assessed, e.g.
    whose cleaning fails, are left out), with its label and the Analyzer's own reported mask share
    and presence."""
    rows: dict[str, list[Any]] = {k: [] for k in ("label", "area", "confidence", "probabilities", "reported_area",
                                                  "reported_lesion")}
    for rec in [r for r in read_index(index) if r.label is not None][::every]:
        img = load_image(rec.image)
        res, gray, _ = analyse_image_field(analyzer, img, load_mask(rec.masks, img.shape[:2]))
        if not res.assessed:
            continue
        signals = view_signals(analyzer, gray)
        for key, value in signals.items():
            rows[key].append(value)
        rows["label"].append(rec.label)
        rows["reported_area"].append(float(res.extra.get("lesion_area_fraction") or 0.0))
        rows["reported_lesion"].append(res.label != "normal")
    return {k: np.asarray(v) for k, v in rows.items()}


def report(signals: dict[str, np.ndarray], min_area_fraction: float, sensitivity: float = 0.95) -> dict[str, Any]:
    """The presence trade-off for the field alone and for 'the mask in >= k of the views'."""
    lesion = signals["label"] > 0
    masks = signals["area"] >= min_area_fraction
    probabilities = signals["probabilities"]
    p_field, p_mean = probabilities[:, 0, 0], probabilities[:, :, 0].mean(axis=1)
    out: dict[str, Any] = {"views": list(VIEWS), "n_lesion": int(lesion.sum()), "n_normal": int((~lesion).sum()),
                           "auc_p_normal_field": auc_or_none(~lesion, p_field),
                           "auc_p_normal_view_mean": auc_or_none(~lesion, p_mean),
                           "auc_confidence_field": auc_or_none(lesion, signals["confidence"][:, 0]),
                           "auc_confidence_view_mean": auc_or_none(lesion, signals["confidence"].mean(axis=1)),
                           # class probabilities averaged over the views: does more test-time augmentation
                           # tell benign from malignant better?
                           "auc_benign_vs_malignant_field": benign_vs_malignant_auc(probabilities[:, 0], signals["label"]),
                           "auc_benign_vs_malignant_view_mean": benign_vs_malignant_auc(probabilities.mean(axis=1),
                                                                                        signals["label"]),
                           "masks_on_lesions_by_view": dict(zip(VIEWS, map(float, masks[lesion].mean(axis=0)), strict=True)),
                           "field": cut_for_sensitivity(p_field, masks[:, 0], lesion, sensitivity)}
    in_views = {k: masks.sum(axis=1) >= k for k in range(1, len(VIEWS) + 1)}  # the mask in >= k views
    for k, in_k in in_views.items():
        out[f"mask_in_{k}_views"] = {
            "masks_on_lesions": float(in_k[lesion].mean()),
            "masks_on_normals": float(in_k[~lesion].mean()) if (~lesion).any() else None,
            "p_normal_field": cut_for_sensitivity(p_field, in_k, lesion, sensitivity),
            "p_normal_view_mean": cut_for_sensitivity(p_mean, in_k, lesion, sensitivity)}
    # the whole curve: normal images given a lesion at each lesion sensitivity (None: not reached)
    rules = {"field": masks[:, 0], **{f"mask_in_{k}_views": in_views[k] for k in in_views if k >= 2}}
    curve: dict[str, dict[str, float | None]] = {}
    for s in CURVE_SENSITIVITIES:
        cuts = {rule: cut_for_sensitivity(p_field, has, lesion, s) for rule, has in rules.items()}
        curve[str(s)] = {rule: None if cut is None else cut["normal_given_lesion"] for rule, cut in cuts.items()}
    out["normals_given_a_lesion_by_sensitivity"] = curve
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights", type=Path)
    add_held_out_arguments(ap)
    ap.add_argument("--every", type=int, default=1, help="every N-th labelled image of the index")
    a = ap.parse_args()
    analyzer = Analyzer.load(a.weights, device="cpu", scope_gate=False)
    signals = collect(analyzer, held_out_index(a.index, a.out / "index.csv", a.drop_label_conflict), a.every)
    arrays: dict[str, Any] = dict(signals)
    np.savez_compressed(a.out / "view_signals.npz", **arrays)
    result = report(signals, analyzer.presence.min_area_fraction)
    (a.out / "report.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
