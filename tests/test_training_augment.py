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


def test_decoy_fill_blends_tissue_where_no_lesion_is() -> None:
    """A filled normal's kind of blend, put into an image away from its lesion and its letterbox
    bands: the lesion (dilated) and the bands keep their pixels, the mask is unchanged, and it is
    seeded and off unless configured."""
    from sonopacs.training.augment import _decoy_fill

    g = torch.Generator().manual_seed(3)
    x = torch.rand(8, 1, 96, 96, generator=g) * 0.8 + 0.1
    x[:, :, :12] = 0  # letterbox band
    y = torch.zeros(8, 1, 96, 96)
    y[:, :, 30:50, 40:60] = 1
    on = torch.tensor([True] * 6 + [False] * 2)
    out = _decoy_fill(x, y, on, torch.Generator().manual_seed(1))
    changed = (out != x)[:, 0]
    assert changed[:6].flatten(1).any(1).all()  # every chosen image got a decoy (room is ample)
    assert not changed[6:].any()  # the others are untouched
    assert not changed[:, :12].any()  # nor the band
    near = torch.nn.functional.max_pool2d(y, 11, stride=1, padding=5)[:, 0] > 0
    assert not changed[near].any()  # nor the lesion with its margin
    assert torch.equal(out, _decoy_fill(x, y, on, torch.Generator().manual_seed(1)))
    # through the Augmenter: the mask stays as it was; without the key, exactly as before
    plain = {"flip": 0.0, "affine": 0.0, "elastic": 0.0, "speckle": 0.0, "blur": 0.0, "lowres": 0.0, "annotations": 0.0,
             "gamma": [1.0, 1.0], "contrast": [1.0, 1.0]}
    a_x, a_y = _run(plain)
    b_x, b_y = _run({**plain, "decoy_fill": 1.0})
    assert torch.equal(a_y, b_y) and not torch.equal(a_x, b_x)
    assert torch.equal(a_x, _run({**plain, "decoy_fill": 0.0})[0])
