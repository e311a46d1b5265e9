"""One trained job's network through the shipped Analyzer and ``evaluate`` on a held-out index.

    python -m sonopacs.training.job_eval runs/RUN/jobs/JOB --index ../shared/datasets/busi/index.csv \\
        --drop-label-conflict --out runs/RUN/eval_busi

A job has no calibration of its own (it trained on one dataset; no out-of-fold predictions), so its
weights folder gets the identity calibration (T = 1, no class biases), class priors 1/3 each (the
balanced class weights teach equal priors) and a fixed lesion-presence rule: a lesion is given
when the post-processed mask covers >= 0.2 % of the image and P(normal), prior-shifted to the
Analyzer's default 40 % normal images, is < 0.5 (``--presence-from model.json``: the rule that
run's finalize fitted on its out-of-fold predictions instead). ``normal_false_lesion_rate`` and
``lesion_sensitivity`` are then measured exactly as ``sonopacs evaluate`` measures them for the
shipped model (same cleaning path, same Analyzer); no scope bank, so only cleaning and the colour
gate can leave an image not assessed, unless ``--scope-bank`` gives one built for the job's network.
``presence_tradeoff.json``: the same rule offline from the job's ``preds.npz``, with the P(normal)
cut moved to reach 95 % lesion sensitivity.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from sonopacs.models.analyzer import Analyzer
from sonopacs.models.calibration import Calibration
from sonopacs.models.evaluation import evaluate_index
from sonopacs.models.lesion_shape import SHAPE_FEATURES
from sonopacs.models.metrics import auc_or_none
from sonopacs.models.presence import PresenceRule
from sonopacs.models.priors import shift_priors, target_priors
from sonopacs.models.scope import BANK_FILE
from sonopacs.training.weights_folder import save_ensemble_members, save_half_state

KEYS = ("n_images", "normal_false_lesion_rate", "lesion_sensitivity", "auc_benign_vs_malignant",
        "auc_malignant_vs_rest", "dice", "macro_f1", "accuracy", "ece", "not_assessed_rate")


def trained_image_size(job_dir: Path) -> int | None:
    """The image size a job trained at: its ``model.pt``'s record, else (jobs saved before that
    record) its run's ``config.yaml``, found above the job folder (``runs/RUN/jobs/JOB[/averaged]``)."""
    checkpoint = torch.load(job_dir / "model.pt", map_location="cpu", weights_only=True)
    if checkpoint.get("image_size"):
        return int(checkpoint["image_size"])
    for folder in job_dir.resolve().parents[:3]:
        if (folder / "config.yaml").exists():
            size = ((yaml.safe_load((folder / "config.yaml").read_text()) or {}).get("data") or {}).get("image_size")
            return int(size) if size else None
    return None


def job_weights(job_dir: Path, out: Path, image_size: int | None = None, name: str = "lodo-job",
                version: str = "0.0.0", presence: dict[str, float] | None = None,
                members: Sequence[Path] = (), second_look: dict[str, float] | None = None) -> Path:
    """A weights folder (half-precision state dict + manifest) for a job's ``model.pt``; ``presence``
    replaces the default lesion-presence rule (e.g. the one a run's finalize fitted); ``members``:
    further jobs of the same network, averaged with it as an ensemble (``Analyzer``); ``second_look``:
    the manifest's ``models.second_look`` settings (None: none).

    ``image_size`` defaults to the size the job trained at (``trained_image_size``). A size that
    differs from that record is refused: the network would run, at the wrong scale, and every
    figure measured through it would be quietly wrong."""
    out.mkdir(parents=True, exist_ok=True)
    trained = {job: trained_image_size(job) for job in (job_dir, *members)}
    for job, size in trained.items():
        if size is not None and image_size is not None and size != image_size:
            raise ValueError(f"{job} trained at {size} px, not {image_size} px")
        image_size = image_size or size
    if image_size is None:
        raise ValueError(f"{job_dir}: no record of the image size it trained at; give it (--image-size)")
    ck = save_half_state(job_dir / "model.pt", out / "model.pt")
    member_files = save_ensemble_members([m / "model.pt" for m in members], out, ck["model"])
    manifest: dict[str, Any] = {
        "name": name, "version": version, "image_size": image_size,
        "model": ck["model"], "temperature": 1.0, "class_bias": [0.0, 0.0, 0.0],
        "operating_points": {"default": 0.5, "high_sensitivity": 0.5},
        "calibration_class_priors": [1 / 3, 1 / 3, 1 / 3],
        "lesion_presence": presence or PresenceRule().to_dict(),  # floor 0.2 %, cut 0.5
        "best_epoch": ck.get("best_epoch"), "source_job": str(job_dir),
        **({"ensemble_members": member_files, "member_jobs": [str(m) for m in members]} if members else {}),
        **({"second_look": second_look} if second_look else {}),
    }
    (out / "model.json").write_text(json.dumps(manifest, indent=2))
    return out


