"""Training smoke run on tiny synthetic data (CPU, a few steps) and the split rules."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
import yaml

from sonopacs.models.data import load_pack, read_index
from sonopacs.training.train import load_config, load_data, make_jobs, repredict_jobs, train_from_config


def make_synthetic_index(root: Path, n_per_class: int = 4, size: tuple[int, int] = (72, 96), seed: int = 0) -> Path:
    """Write PNG images/masks and an index.csv with a ``group`` column; return the CSV path."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = ["image,label,mask,group,label_conflict"]
    k = 0
    for label in ("normal", "benign", "malignant"):
        for i in range(n_per_class):
            img = (rng.gamma(2.0, 40.0, size)).clip(0, 255).astype(np.uint8)
            mask = np.zeros(size, np.uint8)
            if label != "normal":
                c = (int(rng.integers(30, 66)), int(rng.integers(25, 47)))
                ax = (int(rng.integers(10, 20)), int(rng.integers(6, 12)))
                cv2.ellipse(mask, c, ax, float(rng.uniform(0, 180)), 0, 360, 255, -1)
                img[mask > 0] = (img[mask > 0] * (0.3 if label == "malignant" else 0.6)).astype(np.uint8)
            name = f"{label}_{i}.png"
            cv2.imwrite(str(root / name), img)
            mname = ""
            if label != "normal":
                mname = f"{label}_{i}_mask.png"
                cv2.imwrite(str(root / mname), mask)
            rows.append(f"{name},{label},{mname},g{k // 2},0")
            k += 1
    (root / "index.csv").write_text("\n".join(rows) + "\n")
    return root / "index.csv"


def write_smoke_config(root: Path, index_csv: Path, pack: bool = True) -> Path:
    cfg = f"""name: smoke
version: 0.0.0
seed: 1
out_dir: {root / 'run'}
data:
  image_size: 64
  drop_label_conflict: true
  datasets:
    - name: synth
      index: {index_csv}
      group_column: group
      pack: {root / 'pack.npz' if pack else ''}
model:
  backbone: resnet10
  decoder_channels: [32, 16, 8, 8, 8]
  dropout: 0.1
train:
  epochs: 2
  min_epochs: 1
  patience: 5
  batch_size: 4
  lr: 0.001
  weight_decay: 0.0001
  warmup_epochs: 1
  class_weights: balanced
  inner_val_fraction: 0.3
  n_stamps: 8
  augment: {{annotations: 0.5, elastic: 0.5, blur: 0.5, lowres: 0.5}}
cv:
  folds: 2
jobs: [cv, final]
calibration:
  high_sensitivity_target: 0.95
"""
    p = root / "smoke.yaml"
    p.write_text(cfg)
    return p



@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("smoke")
    cfg = write_smoke_config(root, make_synthetic_index(root / "data"))
    train_from_config(cfg, out_dir=root / "run", device="cpu")
    return root


def test_training_writes_checkpoints_logs_and_weights(smoke_run: Path) -> None:
    run = smoke_run / "run"
    size = yaml.safe_load((run / "config.yaml").read_text())["data"]["image_size"]
    for job in ("cv0", "cv1", "final"):
        assert (run / "jobs" / job / "model.pt").stat().st_size > 10_000
        assert torch.load(run / "jobs" / job / "model.pt", weights_only=True)["image_size"] == size  # job_eval reads it
        rows = list(csv.DictReader((run / "jobs" / job / "log.csv").open()))
        assert [int(r["epoch"]) for r in rows] == [1, 2]
        assert all(np.isfinite(float(r["train_loss"])) for r in rows)
    manifest = json.loads((run / "weights" / "model.json").read_text())
    ops = manifest["operating_points"]
    assert 0 <= ops["high_sensitivity"] <= ops["default"] <= 1
    assert manifest["temperature"] > 0
    report = json.loads((run / "report.json").read_text())
    assert report["oof"]["all"]["n_images"] == 12  # every eligible image is out-of-fold exactly once
    assert (smoke_run / "pack.npz").exists()


