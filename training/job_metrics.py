"""Metrics of single jobs' held-out predictions, uncalibrated (T = 1), per dataset.

    python -m sonopacs.training.job_metrics runs/RUN_A/jobs/cv0/preds.npz runs/RUN_B/jobs/cv0/preds.npz

For comparing two recipes on the same fold (same seed, same split) without running all folds:
how the model card's pretrained-versus-scratch comparison was made.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from sonopacs.models.calibration import Calibration, operating_points
from sonopacs.training.finalize import metrics_for

KEYS = ("n_images", "accuracy", "macro_f1", "auc_malignant_vs_rest", "auc_benign_vs_malignant", "dice", "ece")


def job_metrics(preds: Path) -> dict[str, dict[str, Any]]:
    d = dict(np.load(preds))
    cal = Calibration()
    ops = operating_points(cal.probs(d["logits"])[:, 2], d["labels"] == 2)
    out = {}
    for name in ["all", *sorted(set(d["datasets"].tolist()))]:
        sel = np.ones(len(d["labels"]), bool) if name == "all" else d["datasets"] == name
        m = metrics_for(d, sel, cal, ops)
        out[name] = {k: round(m[k], 3) if isinstance(m[k], float) else m[k] for k in KEYS}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("preds", type=Path, nargs="+")
    for p in ap.parse_args().preds:
        print(p, json.dumps(job_metrics(p)))


if __name__ == "__main__":
    main()
