"""Build the scope gate's reference bank (``models/weights/scope_bank.npz``):
``python -m sonopacs.training.scope_bank --out models/weights/scope_bank.npz``.

Every BUSI / BUS-BRA image is cleaned through the one path (``models.clean.clean_for_model``) and
run through the shipped Analyzer's primary network (``Analyzer.scope_features``: its pooled
deepest encoder features, mirror mean, as the scope gate measures them) field by field. The bank
(mean + Ledoit-Wolf precision) is fitted on BUS-BRA folds 1-3 and 3/5 of the BUSI near-duplicate
groups (by hash); the threshold is the ``--keep`` quantile of the distances of the other images,
which the bank never saw.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import logging
from pathlib import Path

import numpy as np

from sonopacs.models.analyzer import Analyzer
from sonopacs.models.clean import CleaningFailed, clean_for_model
from sonopacs.models.data import load_image
from sonopacs.models.scope import FeatureBank

log = logging.getLogger(__name__)
DATASETS = Path("/work/shared/datasets")


def _held_out(dataset: str, row: dict[str, str]) -> bool:
    if dataset == "bus-bra":
        return row.get("fold5", "") not in ("1", "2", "3")
    key = row.get("group") or row["image"]
    return int(hashlib.md5(key.encode()).hexdigest(), 16) % 5 >= 3


def collect(analyzer: Analyzer, index_csv: Path, dataset: str, limit: int | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """(features N x C, held-out flags N) for every cleaned field of the index's images."""
    feats: list[np.ndarray] = []
    held: list[bool] = []
    with index_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))[:limit]
    for row in rows:
        try:
            fields = clean_for_model(load_image(index_csv.parent / row["image"]))
        except CleaningFailed as exc:
            log.warning("%s: %s", row["image"], exc)
            continue
        feats.extend(analyzer.scope_features([fld.image for fld in fields]))
        held.extend([_held_out(dataset, row)] * len(fields))
    return np.asarray(feats, np.float64), np.asarray(held, bool)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--keep", type=float, default=0.995, help="share of held-out breast images kept")
    ap.add_argument("--limit", type=int, default=None, help="first N images per dataset (smoke test)")
    ap.add_argument("--datasets", default=str(DATASETS))
    ap.add_argument("--weights", type=Path, default=None, help="weights folder (default: the shipped one)")
    ap.add_argument("--reference", default="busi,bus-bra",
                    help="the datasets the bank and its threshold are built from, e.g. bus-bra alone for a network "
                         "trained on BUS-BRA only, so that BUSI stands in for an unseen site")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO)
    analyzer = Analyzer.load(a.weights, device="cpu", scope_gate=False)
    parts = [collect(analyzer, Path(a.datasets) / d / "index.csv", d, a.limit) for d in a.reference.split(",")]
    feats = np.concatenate([p[0] for p in parts])
    held = np.concatenate([p[1] for p in parts])
    bank = FeatureBank.fit(feats[~held], feats[held], a.keep)
    bank.save(Path(a.out))
    print(f"{a.out}: {bank.n_reference} reference fields, threshold {bank.threshold:.2f} "
          f"(keeps {a.keep:.1%} of {int(held.sum())} held-out fields)")


if __name__ == "__main__":
    main()
