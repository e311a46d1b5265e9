"""A second, zoomed look at a found lesion: does it tell benign from malignant better, outline the
lesion better, or catch detections on normal tissue? Measured offline, nothing changed in the Analyzer.

    python -m sonopacs.training.second_look runs/RUN/jobs/cross_bus-bra_to_busi \\
        --members runs/RUN/jobs/cross_bus-bra_to_busi_f{0,1,2} --index ../shared/datasets/busi/index.csv \\
        --drop-label-conflict --presence-from models/weights/model.json --out DIR

Each labelled image goes through the one cleaning path and the Analyzer as ``evaluate`` runs it
(the reported field). Where the Analyzer gives a lesion, the field is cropped around the outline so
that the outline's longer side fills ``--fraction`` of the crop (``models.second_look.SecondLook``;
images without one, around their largest component at ``--candidate-threshold``), and the crop goes
through the same networks (image and mirror, every ensemble member). Kept per image: both looks' logits, the first
look's mask, and the second look's lesion probability pasted into the crop. ``summary.json``:
B-vs-M AUC of the first, second and averaged logits; Dice of the first outline and of the outline
from the second look (replacing, or averaged with, the first look's probability inside the crop);
and how many normal and lesion images keep a lesion when the second look must find one too.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from sonopacs.models.analyzer import (
    Analyzer,
)
from sonopacs.models.data import load_image, load_mask, read_index
from sonopacs.models.evaluation import analyse_image_field
from sonopacs.models.measure import lesion_mask
from sonopacs.models.metrics import auc_or_none, dice_iou
from sonopacs.models.second_look import SecondLook
from sonopacs.training.site_trial import rehearsal_parser, rehearsal_setup


def look(analyzer: Analyzer, grays: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Mirror- and member-mean class logits (N x 3) and lesion probability of these images."""
    views, probs = analyzer.look(grays)
    n = len(grays)
    return (views[:n] + views[n:]) / 2, probs


def _share(prob: np.ndarray, threshold: float) -> float:
    return float(lesion_mask(prob, threshold).mean())