def presence_from(model_json: Path | None) -> dict[str, float] | None:
    """The ``lesion_presence`` rule of a run's ``model.json`` (None: ``job_weights``' fixed rule)."""
    if model_json is None:
        return None
    rule: dict[str, float] = json.loads(model_json.read_text())["lesion_presence"]
    return rule


def held_out_index(index_csv: Path, out_csv: Path, drop_label_conflict: bool) -> Path:
    """The index with absolute paths, label-conflict rows left out when asked (as training does)."""
    root = index_csv.resolve().parent
    with index_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    keep = [r for r in rows if not (drop_label_conflict and (r.get("label_conflict") or "0").strip() == "1")]
    for r in keep:
        r["image"] = str(root / r["image"].strip())
        r["mask"] = "|".join(str(root / m.strip()) for m in (r.get("mask") or "").split("|") if m.strip())
    write_index(out_csv, list(rows[0]), keep)
    return out_csv


def write_index(path: Path, fieldnames: list[str], rows: list[dict[str, str]]) -> None:
    """An index CSV (``image,label,mask,...``) with these rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fieldnames)
        w.writeheader()
        w.writerows(rows)


def cut_for_sensitivity(pn: np.ndarray, has_mask: np.ndarray, lesion: np.ndarray, sensitivity: float
                        ) -> dict[str, float] | None:
    """The lowest P(normal) cut giving >= ``sensitivity`` of lesion images a lesion, and the share
    of normal images it gives one; None when the masks alone miss more. Not ``fit_p_normal_cut``:
    that fits a shipped rule at the next lesion image's value (a margin); this reads the trade-off
    itself, so any image's value may be the cut."""
    for cut in np.unique(np.concatenate([pn, [1.0 + 1e-9]])):
        given = has_mask & (pn < cut)
        if given[lesion].mean() >= sensitivity:
            return {"p_normal_cut": float(cut), "normal_given_lesion": float(given[~lesion].mean()),
                    "lesion_sensitivity": float(given[lesion].mean())}
    return None


def presence_tradeoff(preds: Path, normal_fraction: float = 0.4, sensitivity: float = 0.95,
                      min_area_fraction: float = 0.002) -> dict[str, Any]:
    """From a job's ``preds.npz`` (offline, the 160 px letterboxed frame, not the Analyzer's
    full-resolution mask): AUC of P(normal) for normal vs lesion images, and the share of normal
    images given a lesion when the P(normal) cut is moved until >= ``sensitivity`` of lesion images
    get one (mask >= ``min_area_fraction`` of the frame AND shifted P(normal) < cut); with the
    masks stored at several thresholds, the same at each (``by_mask_threshold``)."""
    d = dict(np.load(preds))
    prior = [1 / 3, 1 / 3, 1 / 3]
    pn = shift_priors(Calibration().probs(d["logits"]), prior, target_priors(prior, normal_fraction))[:, 0]
    area = np.exp(d["shape_features"][:, SHAPE_FEATURES.index("log_area_fraction")])
    has_mask = (d["shape_features"][:, SHAPE_FEATURES.index("lesion_present")] > 0) & (area >= min_area_fraction)
    lesion = d["labels"] > 0
    out: dict[str, Any] = {"auc_normal_vs_lesion": auc_or_none(~lesion, pn), "n_normal": int((~lesion).sum()),
                           "n_lesion": int(lesion.sum())}
    at_half = has_mask & (pn < 0.5)
    out["at_0.5"] = {"normal_given_lesion": float(at_half[~lesion].mean()), "lesion_sensitivity": float(at_half[lesion].mean())}
    out[f"at_sensitivity_{sensitivity}"] = cut_for_sensitivity(pn, has_mask, lesion, sensitivity)
    if "area_by_threshold" in d:
        out["by_mask_threshold"] = {
            str(round(float(t), 4)): {"masks_on_lesions": float((d["area_by_threshold"][lesion, k] >= min_area_fraction).mean()),
                                      f"at_sensitivity_{sensitivity}": cut_for_sensitivity(
                                          pn, d["area_by_threshold"][:, k] >= min_area_fraction, lesion, sensitivity)}
            for k, t in enumerate(d["mask_thresholds"])}
    return out


