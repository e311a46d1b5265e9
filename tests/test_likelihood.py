"""AI likelihood category (BI-RADS likelihood ranges) and the prior shift it is computed after."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sonopacs.models.likelihood import CATEGORIES, category_rank, likelihood_category
from sonopacs.models.priors import shift_priors, target_priors

DATA = Path(__file__).parent / "data" / "bus-bra"


@pytest.mark.parametrize(("p", "expected"), [
    (0.0, "3"), (0.02, "3"), (0.0201, "4A"), (0.10, "4A"), (0.1001, "4B"), (0.50, "4B"),
    (0.5001, "4C"), (0.9499, "4C"), (0.95, "5"), (1.0, "5"),
])
def test_ranges_and_boundaries(p: float, expected: str) -> None:
    assert likelihood_category(p) == expected


def test_no_lesion_is_1_and_not_assessed_is_none() -> None:
    assert likelihood_category(0.99, lesion_present=False) == "1"
    assert likelihood_category(0.99, lesion_present=True, assessed=False) is None
    with pytest.raises(ValueError):
        likelihood_category(float("nan"))


def test_category_is_monotone_in_probability() -> None:
    ranks = [category_rank(likelihood_category(p) or "") for p in np.linspace(0, 1, 1001)]
    assert ranks == sorted(ranks)
    assert {CATEGORIES[r] for r in ranks} == {"3", "4A", "4B", "4C", "5"}


def test_prior_shift_moves_only_the_normal_share() -> None:
    rng = np.random.default_rng(0)
    p = rng.dirichlet([1, 1, 1], size=50)
    fitted = (0.04, 0.65, 0.31)
    assert np.allclose(shift_priors(p, fitted, fitted), p)
    q = shift_priors(p, fitted, target_priors(fitted, 0.4))
    assert np.allclose(q.sum(axis=1), 1)
    assert (q[:, 0] > p[:, 0]).all()  # more normal images expected: more P(normal) everywhere
    # P(malignant | lesion) does not depend on the configured normal share
    assert np.allclose(q[:, 2] / q[:, 1:].sum(1), p[:, 2] / p[:, 1:].sum(1))
    assert target_priors(fitted, 0.4)[0] == 0.4
    with pytest.raises(ValueError):
        target_priors(fitted, 1.0)


def test_analyzer_result_carries_a_consistent_category() -> None:
    from sonopacs.models.analyzer import Analyzer
    from sonopacs.models.data import load_image
    from sonopacs.models.transforms import to_gray

    an = Analyzer.load(device="cpu")
    grays = [to_gray(load_image(DATA / n)) for n in ("bus_0001-l.jpg", "bus_0056-r.jpg", "bus_0112-r.jpg")]
    for res in an.analyze_batch(grays):
        assert res.assessed
        expected = likelihood_category(res.malignancy_probability, lesion_present=bool(res.mask.any()))
        assert res.likelihood_category == expected
        assert (res.label == "normal") == (not res.mask.any())
        assert abs(sum(res.probabilities.values()) - 1) < 1e-9
