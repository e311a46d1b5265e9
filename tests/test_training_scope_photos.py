"""The model card's photograph row: every one of scikit-image's 22 sample images is left not
assessed by the shipped Analyzer's scope gate, each with a reason."""

from __future__ import annotations

import pytest

from sonopacs.models import Analyzer
from sonopacs.training.scope_photos import PHOTOS, photo_outcomes


@pytest.mark.slow
def test_every_sample_photograph_is_not_assessed_with_a_reason() -> None:
    out = photo_outcomes(Analyzer.load(device="cpu"))
    assert out["n"] == len(PHOTOS) == 22
    assert out["not_assessed"] == 22
    assert all(r["reason"] for r in out["photos"].values())
