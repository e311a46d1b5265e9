"""evaluate_index writes every contract key, with null where a metric is undefined."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from sonopacs.models.evaluation import CONTRACT_KEYS, evaluate_index

DATA = Path(__file__).parent / "data" / "bus-bra"


def _index(tmp: Path, rows: list[tuple[str, str, str]]) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    for img, _, mask in rows:
        shutil.copy(DATA / img, tmp / img)
        if mask:
            shutil.copy(DATA / mask, tmp / mask)
    lines = ["image,label,mask"] + [f"{i},{lab},{m}" for i, lab, m in rows]
    (tmp / "index.csv").write_text("\n".join(lines) + "\n")
    return tmp / "index.csv"


def test_evaluate_writes_all_keys_and_plots(tmp_path: Path) -> None:
    idx = _index(tmp_path / "d", [("bus_0001-l.jpg", "malignant", "mask_0001-l.png"),
                                  ("bus_0056-r.jpg", "benign", "mask_0056-r.png"),
                                  ("bus_0165-l.jpg", "malignant", "")])
    m = evaluate_index(idx, tmp_path / "out", device="cpu")
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert set(CONTRACT_KEYS) <= set(saved)
    assert saved["n_images"] == 3 and m["n_images"] == 3
    assert saved["auc_benign_vs_malignant"] is not None
    assert 0 <= saved["dice"] <= 1 and 0 <= saved["iou"] <= saved["dice"]
    assert saved["n_masks"] == 2  # the row without a mask is not averaged into Dice
    for png in ("confusion_matrix.png", "roc.png", "reliability.png"):
        assert (tmp_path / "out" / png).stat().st_size > 1000


def test_one_class_index_gives_nulls_not_errors(tmp_path: Path) -> None:
    idx = _index(tmp_path / "d", [("bus_0056-r.jpg", "benign", ""), ("bus_0112-r.jpg", "benign", "")])
    m = evaluate_index(idx, tmp_path / "out", clean=False, device="cpu")
    assert m["auc_malignant_vs_rest"] is None and m["auc_benign_vs_malignant"] is None
    assert m["sensitivity_malignant"] is None and m["specificity_malignant"] is not None
    assert m["dice"] is None and m["iou"] is None
    assert set(CONTRACT_KEYS) <= set(json.loads((tmp_path / "out" / "metrics.json").read_text()))