def main() -> None:
    ap = rehearsal_parser(__doc__)
    ap.add_argument("--fraction", type=float, nargs="*", default=[0.5, 0.35, 0.25])
    ap.add_argument("--candidate-threshold", type=float, default=0.15,
                    help="images the Analyzer gives no lesion get a second look at their largest component at this")
    a = ap.parse_args()
    index, make_analyzer = rehearsal_setup(a)
    analyzer = make_analyzer(None)
    analyzer.second_look = None  # the first look as it was: the tool looks again itself, at each fraction
    thr = analyzer.presence.mask_threshold
    rows: list[dict[str, Any]] = []
    for rec in read_index(index):
        if rec.label is None:
            continue
        img = load_image(rec.image)
        res, gray, truth = analyse_image_field(analyzer, img, load_mask(rec.masks, img.shape[:2]))
        if not res.assessed:
            continue
        row: dict[str, Any] = {"image": rec.image.name, "label": int(rec.label), "given": bool(res.mask.any()),
                               "logits": res.extra["logits"], "dice": dice_iou(res.mask, truth)[0] if rec.label else None}
        rows.append(row)
        _, fp = look(analyzer, [gray])
        first_prob = fp[0]
        row["first_max"] = float(first_prob.max())
        row["first_share"] = {str(t): _share(first_prob, t) for t in (0.15, 0.2, 0.3, 0.4, 0.5)}
        around = res.mask if res.mask.any() else lesion_mask(first_prob, a.candidate_threshold)
        if not around.any():
            continue
        for fr in a.fraction:
            box = SecondLook(fraction=fr).crop(around)
            if box is None:
                continue
            lg, probs = look(analyzer, [gray[box]])
            crop = probs[0]
            out: dict[str, Any] = {"logits": lg[0].tolist(), "crop_max": float(crop.max()),
                                   "crop_share": {str(t): _share(crop, t) for t in (0.15, 0.3, 0.5)},
                                   "inside_max": float(crop[around[box]].max())}
            if res.mask.any() and rec.label:
                rep, avg = first_prob.copy(), first_prob.copy()
                rep[box] = crop
                avg[box] = (crop + first_prob[box]) / 2
                for name, p in (("replace", rep), ("average", avg)):
                    found = lesion_mask(p, thr)
                    drawn = analyzer.presence.contour(p, found) if found.any() else found
                    out[f"dice_{name}"] = dice_iou(drawn, truth)[0]
            row[f"f{fr}"] = out
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "rows.json").write_text(json.dumps(rows))
    summary = {**summarise(rows, a.fraction), "presence_at_95": presence_scores(rows, a.fraction)}
    (a.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


def _bvm(rows: list[dict[str, Any]], logits: list[np.ndarray]) -> float | None:
    y = np.array([r["label"] for r in rows])
    lg = np.array(logits)
    return auc_or_none(y == 2, lg[:, 2] - lg[:, 1])


def summarise(rows: list[dict[str, Any]], fractions: list[float]) -> dict[str, Any]:
    les = [r for r in rows if r["label"] > 0]
    normals = [r for r in rows if r["label"] == 0]
    out: dict[str, Any] = {"images": len(rows), "lesion_images": len(les), "normal_images": len(normals),
                           "first": {"auc_benign_vs_malignant": _bvm(les, [np.array(r["logits"]) for r in les]),
                                     "dice": float(np.mean([r["dice"] for r in les])),
                                     "lesion_sensitivity": float(np.mean([r["given"] for r in les])),
                                     "normal_false_lesion_rate": float(np.mean([r["given"] for r in normals]))}}
    for fr in fractions:
        key = f"f{fr}"

        def second(r: dict[str, Any], k: str = key) -> dict[str, Any] | None:
            return r.get(k) if r["given"] else None

        crop_logits, mean_logits, dice_rep, dice_avg = [], [], [], []
        for r in les:
            s = second(r)
            first = np.array(r["logits"])
            crop = np.array(s["logits"]) if s else first
            crop_logits.append(crop)
            mean_logits.append((first + crop) / 2)
            dice_rep.append(s["dice_replace"] if s else r["dice"])
            dice_avg.append(s["dice_average"] if s else r["dice"])
        res: dict[str, Any] = {
            "second_looks_lesion": sum(1 for r in les if second(r)),
            "second_looks_normal": sum(1 for r in normals if second(r)),
            "auc_benign_vs_malignant_second": _bvm(les, crop_logits),
            "auc_benign_vs_malignant_mean": _bvm(les, mean_logits),
            "dice_replace": float(np.mean(dice_rep)), "dice_average": float(np.mean(dice_avg))}
        for floor in (0.0, 0.002, 0.01, 0.03):  # the second look must find a lesion of this share of its crop
            def kept(r: dict[str, Any], f: float = floor) -> bool:
                s = second(r)
                return bool(r["given"] and (s is None or s["crop_share"]["0.3"] > f))
            res[f"veto_{floor}"] = {"lesion_sensitivity": float(np.mean([kept(r) for r in les])),
                                    "normal_false_lesion_rate": float(np.mean([kept(r) for r in normals]))}
        out[key] = res
    return out


def normals_at_sensitivity(score: np.ndarray, lesion: np.ndarray, target: float = 0.95) -> dict[str, float]:
    """Given a lesion where ``score`` >= the highest cut that still gives ``target`` of lesion images one."""
    cut = np.sort(score[lesion])[::-1][int(np.ceil(target * lesion.sum())) - 1]
    given = score >= cut
    return {"cut": float(cut), "lesion_sensitivity": float(given[lesion].mean()),
            "normal_false_lesion_rate": float(given[~lesion].mean())}


def presence_scores(rows: list[dict[str, Any]], fractions: list[float]) -> dict[str, Any]:
    """Normal images given a lesion at 95 % lesion sensitivity, ranking images by the first look's
    peak lesion probability, by the second look's (over the crop, or inside the first look's
    region), or by both averaged; images without a candidate score 0, crops left out keep the first
    look's score."""
    lesion = np.array([r["label"] > 0 for r in rows])
    first = np.array([r["first_max"] for r in rows])
    out: dict[str, Any] = {"first_max": normals_at_sensitivity(first, lesion)}
    for fr in fractions:
        key = f"f{fr}"
        for stat in ("crop_max", "inside_max"):
            second = np.array([r[key][stat] if key in r else r["first_max"] for r in rows])
            out[f"{key}_{stat}"] = normals_at_sensitivity(second, lesion)
            out[f"{key}_{stat}_mean"] = normals_at_sensitivity((first + second) / 2, lesion)
            out[f"{key}_{stat}_min"] = normals_at_sensitivity(np.minimum(first, second), lesion)
    return out


if __name__ == "__main__":
    main()