def test_smoke_weights_load_in_analyzer(smoke_run: Path) -> None:
    from sonopacs.models import Analyzer

    an = Analyzer.load(smoke_run / "run" / "weights", device="cpu")
    img = np.full((50, 70), 90, np.uint8)
    res = an.analyze(img)
    assert res.mask.shape == img.shape
    assert abs(sum(res.probabilities.values()) - 1) < 1e-6


def test_splits_keep_groups_together_and_drop_conflicts(tmp_path: Path) -> None:
    index = make_synthetic_index(tmp_path / "data")
    lines = index.read_text().splitlines()
    lines[1] = lines[1][:-1] + "1"  # first row: label_conflict=1
    index.write_text("\n".join(lines) + "\n")
    cfg = load_config(write_smoke_config(tmp_path, index))
    data = load_data(cfg)
    jobs = make_jobs(data, cfg)
    test_rows = np.concatenate([jobs["cv0"]["test"], jobs["cv1"]["test"]])
    assert sorted(test_rows.tolist()) == list(range(1, 12))  # row 0 dropped, the rest tested once
    for j in jobs.values():
        assert not set(data.groups[j["train"]]) & set(data.groups[j["test"]])
    assert load_pack(Path(cfg["data"]["datasets"][0]["pack"])).images.shape == (12, 64, 64)


def test_read_index_unions_masks_and_groups(tmp_path: Path) -> None:
    (tmp_path / "index.csv").write_text("image,label,mask,patient\na.png,benign,m1.png|m2.png,7\nb.png,normal,,\n")
    recs = read_index(tmp_path / "index.csv", "x", "patient")
    assert [len(r.masks) for r in recs] == [2, 0]
    assert recs[0].group == "x:7" and recs[1].group != recs[0].group
    assert recs[1].label == 0


def test_repredict_rebuilds_held_out_predictions_with_ungated_dice(smoke_run: Path, tmp_path: Path) -> None:
    """Re-predicting from the saved fold models gives the same logits, and stores the Dice of the
    masks that the uncalibrated gate withheld."""
    run = tmp_path / "run"
    shutil.copytree(smoke_run / "run", run)
    before = dict(np.load(run / "jobs" / "cv0" / "preds.npz"))
    (run / "jobs" / "cv0" / "preds.npz").unlink()
    repredict_jobs(load_config(smoke_run / "smoke.yaml"), run, torch.device("cpu"), ["cv0"])
    after = dict(np.load(run / "jobs" / "cv0" / "preds.npz"))
    assert np.array_equal(after["index"], before["index"])
    assert np.allclose(after["logits"], before["logits"], atol=1e-5)
    assert np.allclose(after["dice"], before["dice"], equal_nan=True)
    assert after["shape_features"].shape == (len(after["index"]), 7)
    assert np.allclose(after["shape_features"], before["shape_features"], atol=1e-4)
    lesion = np.isfinite(after["dice"])
    assert np.array_equal(np.isfinite(after["dice_ungated"]), lesion)
    assert (after["dice_ungated"][lesion] >= after["dice"][lesion]).all()
    # the mask at every threshold of the grid: lower thresholds draw masks at least as large, and
    # the 0.5 column is the Dice stored as dice_ungated
    k = list(after["mask_thresholds"]).index(0.5)
    assert after["area_by_threshold"].shape == (len(after["index"]), len(after["mask_thresholds"]))
    assert np.allclose(after["dice_by_threshold"][:, k], after["dice_ungated"], equal_nan=True)
    present = after["area_by_threshold"] > 0
    assert (present[:, :-1] >= present[:, 1:]).all()  # a component above t is above every lower t
    cv1 = Path("jobs") / "cv1" / "preds.npz"  # not asked for, left alone
    assert (run / cv1).read_bytes() == (smoke_run / "run" / cv1).read_bytes()


