"""The card's AI-category-versus-BI-RADS table (training/likelihood_agreement.py) on a small made-up set."""

from __future__ import annotations

from pathlib import Path

from sonopacs.training.likelihood_agreement import agreement


def test_rates_and_kappa_from_joined_files(tmp_path: Path) -> None:
    (tmp_path / "index.csv").write_text(
        "image,label,mask,birads\nImages/a.png,benign,,3\nImages/b.png,malignant,,5\nImages/c.png,malignant,,4\n"
        "Images/d.png,benign,,2\nImages/e.png,benign,,4\n")
    (tmp_path / "predictions.csv").write_text(
        "image,label,assessed,likelihood_category\na.png,benign,True,3\nb.png,malignant,True,5\n"
        "c.png,malignant,True,4C\nd.png,benign,True,1\ne.png,benign,False,\n")
    out = agreement(tmp_path / "predictions.csv", tmp_path / "index.csv")
    assert out["n"] == 4  # the not-assessed image is left out
    assert out["malignancy_rate_by_ai"]["4C"] == {"n": 1, "rate": 1.0}
    assert out["malignancy_rate_by_birads"]["2"] == {"n": 1, "rate": 0.0}
    # ordinal AI (3, 5, 4, 1) against BI-RADS (3, 5, 4, 2): close agreement
    assert 0.8 < out["weighted_kappa_quadratic"] <= 1.0
    assert out["weighted_kappa_linear"] < out["weighted_kappa_quadratic"]
