"""Out-of-fold predictions of the shipped Analyzer's form, for a recipe whose Analyzer does more
than one pass of the network (``ship.second_look``).

A cv job's ``preds.npz`` holds its network's logits on the packed frames of its held-out images:
the first look. Where the recipe ships a second look, the Analyzer reports the mean of the field's
and the crop's logits, so a calibration fitted on the first look's logits would be applied to
logits of another kind. With ``calibration.fit_on: analyzer`` finalize fits the calibration, the
operating points and the presence rule's P(normal) cut on these logits instead: each cv job's
network alone, through the Analyzer exactly as ``evaluate`` runs it (the one cleaning path, the
reported field, image and mirror, the recipe's second look), on the images of its ``preds.npz``.

    python -m sonopacs.training.analyzer_oof --config CONFIG [--out runs/RUN] [--jobs cv0,cv1]

writes ``jobs/cvK/preds_analyzer.npz`` (finalize writes any that are missing itself).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from sonopacs.models.analyzer import Analyzer
from sonopacs.models.data import Record, load_image, load_mask, read_index
from sonopacs.models.evaluation import analyse_image
from sonopacs.models.metrics import auc_or_none, dice_iou
from sonopacs.models.presence import PresenceRule
from sonopacs.training.job_eval import job_weights
from sonopacs.training.recipe import load_config

log = logging.getLogger(__name__)

PREDS_NAME = "preds_analyzer.npz"


def detection_threshold(cfg: dict[str, Any]) -> float:
    """The recipe's one detection threshold: the second look crops around the mask drawn at it,
    so the logits depend on it, and it must be fixed before the rule is fitted on them."""
    thresholds = [float(t) for t in (cfg.get("calibration") or {}).get("mask_thresholds") or [0.5]]
    if len(thresholds) != 1:
        raise ValueError("calibration.fit_on: analyzer needs one calibration.mask_thresholds value, "
                         f"not {thresholds}: the second look crops around the mask drawn at it")
    return thresholds[0]


def job_analyzer(job_dir: Path, cfg: dict[str, Any]) -> Analyzer:
    """A cv job's network alone, as the recipe ships it (half precision, its second look, its
    detection threshold), uncalibrated and without a scope gate: every held-out image is scored."""
    # every detection mask over the floor is a lesion (no P(normal) cut: the cut is fitted afterwards,
    # on these logits); the logits do not depend on it, the summary's lesion and outline figures do
    rule = PresenceRule(mask_threshold=detection_threshold(cfg), max_p_normal=1.0).to_dict()
    wdir = job_weights(job_dir, job_dir / "analyzer_weights", int(cfg["data"]["image_size"]), name=str(cfg["name"]),
                       version=str(cfg["version"]), presence=rule,
                       second_look=(cfg.get("ship") or {}).get("second_look"))
    return Analyzer.load(wdir, device="cpu", scope_gate=False)


def records_by_name(cfg: dict[str, Any]) -> dict[tuple[str, str], Record]:
    """Every index row of the recipe's datasets by (dataset, file name): the key a pack keeps."""
    out: dict[tuple[str, str], Record] = {}
    for ds in cfg["data"]["datasets"]:
        for rec in read_index(Path(ds["index"]), ds["name"], ds.get("group_column")):
            key = (str(ds["name"]), rec.image.name)
            if key in out:
                raise ValueError(f"{ds['index']}: two rows name {rec.image.name}; a pack cannot tell them apart")
            out[key] = rec
    return out


def analyzer_preds(job_dir: Path, cfg: dict[str, Any], records: dict[tuple[str, str], Record]
                   ) -> dict[str, np.ndarray]:
    """The Analyzer's outputs on the job's held-out images, in its ``preds.npz`` order: the raw
    (uncalibrated) logits it reports, the detection mask's share of the frame, whether a lesion was
    given (that mask over the rule's floor) and looked at again, and the Dice of the outline it
    shows (NaN without a true lesion)."""
    preds = np.load(job_dir / "preds.npz")
    analyzer = job_analyzer(job_dir, cfg)
    n = len(preds["labels"])
    logits = np.zeros((n, 3), np.float64)
    dice = np.full(n, np.nan)
    given, looked, assessed = np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool)
    area = np.zeros(n)
    for i, (ds, name) in enumerate(zip(preds["datasets"], preds["names"], strict=True)):
        rec = records[(str(ds), str(name))]
        img = load_image(rec.image)
        res, truth = analyse_image(analyzer, img, load_mask(rec.masks, img.shape[:2]))
        logits[i] = res.extra["logits"]
        assessed[i] = res.assessed
        given[i] = res.assessed and bool(res.mask.any())
        looked[i] = res.extra.get("second_look") is not None
        area[i] = res.extra.get("lesion_area_fraction") or 0.0
        if truth.any():
            dice[i] = dice_iou(res.mask, truth)[0]
    log.info("%s: %d held-out images through the Analyzer, %d looked at again", job_dir.name, n, int(looked.sum()))
    return {"index": preds["index"], "labels": preds["labels"], "datasets": preds["datasets"],
            "names": preds["names"], "logits": logits, "dice_shown": dice, "lesion_given": given,
            "second_look": looked, "assessed": assessed, "lesion_area_fraction": area}