def test_shape_calibration_ships_and_the_analyzer_applies_it(smoke_run: Path, tmp_path: Path) -> None:
    """Finalize with ``temperature_bias_shape``: the manifest carries the feature layer, and the
    Analyzer's probabilities move exactly by the layer's term for the features it reports."""
    from sonopacs.models import Analyzer
    from sonopacs.models.lesion_shape import SHAPE_FEATURES
    from sonopacs.training.finalize import finalize

    run = tmp_path / "run"
    shutil.copytree(smoke_run / "run", run)
    cfg = load_config(smoke_run / "smoke.yaml")
    cfg["calibration"] = {**cfg["calibration"], "method": "temperature_bias_shape", "shape_l2": 0.001}
    report = finalize(cfg, run)
    assert report["calibration_method"] == "temperature_bias_shape"
    assert set(report["oof_nested_calibration"]["all"]) >= {"macro_f1", "specificity_malignant_high"}
    wdir = run / "weights"
    manifest = json.loads((wdir / "model.json").read_text())
    assert manifest["calibration"]["feature_names"] == list(SHAPE_FEATURES)
    img = np.full((72, 96), 120, np.uint8)
    cv2.ellipse(img, (48, 36), (18, 10), 20, 0, 360, 40, -1)
    res = Analyzer.load(wdir, device="cpu").analyze(img)
    shape = res.extra["lesion_shape"]
    assert isinstance(shape, dict) and list(shape) == list(SHAPE_FEATURES)

    w = np.array(manifest["calibration"]["feature_weights"])
    manifest["calibration"]["feature_weights"] = np.zeros_like(w).tolist()
    manifest["calibration"]["feature_names"] = []
    plain_dir = tmp_path / "plain"
    shutil.copytree(wdir, plain_dir)
    (plain_dir / "model.json").write_text(json.dumps(manifest))
    plain = Analyzer.load(plain_dir, device="cpu").analyze(img)
    assert "lesion_shape" not in plain.extra
    f = (np.array(list(shape.values())) - manifest["calibration"]["feature_mean"]) / manifest["calibration"]["feature_scale"]
    moved = np.log([res.probabilities[c] / plain.probabilities[c] for c in ("normal", "benign", "malignant")])
    term = f @ w.T - (f @ w.T)[0]
    assert abs(term).max() > 0.01  # the layer does move this image's probabilities
    assert moved - moved[0] == pytest.approx(term, abs=1e-6)


def test_dice_summary_gates_masks_by_the_given_label() -> None:
    from sonopacs.training.finalize import _seg_summary

    d = {"dice": np.array([0.0, np.nan, 0.5]), "iou": np.array([0.0, np.nan, 0.4]),
         "dice_ungated": np.array([0.9, np.nan, 0.5]), "iou_ungated": np.array([0.8, np.nan, 0.4])}
    every = np.ones(3, bool)
    assert _seg_summary(d, every, np.array([1, 0, 2])) == pytest.approx({"dice": 0.7, "iou": 0.6, "n_masks": 2})
    assert _seg_summary(d, every, np.array([0, 1, 2])) == pytest.approx({"dice": 0.25, "iou": 0.2, "n_masks": 2})
    old_run = {k: v for k, v in d.items() if not k.endswith("_ungated")}
    assert _seg_summary(old_run, every, np.array([1, 1, 2])) == pytest.approx({"dice": 0.25, "iou": 0.2, "n_masks": 2})


def test_errors_by_lesion_size_split_lesion_images_into_thirds() -> None:
    from sonopacs.training.finalize import by_lesion_size

    labels = np.array([0, 1, 2, 1, 2, 1, 2])
    area = np.array([0.0, 0.001, 0.002, 0.01, 0.02, 0.1, 0.2])
    probs = np.array([[0.8, 0.1, 0.1], [0.7, 0.2, 0.1], [0.6, 0.1, 0.3],  # normal; both small called normal
                      [0.1, 0.8, 0.1], [0.1, 0.3, 0.6], [0.1, 0.6, 0.3], [0.1, 0.2, 0.7]])
    d = {"labels": labels, "truth_area_fraction": area, "dice_ungated": np.r_[np.nan, np.full(6, 0.8)],
         "iou_ungated": np.r_[np.nan, np.full(6, 0.7)]}
    out = by_lesion_size(d, probs)
    assert [out[k]["n_images"] for k in ("small", "medium", "large")] == [2, 2, 2]
    assert out["small"]["called_normal"] == 1.0 and out["small"]["accuracy"] == 0.0
    assert out["small"]["dice"] == 0.0  # masks withheld where the label says normal
    assert out["large"]["accuracy"] == 1.0 and out["large"]["dice"] == pytest.approx(0.8)
    assert out["medium"]["auc_benign_vs_malignant"] == 1.0
    assert by_lesion_size({"labels": labels}, probs) == {}