def analyzer_tradeoff(predictions_csv: Path, min_area_fraction: float, sensitivity: float = 0.95
                      ) -> dict[str, Any]:
    """``presence_tradeoff``'s figures from the Analyzer's own outputs (``evaluate``'s
    ``predictions.csv``: full-resolution mask at the rule's threshold, shifted P(normal)), so that
    an ensemble, whose averaged masks no job stored, is judged the same way."""
    with predictions_csv.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["assessed"] == "True"]
    pn = np.array([float(r["p_normal"]) for r in rows])
    has_mask = np.array([float(r["lesion_area_fraction"] or 0) >= min_area_fraction for r in rows])
    lesion = np.array([r["label"] != "normal" for r in rows])
    confidence = np.array([float(r["lesion_mask_confidence"] or 0) for r in rows])
    dice = np.array([float(r["dice"]) if r["dice"] else np.nan for r in rows])
    shown = np.array([r["lesion_found"] == "True" for r in rows]) & np.isfinite(dice)
    return {"auc_normal_vs_lesion": auc_or_none(~lesion, pn), "n_normal": int((~lesion).sum()), "n_lesion": int(lesion.sum()),
            # the mask's mean lesion probability as a presence score (the site calibration's confidence floor)
            "auc_mask_confidence": auc_or_none(lesion, confidence),
            "masks_on_lesions": float(has_mask[lesion].mean()),
            # the outline's quality where one is shown, apart from the lesions given none (Dice 0 in metrics.json)
            "dice_where_given": float(dice[shown].mean()) if shown.any() else None,
            f"at_sensitivity_{sensitivity}": cut_for_sensitivity(pn, has_mask, lesion, sensitivity)}


def add_held_out_arguments(ap: argparse.ArgumentParser) -> None:
    """``--index``, ``--out`` and ``--drop-label-conflict``: how the lab tools that run a network
    on a held-out index (``held_out_index``) are told which."""
    ap.add_argument("--index", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--drop-label-conflict", action="store_true")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("job_dir", type=Path)
    add_held_out_arguments(ap)
    ap.add_argument("--expected-normal-fraction", type=float, default=0.4)
    ap.add_argument("--image-size", type=int, default=None,
                    help="default: the size the job trained at (its model.pt, else its run's config.yaml)")
    ap.add_argument("--presence-from", type=Path, default=None,
                    help="a model.json whose lesion_presence rule to use (default: floor 0.2 %%, cut 0.5, mask at 0.5)")
    ap.add_argument("--members", type=Path, nargs="*", default=[],
                    help="further job folders of the same network: evaluate the mean of all as an ensemble")
    ap.add_argument("--mask-threshold", type=float, default=None,
                    help="the lesion probability at which the rule's detection mask is drawn (the outline stays at 0.5)")
    ap.add_argument("--second-look", type=float, default=None, metavar="FRACTION",
                    help="a second, zoomed look at each found lesion (models.second_look) at this fraction")
    ap.add_argument("--scope-bank", type=Path, default=None,
                    help="a scope bank built for this job's network (scope_bank --weights DIR/weights --reference ...): "
                         "the scope gate then runs, and not_assessed_rate counts its refusals")
    a = ap.parse_args()
    rule = presence_from(a.presence_from) or PresenceRule().to_dict()
    if a.mask_threshold is not None:
        rule = {**rule, "mask_threshold": a.mask_threshold}
    wdir = job_weights(a.job_dir, a.out / "weights", a.image_size, presence=rule, members=a.members,
                       second_look=None if a.second_look is None else {"fraction": a.second_look})
    index = held_out_index(a.index, a.out / "index.csv", a.drop_label_conflict)
    if a.scope_bank is not None:
        shutil.copy(a.scope_bank, wdir / BANK_FILE)
    analyzer = Analyzer.load(wdir, device="cpu", expected_normal_fraction=a.expected_normal_fraction,
                             scope_gate=a.scope_bank is not None)
    m = evaluate_index(index, a.out, analyzer=analyzer)
    print(json.dumps({k: m.get(k) for k in KEYS}))
    full_res = analyzer_tradeoff(a.out / "predictions.csv", float(rule["min_area_fraction"]))
    (a.out / "analyzer_tradeoff.json").write_text(json.dumps({"mask_threshold": rule.get("mask_threshold", 0.5),
                                                              **full_res}, indent=2))
    print(json.dumps(full_res))
    if (a.job_dir / "preds.npz").exists():
        trade = presence_tradeoff(a.job_dir / "preds.npz", a.expected_normal_fraction)
        (a.out / "presence_tradeoff.json").write_text(json.dumps(trade, indent=2))
        print(json.dumps(trade))


if __name__ == "__main__":
    main()
