"""The model card's result tables, printed from a ``metrics.json`` written by ``finalize``.

    python -m sonopacs.training.card_tables models/weights/metrics.json

Copying figures into the card by hand invites slips; this prints the Markdown tables exactly as
measured (3 decimals), so the card and ``metrics.json`` cannot disagree.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ROWS = ("n_images", "accuracy", "macro_f1", "auc_malignant_vs_rest", "auc_benign_vs_malignant",
        "sensitivity_malignant", "specificity_malignant", "sensitivity_malignant_high",
        "specificity_malignant_high", "dice", "iou", "n_masks", "ece")


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def columns(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    cols = [(f"OOF {k}", report["oof"][k]) for k in sorted(report["oof"]) if k != "all"]
    cols.append(("OOF both", report["oof"]["all"]))
    for name, m in sorted(report.get("cross_dataset", {}).items()):
        a, _, b = name.removeprefix("cross_").partition("_to_")
        cols.append((f"train {a} → test {b}", m))
    return cols


def tables(report: dict[str, Any]) -> str:
    cols = columns(report)
    head = "| metric | " + " | ".join(c for c, _ in cols) + " |"
    sep = "|---" * (len(cols) + 1) + "|"
    lines = [head, sep]
    lines += [f"| {r} | " + " | ".join(_fmt(m.get(r)) for _, m in cols) + " |" for r in ROWS]
    lines += ["", "| per class (precision / recall / support) | " + " | ".join(c for c, _ in cols) + " |", sep]
    for cls in ("normal", "benign", "malignant"):
        cells = []
        for _, m in cols:
            pc = m.get("per_class", {}).get(cls, {})
            cells.append(" / ".join(_fmt(pc.get(k)) for k in ("precision", "recall", "support")))
        lines.append(f"| {cls} | " + " | ".join(cells) + " |")
    nested = report.get("oof_nested_calibration")
    if nested:
        keys = ("accuracy", "macro_f1", "auc_benign_vs_malignant", "ece", "sensitivity_malignant",
                "specificity_malignant", "sensitivity_malignant_high", "specificity_malignant_high", "dice")
        lines += ["", "| nested calibration (fitted on the other folds) | " + " | ".join(keys) + " |",
                  "|---" * (len(keys) + 1) + "|"]
        lines += [f"| {k} | " + " | ".join(_fmt(v.get(x)) for x in keys) + " |" for k, v in sorted(nested.items())]
        recall = [f"{k} " + " / ".join(_fmt(v.get("per_class", {}).get(c, {}).get("recall"))
                                      for c in ("normal", "benign", "malignant")) for k, v in sorted(nested.items())]
        if any("per_class" in v for v in nested.values()):
            lines += ["", "nested recall normal / benign / malignant: " + "; ".join(recall)]
    sizes = report.get("oof_by_lesion_size") or {}
    if sizes:
        size_keys = ("n_images", "accuracy", "called_normal", "auc_benign_vs_malignant", "dice")
        lines += ["", "| OOF by true lesion size (share of the frame) | " + " | ".join(size_keys) + " |",
                  "|---" * (len(size_keys) + 1) + "|"]
        lines += [f"| {k} ({v['area_fraction_range'][0]:.4f}-{v['area_fraction_range'][1]:.4f}) | "
                  + " | ".join(_fmt(v.get(x)) for x in size_keys) + " |" for k, v in sizes.items()]
    cal = report.get("calibration") or {}
    if cal.get("feature_names"):
        lines += ["", "| shape feature (standardised) | weight benign | weight malignant |", "|---|---|---|"]
        lines += [f"| {n} | {_fmt(wb)} | {_fmt(wm)} |" for n, wb, wm in
                  zip(cal["feature_names"], cal["feature_weights"][1], cal["feature_weights"][2], strict=True)]
    t, ops = report.get("temperature"), report.get("operating_points", {})
    lines += ["", f"temperature {_fmt(t)}; thresholds " + ", ".join(f"{k} {_fmt(v)}" for k, v in ops.items()),
              f"uncalibrated OOF ECE {_fmt(report.get('oof_uncalibrated_ece'))}"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("metrics", type=Path)
    print(tables(json.loads(ap.parse_args().metrics.read_text())))


if __name__ == "__main__":
    main()
