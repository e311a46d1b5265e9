"""``sonopacs train --config FILE``: cross-validation, final model, cross-dataset runs, calibration.

A config lists *jobs*: ``cv`` (k group/patient-aware folds giving out-of-fold predictions),
``final`` (all data, the shipped model) and ``cross`` (train on one dataset, test on another).
Each job is independent and seeded, so ``python -m sonopacs.training.train --jobs cv0,cv1`` may run jobs
in parallel processes; ``train_from_config`` runs them one after another, then ``finalize`` fits
the temperature and operating points on the out-of-fold predictions and writes the weights folder.
After every epoch a job writes ``jobs/NAME/checkpoint.pt`` (``EpochCheckpoint``); the same command
run again resumes an interrupted job from it, and a finished job removes it.
"""

from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from sonopacs.models.data import Packed, build_pack, concat_packs, load_pack, read_index, save_pack
from sonopacs.models.lesion_shape import shape_feature_matrix
from sonopacs.models.measure import lesion_mask
from sonopacs.models.metrics import dice_iou, withhold_masks
from sonopacs.models.networks import SonoNet, build_network
from sonopacs.training.augment import Augmenter
from sonopacs.training.normal_crops import (
    add_crops_to_train,
    crop_settings,
    is_crop,
    load_or_build_crops,
    wants_crops,
)
from sonopacs.training.presence_loss import presence_loss
from sonopacs.training.recipe import load_config
from sonopacs.training.synthetic import stamp_bank

log = logging.getLogger(__name__)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_data(cfg: dict[str, Any]) -> Packed:
    """All datasets of the config, from their packs (built and saved on first use)."""
    size = int(cfg["data"]["image_size"])
    packs = []
    for ds in cfg["data"]["datasets"]:
        pack_path = Path(ds["pack"]) if ds.get("pack") else None
        if pack_path is not None and pack_path.exists():
            packs.append(load_pack(pack_path))
            continue
        recs = read_index(Path(ds["index"]), ds["name"], ds.get("group_column"))
        p = build_pack(recs, size)
        if pack_path is not None:
            save_pack(p, pack_path)
            p = load_pack(pack_path)  # train on exactly what a later run will read
        packs.append(p)
    crops = crop_settings(cfg)
    if crops is not None:  # opt-in: lesion-free crops as extra normals (training sides only, see make_jobs)
        packs += [load_or_build_crops(ds, None, crops, size) for ds in cfg["data"]["datasets"] if wants_crops(ds, crops)]
    return concat_packs(packs)


def eligible(data: Packed, cfg: dict[str, Any]) -> np.ndarray:
    """Images that may be split into jobs (normal crops are not: they join training sides only)."""
    keep = (data.labels >= 0) & ~is_crop(data)
    if cfg["data"].get("drop_label_conflict", True):
        keep &= ~data.conflicts
    return np.flatnonzero(keep)


def _strata(data: Packed, idx: np.ndarray) -> np.ndarray:
    ds = {d: i for i, d in enumerate(sorted(set(data.datasets.tolist())))}
    return np.array([data.labels[i] * 10 + ds[data.datasets[i]] for i in idx])