def test_finalize_ships_the_fold_models_as_an_ensemble(smoke_run: Path, tmp_path: Path) -> None:
    """``ship.ensemble``: the listed jobs' networks are shipped beside the final one and the
    Analyzer averages all of them; ``ship.second_look`` goes into the manifest, checked."""
    from sonopacs.models import Analyzer
    from sonopacs.training.finalize import finalize

    run = tmp_path / "run"
    shutil.copytree(smoke_run / "run", run)
    cfg = load_config(smoke_run / "smoke.yaml")
    cfg["ship"] = {"ensemble": ["cv0", "cv1"], "second_look": {"fraction": 0.35}}
    finalize(cfg, run)
    manifest = json.loads((run / "weights" / "model.json").read_text())
    assert manifest["second_look"] == {"fraction": 0.35, "min_side": 48, "max_cover": 0.6}
    assert manifest["ensemble_members"] == ["member_1.pt", "member_2.pt"]
    assert manifest["ensemble_member_jobs"] == ["cv0", "cv1"]
    cv1 = torch.load(run / "jobs" / "cv1" / "model.pt", weights_only=True)["state_dict"]
    shipped = torch.load(run / "weights" / "member_2.pt", weights_only=True)
    assert all(torch.equal(shipped[k], v.half() if v.is_floating_point() else v) for k, v in cv1.items())
    img = np.full((50, 70), 90, np.uint8)
    assert Analyzer.load(run / "weights", device="cpu").analyze(img).extra["networks"] == 3


def test_cross_folds_split_the_training_dataset_by_group(tmp_path: Path) -> None:
    """A cross job with ``folds: K`` is also trained on each (K-1)/K of its training dataset, by
    group, and every fold is tested on the whole other dataset."""
    a = make_synthetic_index(tmp_path / "a", seed=1, n_per_class=6)
    b = make_synthetic_index(tmp_path / "b", seed=2)
    cfg = load_config(write_smoke_config(tmp_path, a))
    cfg["data"]["datasets"] = [{"name": "a", "index": str(a), "group_column": "group", "pack": ""},
                               {"name": "b", "index": str(b), "group_column": "group", "pack": ""}]
    cfg["jobs"] = ["cv", "final", "cross"]
    cfg["cross"] = [{"train": "a", "test": "b", "folds": 3}]
    data = load_data(cfg)
    jobs = make_jobs(data, cfg)
    assert list(jobs)[-4:] == ["cross_a_to_b", "cross_a_to_b_f0", "cross_a_to_b_f1", "cross_a_to_b_f2"]
    whole = set(jobs["cross_a_to_b"]["train"].tolist())
    left_out = [whole - set(jobs[f"cross_a_to_b_f{f}"]["train"].tolist()) for f in range(3)]
    assert set().union(*left_out) == whole and sum(map(len, left_out)) == len(whole)  # each image left out once
    for f in range(3):
        assert np.array_equal(jobs[f"cross_a_to_b_f{f}"]["test"], jobs["cross_a_to_b"]["test"])
        kept = set(data.groups[jobs[f"cross_a_to_b_f{f}"]["train"]].tolist())
        assert not kept & set(data.groups[sorted(left_out[f])].tolist())  # a group is kept or left out whole


