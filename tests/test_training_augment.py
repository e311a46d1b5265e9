"""Scanner-style augmentation (training/augment.py): opt-in, mask-preserving, seeded."""

from __future__ import annotations

import torch

from sonopacs.training.augment import Augmenter

BASE = {"flip": 0.5, "affine": 0.8, "gamma": [0.7, 1.5], "speckle": 0.5, "blur": 0.2, "lowres": 0.2, "annotations": 0.0}


def _run(cfg: dict[str, object], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.linspace(0, 1, 64 * 64).reshape(1, 1, 64, 64).repeat(6, 1, 1, 1)
    y = torch.zeros(6, 1, 64, 64)
    y[:, :, 20:40, 20:40] = 1
    return Augmenter(cfg, torch.zeros(0, 64, 64), g)(x, y)


def test_gain_and_sharpen_are_off_unless_configured() -> None:
    """Configs without the keys (the shipped v3 recipe) augment exactly as before."""
    a, _ = _run(BASE)
    b, _ = _run({**BASE, "tgc": 0.0, "sharpen": 0.0})
    assert torch.equal(a, b)


def test_gain_and_sharpen_change_intensity_only() -> None:
    plain_x, plain_y = _run({"flip": 0.0, "affine": 0.0, "speckle": 0.0, "blur": 0.0, "lowres": 0.0, "annotations": 0.0})
    cfg = {"flip": 0.0, "affine": 0.0, "speckle": 0.0, "blur": 0.0, "lowres": 0.0, "annotations": 0.0,
           "tgc": 1.0, "tgc_strength": 0.35, "sharpen": 1.0, "sharpen_amount": [0.5, 1.0]}
    x, y = _run(cfg)
    assert torch.equal(y, plain_y)  # geometry untouched: the mask still fits the image
    assert not torch.allclose(x, plain_x, atol=1e-3)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    x2, _ = _run(cfg)
    assert torch.equal(x, x2)  # seeded
    # the gain varies with depth: row means no longer follow the input's linear ramp alone
    ratio = x[0, 0, 8:56].mean(1) / plain_x[0, 0, 8:56].mean(1).clamp_min(1e-3)
    assert float(ratio.std()) > 0.01