def group_folds(data: Packed, idx: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` folds of ``idx`` as (train, test) indices: every group in one fold, stratified by
    class x dataset."""
    sgkf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(idx[tr], idx[te]) for tr, te in sgkf.split(idx, _strata(data, idx), data.groups[idx])]


def cross_fold_jobs(data: Packed, name: str, train: np.ndarray, test: np.ndarray, folds: int, seed: int
                    ) -> dict[str, dict[str, np.ndarray]]:
    """``NAME_f0`` .. ``NAME_f{folds-1}``: the cross job trained on each ``(folds-1)/folds`` of its
    training dataset (by group), each tested on the whole other dataset.

    Why: the shipped fold models (``cv0``..) each see part of the data; these are their
    leave-one-dataset-out counterparts, so a fold ensemble can be judged at the unseen site."""
    if folds < 2:
        raise ValueError(f"{name}: folds must be at least 2, not {folds}")
    return {f"{name}_f{f}": {"train": tr, "test": test} for f, (tr, _) in enumerate(group_folds(data, train, folds, seed))}


def make_jobs(data: Packed, cfg: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """Job name -> {train, test} indices; every split is by group (near-duplicate set / patient)."""
    idx = eligible(data, cfg)
    jobs: dict[str, dict[str, np.ndarray]] = {}
    kinds = cfg.get("jobs", ["cv", "final"])
    if "cv" in kinds:
        for f, (tr, te) in enumerate(group_folds(data, idx, int(cfg["cv"]["folds"]), int(cfg["seed"]))):
            jobs[f"cv{f}"] = {"train": tr, "test": te}
    if "final" in kinds:
        jobs["final"] = {"train": idx, "test": idx[:0]}
    if "cross" in kinds:
        for c in cfg.get("cross", []):
            name = f"cross_{c['train']}_to_{c['test']}"
            train, test = idx[data.datasets[idx] == c["train"]], idx[data.datasets[idx] == c["test"]]
            jobs[name] = {"train": train, "test": test}
            if int(c.get("folds", 0)):
                jobs.update(cross_fold_jobs(data, name, train, test, int(c["folds"]), int(cfg["seed"])))
    add_crops_to_train(data, jobs)  # no-op unless data.normal_crops packed some
    for j in jobs.values():  # guard the one rule that makes validation honest
        assert not set(data.groups[j["train"]]) & set(data.groups[j["test"]]), "group leak"
    return jobs


def inner_split(data: Packed, train: np.ndarray, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out ~frac of the training groups for early stopping (never the job's test set)."""
    n_splits = max(2, round(1 / frac))
    sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    try:
        fit, val = next(iter(sgkf.split(train, _strata(data, train), data.groups[train])))
    except ValueError:  # too few samples per class to stratify (tiny data): random groups
        fit, val = next(iter(GroupShuffleSplit(1, test_size=frac, random_state=seed).split(
            train, groups=data.groups[train])))
    return train[fit], train[val]


def class_weights(labels: np.ndarray, mode: str) -> torch.Tensor:
    counts = np.bincount(labels, minlength=3).astype(np.float64)
    if mode != "balanced":
        return torch.ones(3)
    present = counts > 0
    w = np.zeros(3)
    w[present] = counts[present].sum() / (present.sum() * counts[present])
    return torch.tensor(w, dtype=torch.float32)


@torch.no_grad()
def predict(net: SonoNet, images: torch.Tensor, batch: int = 128, tta: bool = True
            ) -> tuple[np.ndarray, np.ndarray]:
    """Class logits (N x 3) and lesion probability maps (N x S x S), averaged over a flip TTA."""
    net.eval()
    dev = next(net.parameters()).device
    logits, probs = [], []
    for s in range(0, len(images), batch):
        x = images[s : s + batch].to(dev).float()[:, None] / 255.0
        x = x.contiguous(memory_format=torch.channels_last)
        views = [x, x.flip(-1)] if tta else [x]
        lg: torch.Tensor | float = 0.0
        pr: torch.Tensor | float = 0.0
        for v, xv in enumerate(views):
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                lo, seg = net(xv)
            p = torch.softmax(seg.float(), dim=1)[:, 1]
            lg = lg + lo.float() / len(views)
            pr = pr + (p.flip(-1) if v else p) / len(views)
        logits.append(torch.as_tensor(lg).cpu())
        probs.append(torch.as_tensor(pr).cpu())
    return torch.cat(logits).numpy(), torch.cat(probs).numpy()


# the mask thresholds each job's held-out predictions are measured at, for finalize to fit the
# presence rule's ``mask_threshold`` over (``calibration.mask_thresholds`` picks among them)
MASK_THRESHOLD_GRID = (0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)


def _seg_scores(prob_maps: np.ndarray, masks: np.ndarray, threshold: float = 0.5
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image, the mask's share of the frame and Dice/IoU after the Analyzer's post-processing
    at ``threshold``, never withheld (NaN where the truth is empty); ``withhold_masks`` applies a
    label's gate."""
    area = np.zeros(len(masks))
    dice = np.full(len(masks), np.nan)
    iou = np.full(len(masks), np.nan)
    for i, (p, m) in enumerate(zip(prob_maps, masks, strict=True)):
        found = lesion_mask(p, threshold)
        area[i] = found.mean()
        if m.any():
            dice[i], iou[i] = dice_iou(found, m.astype(bool))
    return area, dice, iou


def validate(net: SonoNet, imgs: torch.Tensor, val: np.ndarray, data: Packed) -> dict[str, Any]:
    """The inner validation set's figures and the score that picks a job's best epoch:
    AUC(malignant) + mean Dice (mask withheld where the argmax says normal) - 0.25 x cross-entropy."""
    from sonopacs.models.metrics import auc_or_none

    v_logits, v_prob = predict(net, imgs[torch.from_numpy(val).to(imgs.device)], tta=False)
    v_lab = data.labels[val]
    v_pred = v_logits.argmax(1)
    v_dice = withhold_masks(_seg_scores(v_prob, data.masks[val])[1], v_pred)
    v_ce = float(F.cross_entropy(torch.from_numpy(v_logits), torch.from_numpy(v_lab)))
    v_auc = auc_or_none(v_lab == 2, torch.softmax(torch.from_numpy(v_logits), 1)[:, 2].numpy())
    mdice = float(np.nanmean(v_dice)) if np.isfinite(v_dice).any() else 0.0
    return {"val_ce": v_ce, "val_acc": float((v_pred == v_lab).mean()), "val_auc_malignant": v_auc,
            "val_dice": mdice, "val_score": (v_auc if v_auc is not None else 0.5) + mdice - 0.25 * v_ce}


def _lr_at(step: int, total: int, warm: int, base: float) -> float:
    if step < warm:
        return base * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def job_fingerprint(cfg: dict[str, Any], job_seed: int, fit: np.ndarray, val: np.ndarray) -> str:
    """What a checkpoint must match to be resumed: the recipe's network and training settings, the
    job's seed and its exact fit/validation split."""
    key = {"model": cfg["model"], "train": {k: v for k, v in cfg["train"].items() if k != "max_minutes"},
           "seed": job_seed, "fit": hashlib.sha256(np.sort(fit).tobytes()).hexdigest(),
           "val": hashlib.sha256(np.sort(val).tobytes()).hexdigest()}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def _numpy_rng_dict() -> dict[str, Any]:
    """numpy's global generator state in types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    return {"kind": str(kind), "keys": torch.from_numpy(np.array(keys, dtype=np.uint32).astype(np.int64)),
            "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}


def _numpy_rng_state(d: dict[str, Any]) -> tuple[Any, ...]:
    return (d["kind"], d["keys"].numpy().astype(np.uint32), d["pos"], d["has_gauss"], d["cached"])


class EpochCheckpoint:
    """The whole training state after each epoch (network, optimiser, random generators, best
    epoch so far, log rows), so that an interrupted job resumes instead of starting over: on the
    2-core CPU a job is an hour. Written atomically; one for another recipe or split is refused."""

    def __init__(self, path: Path, fingerprint: str) -> None:
        self.path, self.fingerprint = path, fingerprint

    def save(self, state: dict[str, Any]) -> None:
        tmp = self.path.with_suffix(".tmp")
        torch.save({**state, "fingerprint": self.fingerprint}, tmp)
        tmp.replace(self.path)

    def load(self) -> dict[str, Any]:
        st: dict[str, Any] = torch.load(self.path, map_location="cpu", weights_only=True)
        if st.get("fingerprint") != self.fingerprint:
            raise ValueError(f"{self.path} belongs to another recipe, seed or split: delete it to train this job anew")
        return st


def network_record(cfg: dict[str, Any]) -> dict[str, Any]:
    """What a job's ``model.pt`` records of the network beside its weights: the model config (to
    build it) and the image size it trained at (``job_eval`` runs it at that size)."""
    return {"model": cfg["model"], "image_size": int(cfg["data"]["image_size"])}


def train_job(name: str, split: dict[str, np.ndarray], data: Packed, cfg: dict[str, Any],
              device: torch.device, out_dir: Path, job_seed: int) -> None:
    """Train one job with early stopping on an inner group split; save model, log and test preds."""
    tcfg = cfg["train"]
    jdir = out_dir / "jobs" / name
    jdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(job_seed)
    np.random.seed(job_seed % 2**32)
    fit, val = inner_split(data, split["train"], float(tcfg.get("inner_val_fraction", 0.12)), job_seed)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    imgs = torch.from_numpy(data.images).to(device)
    msks = torch.from_numpy(data.masks).to(device)
    labs = torch.from_numpy(data.labels).to(device)
    # channels-last on the CPU too: ~1.5x faster training steps there (EfficientNet-Lite0, 160 px)
    net = build_network(cfg["model"]).to(device).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    size = data.images.shape[-1]
    g = torch.Generator(device=device)
    g.manual_seed(job_seed)
    stamps = torch.from_numpy(stamp_bank(int(tcfg.get("n_stamps", 256)), size, job_seed)).to(device)
    aug = Augmenter(tcfg.get("augment", {}), stamps, g)
    opt = torch.optim.AdamW(net.parameters(), lr=float(tcfg["lr"]), weight_decay=float(tcfg["weight_decay"]))
    cw = class_weights(data.labels[fit], tcfg.get("class_weights", "balanced")).to(device)
    seg_loss = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    presence_weight = float(tcfg.get("presence_weight", 0.0))
    presence_top = float(tcfg.get("presence_top_fraction", 0.005))
    bs = min(int(tcfg["batch_size"]), len(fit))
    steps_per_epoch = max(1, len(fit) // bs)
    epochs = int(tcfg["epochs"])
    total = epochs * steps_per_epoch
    warm = int(tcfg.get("warmup_epochs", 1)) * steps_per_epoch
    amp = cuda and tcfg.get("amp", "bf16") == "bf16"
    cpu_gen = torch.Generator().manual_seed(job_seed)
    best: tuple[float, int, dict[str, torch.Tensor]] = (-1e9, -1, {})
    rows: list[dict[str, Any]] = []
    patience, min_epochs = int(tcfg.get("patience", 20)), int(tcfg.get("min_epochs", 0))
    step = 0
    t_start, stopped_by_clock, finished = time.time(), False, False
    ckpt = EpochCheckpoint(jdir / "checkpoint.pt", job_fingerprint(cfg, job_seed, fit, val))
    start_ep = 0
    # opt-in: the running mean of the weights after every step from epoch ``from_epoch`` on, written
    # beside the best epoch's network as ``averaged/`` (it does not change the training itself)
    avg_from = int((tcfg.get("weight_average") or {}).get("from_epoch", 0))
    avg = AveragedModel(net, use_buffers=True) if avg_from else None
    if ckpt.path.exists():  # resume an interrupted job where its last finished epoch left it
        st = ckpt.load()
        net.load_state_dict(st["net"])
        opt.load_state_dict(st["opt"])
        torch.set_rng_state(st["rng_torch"])
        np.random.set_state(_numpy_rng_state(st["rng_numpy"]))
        cpu_gen.set_state(st["rng_cpu_gen"])
        g.set_state(st["rng_aug"])
        best, rows, step = (st["best_score"], st["best_epoch"], st["best_state"]), st["rows"], int(st["step"])
        start_ep, stopped_by_clock, finished = int(st["epoch"]), bool(st["stopped_by_clock"]), bool(st["finished"])
        if avg is not None and st.get("avg_state") is not None:
            avg.load_state_dict(st["avg_state"])
        t_start -= float(st["seconds"])
        log.info("%s: resumed after epoch %d (best %d)", name, start_ep, best[1])
    bar = tqdm(range(start_ep, 0 if finished else epochs), desc=name, disable=None)
    for ep in bar:
        net.train()
        t0 = time.time()
        perm = torch.from_numpy(fit)[torch.randperm(len(fit), generator=cpu_gen)].to(device)
        tot: dict[str, torch.Tensor | float] = {"loss": 0.0, "cls": 0.0, "seg": 0.0, "presence": 0.0}
        for s in range(steps_per_epoch):
            b = perm[s * bs : (s + 1) * bs]
            x = imgs[b].float()[:, None] / 255.0
            y = msks[b].float()[:, None]
            x, y = aug(x, y)
            x = x.contiguous(memory_format=torch.channels_last)
            for pg in opt.param_groups:
                pg["lr"] = _lr_at(step, total, warm, float(tcfg["lr"]))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits, seg = net(x)
            lc = F.cross_entropy(logits.float(), labs[b], weight=cw,
                                 label_smoothing=float(tcfg.get("label_smoothing", 0.0)))
            ls = seg_loss(seg.float(), y)
            loss = float(tcfg.get("cls_weight", 1.0)) * lc + float(tcfg.get("seg_weight", 1.0)) * ls
            if presence_weight:  # opt-in: empty masks on images without a lesion (training/presence_loss.py)
                lp = presence_loss(seg.float(), y, presence_top)
                loss = loss + presence_weight * lp
                tot["presence"] += lp.detach()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if avg is not None and ep + 1 >= avg_from:
                avg.update_parameters(net)
            tot["loss"] += loss.detach()
            tot["cls"] += lc.detach()
            tot["seg"] += ls.detach()
        v = validate(net, imgs, val, data)
        row = {"epoch": ep + 1, "lr": _lr_at(step - 1, total, warm, float(tcfg["lr"])),
               **{f"train_{k}": float(x) / steps_per_epoch for k, x in tot.items()},
               **v, "seconds": time.time() - t0}
        rows.append(row)
        if v["val_score"] > best[0]:
            best = (v["val_score"], ep + 1, copy.deepcopy({k: x.detach().cpu() for k, x in net.state_dict().items()}))
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", auc=f"{v['val_auc_malignant'] or 0:.3f}",
                        dice=f"{v['val_dice']:.3f}", best=best[1])
        with (jdir / "log.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        recorded_stop = (tcfg.get("stop_after_epochs") or {}).get(name)
        if recorded_stop is not None and ep + 1 >= int(recorded_stop):
            log.info("%s: stopping after epoch %d as the config records", name, ep + 1)
            finished = True
        elif ep + 1 < epochs and time.time() - t_start > 60 * float(tcfg.get("max_minutes", 1e9)):
            log.warning("%s: wall-clock limit reached at epoch %d", name, ep + 1)
            stopped_by_clock = finished = True
        elif ep + 1 >= min_epochs and ep + 1 - best[1] >= patience:
            log.info("%s: early stop at epoch %d (best %d)", name, ep + 1, best[1])
            finished = True
        ckpt.save({"epoch": ep + 1, "step": step, "net": net.state_dict(), "opt": opt.state_dict(),
                   "rng_torch": torch.get_rng_state(), "rng_numpy": _numpy_rng_dict(),
                   "rng_cpu_gen": cpu_gen.get_state(), "rng_aug": g.get_state(), "best_score": best[0],
                   "best_epoch": best[1], "best_state": best[2], "rows": rows, "seconds": time.time() - t_start,
                   "stopped_by_clock": stopped_by_clock, "finished": finished,
                   "avg_state": avg.state_dict() if avg is not None else None})
        if finished:
            break
    net.load_state_dict(best[2])
    torch.save({"state_dict": best[2], "best_epoch": best[1], **network_record(cfg)}, jdir / "model.pt")
    test = split["test"]
    info = {"job": name, "best_epoch": best[1], "epochs_run": len(rows), "n_fit": len(fit),
            "n_val": len(val), "n_test": len(test), "seed": job_seed, "device": str(device),
            "stopped_by_clock": stopped_by_clock, "minutes": (time.time() - t_start) / 60}
    if len(test):
        write_test_predictions(net, imgs, test, data, jdir)
    (jdir / "info.json").write_text(json.dumps(info, indent=2))
    if avg is not None and int(avg.n_averaged) > 0:
        save_averaged(avg, avg_from, imgs, val, test, data, cfg, jdir / "averaged", info)
    ckpt.path.unlink(missing_ok=True)  # the job is complete: model.pt, log.csv, info.json and preds.npz say all of it


def save_averaged(avg: AveragedModel, from_epoch: int, imgs: torch.Tensor, val: np.ndarray, test: np.ndarray,
                  data: Packed, cfg: dict[str, Any], adir: Path, job_info: dict[str, Any]) -> None:
    """The weight-averaged network as a job folder of its own (``model.pt``, ``info.json`` with its
    inner-validation figures, ``preds.npz``), which ``job_eval`` and ``site_trial`` take as they take
    a job; finalize reads only the job folders themselves, so it never enters the out-of-fold pool.
    No epoch is picked, which is the point at an unseen site."""
    adir.mkdir(parents=True, exist_ok=True)
    net: SonoNet = avg.module  # type: ignore[assignment]
    state = {k: x.detach().cpu() for k, x in net.state_dict().items()}
    torch.save({"state_dict": state, "best_epoch": None, "averaged_from_epoch": from_epoch,
                "n_averaged": int(avg.n_averaged), **network_record(cfg)}, adir / "model.pt")
    info = {**job_info, "best_epoch": None, "averaged_from_epoch": from_epoch, "n_averaged": int(avg.n_averaged),
            **validate(net, imgs, val, data)}
    if len(test):
        write_test_predictions(net, imgs, test, data, adir)
    (adir / "info.json").write_text(json.dumps(info, indent=2))


def write_test_predictions(net: SonoNet, imgs: torch.Tensor, test: np.ndarray, data: Packed, jdir: Path) -> None:
    """The held-out set's logits, lesion-shape features and per-image Dice/IoU, ``preds.npz``.

    ``dice``/``iou`` withhold the mask where the uncalibrated argmax says normal; ``dice_ungated``
    /``iou_ungated`` never do, so finalize can gate by the calibrated label, as the Analyzer does.
    ``area_by_threshold``/``dice_by_threshold``/``iou_by_threshold`` (images x ``mask_thresholds``):
    the same mask drawn at each threshold of ``MASK_THRESHOLD_GRID``, ungated.
    """
    t_logits, t_prob = predict(net, imgs[torch.from_numpy(test).to(imgs.device)])
    truth = data.masks[test]
    by_t = [_seg_scores(t_prob, truth, t) for t in MASK_THRESHOLD_GRID]
    _, dice_all, iou_all = by_t[MASK_THRESHOLD_GRID.index(0.5)]
    gate = t_logits.argmax(1)
    np.savez_compressed(jdir / "preds.npz", index=test, logits=t_logits, labels=data.labels[test],
                        datasets=data.datasets[test], names=data.names[test], groups=data.groups[test],
                        dice=withhold_masks(dice_all, gate), iou=withhold_masks(iou_all, gate),
                        dice_ungated=dice_all, iou_ungated=iou_all, shape_features=shape_feature_matrix(t_prob),
                        truth_area_fraction=truth.reshape(len(test), -1).mean(axis=1),
                        mask_thresholds=np.array(MASK_THRESHOLD_GRID),
                        area_by_threshold=np.stack([a for a, _, _ in by_t], axis=1),
                        dice_by_threshold=np.stack([d for _, d, _ in by_t], axis=1),
                        iou_by_threshold=np.stack([i for _, _, i in by_t], axis=1))


def repredict_jobs(cfg: dict[str, Any], out_dir: Path, device: torch.device, only: list[str] | None = None) -> None:
    """Rewrite each trained job's ``preds.npz`` from its saved ``model.pt`` (same held-out set),
    e.g. to add what an older run did not store."""
    data = load_data(cfg)
    imgs = torch.from_numpy(data.images).to(device)
    for name, split in make_jobs(data, cfg).items():
        jdir = out_dir / "jobs" / name
        if (only is not None and name not in only) or not len(split["test"]) or not (jdir / "model.pt").exists():
            continue
        ck = torch.load(jdir / "model.pt", map_location=device, weights_only=True)
        net = build_network(ck.get("model", cfg["model"])).to(device).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        net.load_state_dict(ck["state_dict"])
        write_test_predictions(net, imgs, split["test"], data, jdir)
        log.info("job %s: re-predicted %d held-out images", name, len(split["test"]))


def run_jobs(cfg: dict[str, Any], out_dir: Path, device: torch.device, only: list[str] | None = None) -> None:
    data = load_data(cfg)
    jobs = make_jobs(data, cfg)
    names = list(jobs)
    for i, name in enumerate(names):
        if only is not None and name not in only:
            continue
        log.info("job %s: %d train, %d test", name, len(jobs[name]["train"]), len(jobs[name]["test"]))
        train_job(name, jobs[name], data, cfg, device, out_dir, int(cfg["seed"]) + 1000 * i)


def train_from_config(config_path: Path, out_dir: Path | None = None, device: str = "auto",
                      overrides: list[str] | None = None) -> None:
    """Run every job of the config in this process, then calibrate and write the weights folder.

    ``overrides`` (``train.epochs=N``) are recorded in the manifest, e.g. the epochs that a
    time-budgeted GPU run settled on (``sonopacs.training.parallel --minutes``)."""
    cfg = load_config(config_path, overrides)
    out = Path(out_dir or cfg.get("out_dir", "runs/" + Path(config_path).stem))
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(config_path, out / "config.yaml")
    run_jobs(cfg, out, resolve_device(device))
    from sonopacs.training.finalize import finalize

    finalize(cfg, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", required=True)
    ap.add_argument("--out")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--jobs", help="comma-separated job names (default: all, then finalize)")
    ap.add_argument("--finalize-only", action="store_true")
    ap.add_argument("--repredict", action="store_true",
                    help="rewrite the jobs' held-out predictions from their saved models, then finalize")
    ap.add_argument("--list-jobs", action="store_true")
    ap.add_argument("--set", action="append", default=[], help="override, e.g. train.epochs=3")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(Path(a.config), a.set)
    out = Path(a.out or cfg.get("out_dir", "runs/" + Path(a.config).stem))
    if a.list_jobs:
        print(" ".join(make_jobs(load_data(cfg), cfg)))
        return
    from sonopacs.training.finalize import finalize

    if a.finalize_only:
        finalize(cfg, out)
    elif a.repredict:
        repredict_jobs(cfg, out, resolve_device(a.device), a.jobs.split(",") if a.jobs else None)
        finalize(cfg, out)
    elif a.jobs:
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(a.config, out / "config.yaml")
        run_jobs(cfg, out, resolve_device(a.device), a.jobs.split(","))
    else:
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(a.config, out / "config.yaml")
        run_jobs(cfg, out, resolve_device(a.device))
        finalize(cfg, out)


if __name__ == "__main__":
    main()