def analyzer_settings(cfg: dict[str, Any]) -> str:
    """What of the recipe the Analyzer's logits depend on, as stored beside them."""
    return json.dumps({"image_size": int(cfg["data"]["image_size"]), "mask_threshold": detection_threshold(cfg),
                       "second_look": (cfg.get("ship") or {}).get("second_look")}, sort_keys=True)


def load_or_write(job_dir: Path, cfg: dict[str, Any], records: dict[tuple[str, str], Record] | None = None
                  ) -> dict[str, np.ndarray]:
    """The job's ``preds_analyzer.npz``, written first where missing, older than its network, or
    made for other settings (another second look or detection threshold gives other logits)."""
    path = job_dir / PREDS_NAME
    wanted = analyzer_settings(cfg)
    if path.exists() and path.stat().st_mtime >= (job_dir / "model.pt").stat().st_mtime:
        kept = dict(np.load(path))
        if str(kept.get("settings", "")) == wanted:
            return kept
    seen: dict[str, Any] = analyzer_preds(job_dir, cfg, records if records is not None else records_by_name(cfg))
    np.savez_compressed(path, settings=np.array(wanted), **seen)
    return dict(np.load(path))


def with_analyzer_logits(preds: dict[str, np.ndarray], analyzer: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A job's predictions with the Analyzer's logits in place of the network's; refused unless both
    describe the same images in the same order."""
    if not np.array_equal(preds["index"], analyzer["index"]) or not np.array_equal(preds["names"], analyzer["names"]):
        raise ValueError("the Analyzer's out-of-fold predictions are not of this job's held-out images: "
                         f"delete {PREDS_NAME} and run finalize again")
    return {**preds, "logits": analyzer["logits"]}


def summary(parts: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """What the Analyzer itself showed out of fold, per dataset: lesion images and normal images
    given a lesion (a detection mask over the floor, before any P(normal) cut), the Dice of the
    outline shown, benign-vs-malignant AUC of its raw logits, and how many images were looked at again."""
    d = {k: np.concatenate([p[k] for p in parts]) for k in ("labels", "datasets", "logits", "dice_shown",
                                                             "lesion_given", "second_look")}
    out: dict[str, Any] = {}
    for name in ["all", *sorted(set(d["datasets"].tolist()))]:
        sel = np.ones(len(d["labels"]), bool) if name == "all" else d["datasets"] == name
        lab, lesion = d["labels"][sel], d["labels"][sel] > 0
        dice = d["dice_shown"][sel][lesion]
        margin = d["logits"][sel][:, 2] - d["logits"][sel][:, 1]
        out[name] = {
            "n_images": int(sel.sum()),
            "lesion_sensitivity": float(d["lesion_given"][sel][lesion].mean()) if lesion.any() else None,
            "normal_false_lesion_rate": float(d["lesion_given"][sel][~lesion].mean()) if (~lesion).any() else None,
            "dice_shown": float(np.nanmean(dice)) if np.isfinite(dice).any() else None,
            "auc_benign_vs_malignant_raw": auc_or_none(lab[lesion] == 2, margin[lesion]) if lesion.any() else None,
            "second_looks": int(d["second_look"][sel].sum()),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=None, help="the run folder (default: the config's out_dir)")
    ap.add_argument("--jobs", default=None, help="comma-separated cv jobs (default: every cv job with a preds.npz)")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(a.config)
    run = a.out or Path(cfg.get("out_dir", "runs/" + a.config.stem))
    names = a.jobs.split(",") if a.jobs else sorted(p.parent.name for p in (run / "jobs").glob("cv*/preds.npz"))
    records = records_by_name(cfg)
    parts = [load_or_write(run / "jobs" / name, cfg, records) for name in names]
    print(summary(parts))


if __name__ == "__main__":
    main()
