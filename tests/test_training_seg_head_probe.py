"""seg_head_probe reports the lesion probability where no last-stage feature fires, and behind the
ReLU that value caps every pixel once every channel weighs against "lesion"."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sonopacs.models.data import Packed, save_pack
from sonopacs.models.networks import build_network
from sonopacs.training.job_eval import job_weights
from sonopacs.training.seg_head_probe import probe

MODEL = {"backbone": "efficientnet-lite0", "decoder_channels": [16, 8, 8, 8, 8], "input_norm": [0.5, 0.5]}


def _weights_folder(tmp: Path, linear: bool) -> Path:
    """A network whose head weighs every last-stage channel against "lesion" (as 0.8.1's learnt to)."""
    cfg = {**MODEL, "linear_seg_features": linear}
    torch.manual_seed(3)
    net = build_network(cfg, pretrained=False)
    head = net.unet.segmentation_head[0]
    with torch.no_grad():
        head.weight[0].fill_(0.5)
        head.weight[1].fill_(-0.5)
        head.bias.copy_(torch.tensor([0.0, 1.0]))
    job = tmp / ("linear" if linear else "relu")
    job.mkdir(parents=True)
    torch.save({"state_dict": net.state_dict(), "model": cfg, "image_size": 64}, job / "model.pt")
    return job_weights(job, tmp / f"{job.name}_weights")


def _pack(tmp: Path) -> Path:
    rng = np.random.default_rng(0)
    n = 6
    masks = np.zeros((n, 64, 64), np.uint8)
    masks[:4, 20:40, 20:40] = 1
    pack = Packed(images=rng.integers(0, 255, (n, 64, 64), dtype=np.uint8), masks=masks,
                  labels=np.array([1, 2, 1, 2, 0, 0]), groups=np.array([str(i) for i in range(n)]),
                  datasets=np.array(["synthetic"] * n), conflicts=np.zeros(n, bool),
                  names=np.array([f"{i}.png" for i in range(n)]))
    save_pack(pack, tmp / "pack.npz")
    return tmp / "pack.npz"


@pytest.mark.parametrize("linear", [False, True])
def test_probe_finds_the_cap_behind_the_relu(tmp_path: Path, linear: bool) -> None:
    report = probe(_weights_folder(tmp_path, linear), [_pack(tmp_path)], every=1)
    cap = float(torch.sigmoid(torch.tensor(1.0)))  # the head's bias difference alone
    assert report["linear_seg_features"] is linear
    assert report["no_feature_probability"] == pytest.approx(cap, abs=1e-3)  # stored in half precision
    figures = report["packs"]["pack.npz"]
    assert figures["images"] == 6 and len(figures["channels"]) == 8
    peak = figures["peak_lesion_probability_lesion_images"]["p100"]
    if linear:
        assert peak > cap  # signed features can push past the bias
    else:
        assert peak <= cap + 1e-3  # features >= 0 against weights < 0: never above the bias
