"""job_eval.presence_tradeoff: the unseen site's normal-image rate at 95 % lesion sensitivity, per mask threshold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sonopacs.models.lesion_shape import SHAPE_FEATURES
from sonopacs.training.job_eval import presence_tradeoff


def test_a_lower_mask_threshold_reaches_a_sensitivity_the_trained_one_cannot(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 300
    labels = rng.choice(3, size=n, p=[0.3, 0.4, 0.3])
    lesion = labels > 0
    logits = np.where(lesion[:, None], np.array([[-1.0, 1.0, 0.5]]), np.array([[1.0, 0.0, 0.0]])) + rng.normal(0, 1, (n, 3))
    # at 0.5 a tenth of the lesion images have no mask; at 0.3 all do (and some normal images too)
    missed = lesion & (np.arange(n) % 10 == 0)
    area = np.stack([np.where(lesion | (np.arange(n) % 3 == 0), 0.05, 0.0), np.where(lesion & ~missed, 0.04, 0.0)], 1)
    sf = np.zeros((n, len(SHAPE_FEATURES)))
    sf[:, SHAPE_FEATURES.index("lesion_present")] = area[:, 1] > 0
    sf[:, SHAPE_FEATURES.index("log_area_fraction")] = np.log(np.maximum(area[:, 1], 1e-3))
    np.savez(tmp_path / "preds.npz", logits=logits, labels=labels, shape_features=sf,
             mask_thresholds=np.array([0.3, 0.5]), area_by_threshold=area)
    out = presence_tradeoff(tmp_path / "preds.npz")
    assert out["at_sensitivity_0.95"] is None  # the 0.5 masks alone find 0.9 of the lesions
    assert out["by_mask_threshold"]["0.5"]["at_sensitivity_0.95"] is None
    assert abs(out["by_mask_threshold"]["0.5"]["masks_on_lesions"] - (~missed[lesion]).mean()) < 1e-12
    low = out["by_mask_threshold"]["0.3"]["at_sensitivity_0.95"]
    assert low["lesion_sensitivity"] >= 0.95 and 0.0 < low["normal_given_lesion"] <= (np.arange(n)[~lesion] % 3 == 0).mean()


def test_a_jobs_weights_take_a_runs_fitted_presence_rule(tmp_path: Path) -> None:
    import json

    import torch

    from sonopacs.training.job_eval import job_weights, presence_from

    job = tmp_path / "job"
    job.mkdir()
    torch.save({"state_dict": {"w": torch.ones(2)}, "model": {"backbone": "x"}, "best_epoch": 3, "image_size": 160},
               job / "model.pt")
    rule = {"min_area_fraction": 0.005, "max_p_normal": 0.8, "min_mask_confidence": 0.0, "mask_threshold": 0.3}
    (tmp_path / "model.json").write_text(json.dumps({"name": "run", "lesion_presence": rule}))
    fitted = json.loads((job_weights(job, tmp_path / "w1", presence=presence_from(tmp_path / "model.json"))
                         / "model.json").read_text())
    assert fitted["lesion_presence"] == rule
    default = json.loads((job_weights(job, tmp_path / "w2", presence=presence_from(None)) / "model.json").read_text())
    assert default["lesion_presence"]["mask_threshold"] == 0.5 and default["lesion_presence"]["max_p_normal"] == 0.5
    assert torch.load(tmp_path / "w1" / "model.pt")["w"].dtype == torch.float16


def test_a_jobs_weights_run_at_the_image_size_it_trained_at(tmp_path: Path) -> None:
    """A job's weights folder takes its size from the job (model.pt's record, else the run's
    config.yaml for jobs saved before the record); a size that differs is refused, as a network
    run at the wrong scale gives quietly wrong figures (job_eval once defaulted to 160 px)."""
    import json

    import pytest
    import torch

    from sonopacs.training.job_eval import job_weights

    def job(path: Path, **record: object) -> Path:
        path.mkdir(parents=True)
        torch.save({"state_dict": {"w": torch.ones(2)}, "model": {"backbone": "x"}, **record}, path / "model.pt")
        return path

    def size(wdir: Path) -> int:
        return int(json.loads((wdir / "model.json").read_text())["image_size"])

    new = job(tmp_path / "new", image_size=224)
    assert size(job_weights(new, tmp_path / "w1")) == 224
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("data:\n  image_size: 192\n")
    old = job(tmp_path / "run" / "jobs" / "old")
    assert size(job_weights(old, tmp_path / "w2")) == 192
    assert size(job_weights(new, tmp_path / "w3", image_size=224)) == 224
    with pytest.raises(ValueError, match="trained at 224 px, not 160 px"):
        job_weights(new, tmp_path / "w4", image_size=160)
    with pytest.raises(ValueError, match="trained at 192 px, not 224 px"):
        job_weights(new, tmp_path / "w5", members=[old])
    with pytest.raises(ValueError, match="no record of the image size"):
        job_weights(job(tmp_path / "bare"), tmp_path / "w6")
    assert size(job_weights(tmp_path / "bare", tmp_path / "w7", image_size=160)) == 160


def test_analyzer_tradeoff_reads_presence_and_outline_figures_from_predictions(tmp_path: Path) -> None:
    """From evaluate's predictions.csv: the mask confidence's AUC as a presence score, and the Dice
    of the outlines shown apart from the lesions given none; a not-assessed row counts in neither."""
    import csv

    from sonopacs.training.job_eval import analyzer_tradeoff

    cols = ["label", "p_normal", "assessed", "lesion_found", "dice", "lesion_area_fraction", "lesion_mask_confidence"]
    rows = [("benign", 0.1, True, True, 0.8, 0.05, 0.9), ("malignant", 0.2, True, True, 0.6, 0.04, 0.7),
            ("benign", 0.9, True, False, 0.0, 0.0, 0.0), ("normal", 0.3, True, True, "", 0.03, 0.5),
            ("normal", 0.8, True, False, "", 0.0, 0.0), ("malignant", 0.1, False, True, 0.1, 0.05, 0.2)]
    with (tmp_path / "predictions.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        w.writerows(rows)
    out = analyzer_tradeoff(tmp_path / "predictions.csv", 0.002)
    assert out["n_lesion"] == 3 and out["n_normal"] == 2  # the not-assessed row is left out
    assert out["dice_where_given"] == pytest.approx(0.7)  # 0.8 and 0.6; the missed lesion's 0 is not an outline
    # lesions 0.9, 0.7, 0.0 against normals 0.5, 0.0: four pairs won, one tied, one lost
    assert out["auc_mask_confidence"] == pytest.approx(4.5 / 6)
    assert out["masks_on_lesions"] == pytest.approx(2 / 3)
