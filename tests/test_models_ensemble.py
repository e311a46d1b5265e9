"""An ensemble weights folder (``ensemble_members``): the Analyzer averages the class logits and the
lesion probability of every network, and ``job_eval.job_weights`` builds one from trained jobs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sonopacs.models.analyzer import DEFAULT_WEIGHTS, Analyzer

DATA = Path(__file__).parent / "data" / "bus-bra"


def _shifted_state(out: Path, class_shift: tuple[float, float, float], lesion_shift: float) -> None:
    """The shipped state dict with its class logits and lesion logit moved by constants."""
    state = torch.load(DEFAULT_WEIGHTS / "model.pt", weights_only=True)
    state["head.2.bias"] = state["head.2.bias"] + torch.tensor(class_shift, dtype=state["head.2.bias"].dtype)
    state["unet.segmentation_head.0.bias"][1] += lesion_shift
    torch.save(state, out)


def _folder(folder: Path, primary: Path | None = None, members: list[Path] | None = None) -> Path:
    folder.mkdir(parents=True)
    shutil.copy(DEFAULT_WEIGHTS / "model.json", folder / "model.json")
    shutil.copy(primary or DEFAULT_WEIGHTS / "model.pt", folder / "model.pt")
    manifest = json.loads((folder / "model.json").read_text())
    members = members or []  # the shipped primary network alone, even where the shipped folder is an ensemble
    for k, m in enumerate(members, start=1):
        shutil.copy(m, folder / f"member_{k}.pt")
    manifest["ensemble_members"] = [f"member_{k}.pt" for k in range(1, len(members) + 1)]
    (folder / "model.json").write_text(json.dumps(manifest))
    return folder


def test_the_ensemble_averages_logits_and_lesion_probability(tmp_path: Path) -> None:
    images = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sorted(DATA.glob("bus_*.jpg"))]
    _shifted_state(tmp_path / "shifted.pt", (0.0, -1.0, 2.0), lesion_shift=1.5)
    alone = Analyzer.load(_folder(tmp_path / "a"), "cpu", scope_gate=False).analyze_batch(images)
    other = Analyzer.load(_folder(tmp_path / "b", primary=tmp_path / "shifted.pt"), "cpu",
                          scope_gate=False).analyze_batch(images)
    both = Analyzer.load(_folder(tmp_path / "e", members=[tmp_path / "shifted.pt"]), "cpu",
                         scope_gate=False).analyze_batch(images)
    for a, b, e in zip(alone, other, both, strict=True):
        assert e.extra["networks"] == 2 and a.extra["networks"] == 1
        # the class logits are the mean of the two networks' (each already the mirror mean)
        np.testing.assert_allclose(e.extra["logits"], (np.array(a.extra["logits"]) + b.extra["logits"]) / 2,
                                   atol=1e-4)
        # the shifted member's lesion probability is higher everywhere, so the mean's mask lies between
        assert a.extra["lesion_area_fraction"] <= e.extra["lesion_area_fraction"] <= b.extra["lesion_area_fraction"]
    assert any(a.extra["lesion_area_fraction"] < e.extra["lesion_area_fraction"] for a, e in zip(alone, both, strict=True))


def test_a_member_that_is_the_primary_network_changes_nothing(tmp_path: Path) -> None:
    image = cv2.imread(str(sorted(DATA.glob("bus_*.jpg"))[0]), cv2.IMREAD_GRAYSCALE)
    one = Analyzer.load(_folder(tmp_path / "one"), "cpu", scope_gate=False).analyze(image)
    two = Analyzer.load(_folder(tmp_path / "two", members=[DEFAULT_WEIGHTS / "model.pt"]), "cpu",
                        scope_gate=False).analyze(image)
    assert two.extra["networks"] == 2
    assert two.probabilities == pytest.approx(one.probabilities, abs=1e-6)
    assert np.array_equal(one.mask, two.mask)


def test_job_weights_build_an_ensemble_of_jobs_of_one_network(tmp_path: Path) -> None:
    from sonopacs.training.job_eval import job_weights

    for name, arch in (("j1", "x"), ("j2", "x"), ("j3", "y")):
        (tmp_path / name).mkdir()
        torch.save({"state_dict": {"w": torch.ones(2)}, "model": {"backbone": arch}, "image_size": 160},
                   tmp_path / name / "model.pt")
    manifest = json.loads((job_weights(tmp_path / "j1", tmp_path / "w", members=[tmp_path / "j2"])
                           / "model.json").read_text())
    assert manifest["ensemble_members"] == ["member_1.pt"]
    assert torch.load(tmp_path / "w" / "member_1.pt")["w"].dtype == torch.float16
    with pytest.raises(ValueError, match="not the same network"):
        job_weights(tmp_path / "j1", tmp_path / "w2", members=[tmp_path / "j3"])
