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
    assert saved["log_loss"] > 0 and 0 < saved["brier"] < 2  # proper scores, to compare calibrations by
    for png in ("confusion_matrix.png", "roc.png", "reliability.png"):
        assert (tmp_path / "out" / png).stat().st_size > 1000


def test_one_class_index_gives_nulls_not_errors(tmp_path: Path) -> None:
    idx = _index(tmp_path / "d", [("bus_0056-r.jpg", "benign", ""), ("bus_0112-r.jpg", "benign", "")])
    m = evaluate_index(idx, tmp_path / "out", clean=False, device="cpu")
    assert m["auc_malignant_vs_rest"] is None and m["auc_benign_vs_malignant"] is None
    assert m["sensitivity_malignant"] is None and m["specificity_malignant"] is not None
    assert m["dice"] is None and m["iou"] is None
    assert set(CONTRACT_KEYS) <= set(json.loads((tmp_path / "out" / "metrics.json").read_text()))


def _predictions(out: Path) -> list[dict[str, str]]:
    import csv

    with (out / "predictions.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_presence_metrics_and_new_columns_agree_with_predictions(tmp_path: Path) -> None:
    idx = _index(tmp_path / "d", [("bus_0001-l.jpg", "malignant", "mask_0001-l.png"),
                                  ("bus_0056-r.jpg", "benign", "mask_0056-r.png")])
    m = evaluate_index(idx, tmp_path / "out", device="cpu")
    rows = _predictions(tmp_path / "out")
    for col in ("image", "label", "pred", "p_normal", "p_benign", "p_malignant", "assessed",
                "likelihood_category", "dice"):
        assert col in rows[0]
    found = [r["lesion_found"] == "True" for r in rows]
    assert m["lesion_sensitivity"] == sum(found) / len(found)
    assert m["normal_false_lesion_rate"] is None  # no normal image in the index
    assert m["not_assessed_rate"] == sum(r["assessed"] == "False" for r in rows) / len(rows)
    for r in rows:
        if r["assessed"] == "True":
            assert r["likelihood_category"] in ("1", "3", "4A", "4B", "4C", "5")
            assert (r["likelihood_category"] == "1") == (r["lesion_found"] == "False")
        else:
            assert r["likelihood_category"] == ""


def test_cleaning_failure_is_not_assessed_not_dropped(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import sonopacs.models.clean as clean_mod

    def refuse(image, regions=None):  # type: ignore[no-untyped-def]
        raise ValueError("synthetic refusal")

    monkeypatch.setattr(clean_mod, "clean_image", refuse)
    idx = _index(tmp_path / "d", [("bus_0001-l.jpg", "malignant", "mask_0001-l.png"),
                                  ("bus_0056-r.jpg", "benign", "")])
    m = evaluate_index(idx, tmp_path / "out", device="cpu")
    rows = _predictions(tmp_path / "out")
    assert m["n_images"] == 2 and len(rows) == 2  # kept in the classification metrics
    assert m["not_assessed_rate"] == 1.0 and m["lesion_sensitivity"] == 0.0
    assert all("synthetic refusal" in r["not_assessed_reason"] for r in rows)
    assert all(r["likelihood_category"] == "" for r in rows)


def test_presence_metrics_by_class() -> None:
    import numpy as np

    from sonopacs.models.evaluation import presence_metrics

    labels = np.array([0, 0, 0, 0, 1, 2, 2])
    found = np.array([True, False, False, False, True, False, True])
    assessed = np.array([True, True, False, True, True, True, True])
    m = presence_metrics(labels, found, assessed)
    assert m["normal_false_lesion_rate"] == 0.25
    assert m["lesion_sensitivity"] == 2 / 3
    assert m["not_assessed_rate"] == 1 / 7


def test_benign_vs_malignant_score_ignores_the_normal_class() -> None:
    """The one B-vs-M score: how probability is split between benign and malignant, whatever share
    the normal class takes; its AUC counts lesion images only."""
    import numpy as np

    from sonopacs.models.metrics import benign_vs_malignant_auc, malignant_share

    probs = np.array([[0.0, 0.2, 0.8], [0.9, 0.05, 0.05], [0.9, 0.01, 0.09], [0.1, 0.6, 0.3]])
    assert np.allclose(malignant_share(probs), [0.8, 0.5, 0.9, 1 / 3])
    labels = np.array([2, 1, 0, 1])
    # the normal image 2 has the highest score of all, yet is no lesion: counted, it would give 2/3
    assert benign_vs_malignant_auc(probs, labels) == 1.0
    assert benign_vs_malignant_auc(probs, np.array([1, 1, 0, 1])) is None
