"""The second-look lab tool's presence read-out: normal images given a lesion at a lesion sensitivity."""

from __future__ import annotations

import numpy as np
import pytest

from sonopacs.training.second_look import normals_at_sensitivity, presence_scores


def test_normals_at_sensitivity_takes_the_highest_cut_that_keeps_the_target() -> None:
    lesion = np.array([True] * 20 + [False] * 10)
    score = np.concatenate([np.linspace(1.0, 0.05, 20), [0.95, 0.5, 0.2, 0.12, 0.09, 0.05, 0.0, 0.0, 0.0, 0.0]])
    out = normals_at_sensitivity(score, lesion, 0.95)  # 19 of 20 lesions: cut at the 19th highest, 0.1
    assert out["lesion_sensitivity"] == 0.95
    assert out["cut"] == pytest.approx(0.1)
    assert out["normal_false_lesion_rate"] == pytest.approx(0.4)  # 0.95, 0.5, 0.2, 0.12


def test_presence_scores_rank_by_the_second_look_where_it_ran() -> None:
    """Two normal images whose first look is as strong as the lesions', but whose crops find nothing:
    ranked by the crop, they are no longer given a lesion at full sensitivity."""
    rows = [{"label": 1, "first_max": 0.9, "f0.35": {"crop_max": 0.9, "inside_max": 0.9}} for _ in range(4)]
    rows += [{"label": 0, "first_max": 0.95, "f0.35": {"crop_max": 0.1, "inside_max": 0.1}} for _ in range(2)]
    out = presence_scores(rows, [0.35])
    assert out["first_max"]["normal_false_lesion_rate"] == 1.0
    assert out["f0.35_crop_max"]["normal_false_lesion_rate"] == 0.0
    assert out["f0.35_crop_max"]["lesion_sensitivity"] == 1.0
