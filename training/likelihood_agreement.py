"""The AI likelihood category against the radiologists' BI-RADS (model card, issue 16 scope 6).

    python -m sonopacs.training.likelihood_agreement EVAL_DIR/predictions.csv ../shared/datasets/bus-bra/index.csv

Joins ``sonopacs evaluate``'s ``predictions.csv`` with the index's ``birads`` column by file name
and prints, for assessed images: the observed malignancy rate per AI category and per BI-RADS
category, and Cohen's weighted kappa (linear and quadratic) between the two on one ordinal scale
(AI 1 -> 1, 3 -> 3, 4A/4B/4C -> 4, 5 -> 5; BI-RADS as given).
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from sklearn.metrics import cohen_kappa_score

AI_ORDINAL = {"1": 1, "3": 3, "4A": 4, "4B": 4, "4C": 4, "5": 5}


def agreement(predictions: Path, index: Path) -> dict[str, Any]:
    with index.open(newline="") as f:
        birads = {Path(r["image"]).name: r.get("birads", "").strip() for r in csv.DictReader(f)}
    rates: dict[str, dict[str, list[int]]] = {"ai": defaultdict(list), "birads": defaultdict(list)}
    ai_ord, rad_ord = [], []
    with predictions.open(newline="") as f:
        for r in csv.DictReader(f):
            cat, rad = r.get("likelihood_category", ""), birads.get(Path(r["image"]).name, "")
            if r.get("assessed") != "True" or cat not in AI_ORDINAL or not rad.isdigit():
                continue
            malignant = int(r["label"] == "malignant")
            rates["ai"][cat].append(malignant)
            rates["birads"][rad].append(malignant)
            ai_ord.append(AI_ORDINAL[cat])
            rad_ord.append(int(rad))
    out: dict[str, Any] = {"n": len(ai_ord)}
    for k, table in rates.items():
        out[f"malignancy_rate_by_{k}"] = {c: {"n": len(v), "rate": round(sum(v) / len(v), 3)} for c, v in sorted(table.items())}
    for w in ("linear", "quadratic"):
        out[f"weighted_kappa_{w}"] = round(float(cohen_kappa_score(ai_ord, rad_ord, weights=w)), 3) if ai_ord else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("predictions", type=Path)
    ap.add_argument("index", type=Path)
    a = ap.parse_args()
    print(json.dumps(agreement(a.predictions, a.index), indent=2))


if __name__ == "__main__":
    main()