def _power_cut_in_validation(monkeypatch: pytest.MonkeyPatch, epoch: int, *job: Any) -> None:
    """``train_job(*job)`` stopped by an error in the given epoch's validation (after that epoch's
    training steps, before its checkpoint), as a power cut would stop it."""
    from sonopacs.training import train as tr

    real, calls = tr._seg_scores, {"n": 0}

    def power_cut(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == epoch:
            raise RuntimeError("power cut")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(tr, "_seg_scores", power_cut)
    with pytest.raises(RuntimeError, match="power cut"):
        tr.train_job(*job)
    monkeypatch.setattr(tr, "_seg_scores", real)


def test_an_interrupted_job_resumes_from_its_last_finished_epoch(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A job stopped in its second epoch resumes from the first epoch's checkpoint and ends with the
    very model and log of an uninterrupted run; a checkpoint of another seed is refused."""
    from sonopacs.training import train as tr

    cfg = load_config(write_smoke_config(tmp_path, make_synthetic_index(tmp_path / "data")))
    data = load_data(cfg)
    job = make_jobs(data, cfg)["cv0"]
    cpu = torch.device("cpu")
    tr.train_job("cv0", job, data, cfg, cpu, tmp_path / "whole", 7)

    _power_cut_in_validation(monkeypatch, 2, "cv0", job, data, cfg, cpu, tmp_path / "cut", 7)
    jdir = tmp_path / "cut" / "jobs" / "cv0"
    assert (jdir / "checkpoint.pt").exists() and not (jdir / "model.pt").exists()
    with pytest.raises(ValueError, match="another recipe, seed or split"):
        tr.train_job("cv0", job, data, cfg, cpu, tmp_path / "cut", 8)
    tr.train_job("cv0", job, data, cfg, cpu, tmp_path / "cut", 7)
    assert not (jdir / "checkpoint.pt").exists()
    whole = list(csv.DictReader((tmp_path / "whole" / "jobs" / "cv0" / "log.csv").open()))
    resumed = list(csv.DictReader((jdir / "log.csv").open()))
    assert [r["epoch"] for r in resumed] == ["1", "2"]
    for a, b in zip(whole, resumed, strict=True):
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), rel=1e-5)
        assert float(a["val_ce"]) == pytest.approx(float(b["val_ce"]), rel=1e-5)
    m_whole = torch.load(tmp_path / "whole" / "jobs" / "cv0" / "model.pt", weights_only=True)
    m_resumed = torch.load(jdir / "model.pt", weights_only=True)
    assert m_whole["best_epoch"] == m_resumed["best_epoch"]
    for k, v in m_whole["state_dict"].items():
        assert torch.allclose(v.float(), m_resumed["state_dict"][k].float(), atol=1e-5), k


def test_validation_scores_the_masks_dice_not_their_area() -> None:
    """The best epoch is picked on the inner validation Dice: a network that returns every truth
    mask exactly scores Dice 1 (until 2026-12-05 the mask's share of the frame was logged and
    scored as the Dice)."""
    from sonopacs.models.data import Packed
    from sonopacs.training.train import validate

    class Oracle(torch.nn.Module):
        """Lesion where the image is bright; benign when an image has a lesion, else normal."""

        def __init__(self) -> None:
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            lesion = (x > 0.5).float()
            share = lesion.mean((1, 2, 3))
            return torch.stack([1 - 100 * share, 100 * share, torch.zeros_like(share)], 1), torch.cat(
                [5 - 10 * lesion, 10 * lesion - 5], 1)

    masks = np.zeros((6, 32, 32), np.uint8)
    for i in range(4):
        masks[i, 4 + i : 14 + i, 6:20] = 1
    data = Packed(images=masks * 255, masks=masks, labels=np.array([1, 2, 1, 2, 0, 0]),
                  groups=np.array([str(i) for i in range(6)]), datasets=np.array(["d"] * 6),
                  conflicts=np.zeros(6, bool), names=np.array([f"{i}.png" for i in range(6)]))
    v = validate(Oracle(), torch.from_numpy(data.images), np.arange(6), data)  # type: ignore[arg-type]
    assert v["val_dice"] == pytest.approx(1.0)
    assert v["val_acc"] == pytest.approx(4 / 6)  # the malignant images are called benign


def test_weight_average_is_written_beside_the_best_epoch_and_survives_a_resume(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``train.weight_average.from_epoch``: the mean of the weights after every step from that epoch
    on is written as ``averaged/``; the job's own network (best epoch) is the one the same job trains
    without it, and a job stopped after the averaging began resumes to the same average."""
    from sonopacs.training import train as tr

    cfg = load_config(write_smoke_config(tmp_path, make_synthetic_index(tmp_path / "data")),
                      ["train.epochs=3"])
    data = load_data(cfg)
    job = make_jobs(data, cfg)["cv0"]
    cpu = torch.device("cpu")
    tr.train_job("cv0", job, data, cfg, cpu, tmp_path / "plain", 7)
    cfg_avg = {**cfg, "train": {**cfg["train"], "weight_average": {"from_epoch": 2}}}
    tr.train_job("cv0", job, data, cfg_avg, cpu, tmp_path / "avg", 7)

    # stopped in the third epoch's validation: the checkpoint's average holds epoch 2's steps
    _power_cut_in_validation(monkeypatch, 3, "cv0", job, data, cfg_avg, cpu, tmp_path / "cut", 7)
    tr.train_job("cv0", job, data, cfg_avg, cpu, tmp_path / "cut", 7)

    def state(run: str, sub: str = "") -> dict[str, torch.Tensor]:
        ck = torch.load(tmp_path / run / "jobs" / "cv0" / sub / "model.pt", weights_only=True)
        return ck["state_dict"]  # type: ignore[no-any-return]

    plain, best, averaged = state("plain"), state("avg"), state("avg", "averaged")
    assert torch.load(tmp_path / "avg" / "jobs" / "cv0" / "averaged" / "model.pt",
                      weights_only=True)["image_size"] == cfg_avg["data"]["image_size"]
    assert not (tmp_path / "plain" / "jobs" / "cv0" / "averaged").exists()
    for k, v in plain.items():
        assert torch.equal(v, best[k]), k
    assert any(not torch.equal(v, averaged[k]) for k, v in plain.items() if v.is_floating_point())
    info = json.loads((tmp_path / "avg" / "jobs" / "cv0" / "averaged" / "info.json").read_text())
    assert info["n_averaged"] == 2 * (info["n_fit"] // 4)  # every step of epochs 2 and 3, batch 4
    assert info["averaged_from_epoch"] == 2 and np.isfinite(info["val_score"])
    preds = np.load(tmp_path / "avg" / "jobs" / "cv0" / "averaged" / "preds.npz")
    assert sorted(preds["index"].tolist()) == sorted(job["test"].tolist())
    resumed = state("cut", "averaged")
    for k, v in averaged.items():
        assert torch.allclose(v.float(), resumed[k].float(), atol=1e-5), k


def test_finalize_fits_the_calibration_on_what_the_analyzer_reports(smoke_run: Path, tmp_path: Path) -> None:
    """``calibration.fit_on: analyzer``: each cv network goes through the shipped Analyzer (second
    look included) on its held-out images, and the calibration is fitted on the logits it reports.
    Checked against ``evaluate`` run on each job's held-out images by their index rows: a logit
    matched to the wrong image, or the network's own logits kept, fails."""
    from sonopacs.models.calibration import Calibration
    from sonopacs.models.evaluation import evaluate_index
    from sonopacs.training.analyzer_oof import PREDS_NAME, job_analyzer
    from sonopacs.training.finalize import finalize

    run = tmp_path / "run"
    shutil.copytree(smoke_run / "run", run)
    cfg = load_config(smoke_run / "smoke.yaml")
    cfg["ship"] = {"second_look": {"fraction": 0.35}}
    cfg["calibration"] = {**cfg["calibration"], "method": "temperature_bias", "fit_on": "analyzer",
                          "mask_thresholds": [0.3], "lesion_sensitivity_target": 0.95}
    report = finalize(cfg, run)
    assert report["calibration_fit_on"] == "analyzer"
    assert report["oof_analyzer"]["all"]["n_images"] == 12

    rows = {r["image"]: r for r in csv.DictReader((smoke_run / "data" / "index.csv").open())}
    logits, labels, network = [], [], []
    for job in ("cv0", "cv1"):
        seen = dict(np.load(run / "jobs" / job / PREDS_NAME))
        own = dict(np.load(run / "jobs" / job / "preds.npz"))
        index = tmp_path / job / "index.csv"
        index.parent.mkdir()
        with index.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(next(iter(rows.values()))))
            w.writeheader()
            for name in seen["names"]:
                r = dict(rows[str(name)])
                r["image"] = str(smoke_run / "data" / r["image"])
                r["mask"] = str(smoke_run / "data" / r["mask"]) if r["mask"] else ""
                w.writerow(r)
        analyzer = job_analyzer(run / "jobs" / job, cfg)
        evaluate_index(index, tmp_path / job, analyzer=analyzer)
        got = list(csv.DictReader((tmp_path / job / "predictions.csv").open()))
        expect = analyzer.reported_probabilities(seen["logits"])
        assert [r["image"] for r in got] == [str(n) for n in seen["names"]]
        assert np.array([[float(r[f"p_{c}"]) for c in ("normal", "benign", "malignant")] for r in got]) == \
            pytest.approx(expect, abs=1e-6)
        logits.append(seen["logits"])
        labels.append(seen["labels"])
        network.append(own["logits"])
    # another second look gives other logits: the stored ones are not reused for it
    stored = (run / "jobs" / "cv0" / PREDS_NAME).read_bytes()
    finalize({**cfg, "ship": {"second_look": {"fraction": 0.5}}}, run)
    assert (run / "jobs" / "cv0" / PREDS_NAME).read_bytes() != stored
    assert "0.5" in str(np.load(run / "jobs" / "cv0" / PREDS_NAME)["settings"])
    fitted = Calibration.fit(np.concatenate(logits), np.concatenate(labels), "temperature_bias")
    assert report["temperature"] == pytest.approx(fitted.temperature)
    assert report["class_bias"] == pytest.approx(list(fitted.bias))
    # the Analyzer's logits are not the network's own (full-resolution field, its mirror, its
    # second look), so a finalize that kept the network's would have fitted other biases
    assert np.abs(np.concatenate(network) - np.concatenate(logits)).max() > 1e-3
    on_network = Calibration.fit(np.concatenate(network), np.concatenate(labels), "temperature_bias")
    assert report["class_bias"] != pytest.approx(list(on_network.bias), rel=1e-3, abs=1e-6)


def test_analyzer_logits_are_refused_for_other_images_and_a_second_look_needs_one_threshold() -> None:
    from sonopacs.training.analyzer_oof import detection_threshold, with_analyzer_logits

    preds = {"index": np.array([3, 5]), "names": np.array(["a.png", "b.png"]), "logits": np.zeros((2, 3))}
    seen = {"index": np.array([3, 5]), "names": np.array(["a.png", "b.png"]), "logits": np.ones((2, 3))}
    assert (with_analyzer_logits(preds, seen)["logits"] == 1).all()
    with pytest.raises(ValueError, match="not of this job's held-out images"):
        with_analyzer_logits(preds, {**seen, "names": np.array(["b.png", "a.png"])})
    assert detection_threshold({"calibration": {"mask_thresholds": [0.3]}}) == 0.3
    with pytest.raises(ValueError, match="one calibration.mask_thresholds"):
        detection_threshold({"calibration": {"mask_thresholds": [0.3, 0.5]}})


def test_unship_writes_the_shipped_networks_back_as_job_checkpoints(smoke_run: Path, tmp_path: Path) -> None:
    """A shipped folder's networks as job checkpoints: halving them again gives the shipped files
    bit for bit, and each lands in the job it was shipped from."""
    from sonopacs.training.finalize import finalize
    from sonopacs.training.weights_folder import unship

    run = tmp_path / "run"
    shutil.copytree(smoke_run / "run", run)
    cfg = load_config(smoke_run / "smoke.yaml")
    cfg["ship"] = {"ensemble": ["cv1"]}
    finalize(cfg, run)
    written = unship(run / "weights", tmp_path / "again" / "jobs")
    assert sorted(p.parent.name for p in written) == ["cv1", "final"]
    for job, shipped in (("final", "model.pt"), ("cv1", "member_1.pt")):
        ck = torch.load(tmp_path / "again" / "jobs" / job / "model.pt", weights_only=True)
        want = torch.load(run / "weights" / shipped, weights_only=True)
        assert ck["image_size"] == 64 and ck["model"] == cfg["model"]
        assert ck["best_epoch"] == torch.load(run / "jobs" / job / "model.pt", weights_only=True)["best_epoch"]
        assert all(torch.equal(want[k], v.half() if v.is_floating_point() else v) for k, v in ck["state_dict"].items())
