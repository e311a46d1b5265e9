"""What the segmentation head reads: how a network's last decoder features encode a lesion.

    python -m sonopacs.training.seg_head_probe WEIGHTS_DIR --pack .pack/bus-bra_160_clean.npz \\
        [--pack .pack/busi_160_clean.npz] [--every 10]

Why: the lesion probability of 0.8.x's networks stopped at the same value on every lesion. Behind
the ReLU after the decoder's last convolution, every channel had become a background detector, so a
lesion pixel was one where none fires and its probability was the head's bias alone. This prints,
per pack, the per-image maximum lesion probability on lesion and on normal images, and for each
last-stage channel its mean on lesion and background pixels; ``no_feature_probability`` is the
lesion probability where every last-stage feature is zero (the cap when all channels are background
detectors and the features cannot go below zero). Read-only: a lab probe, not a test.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sonopacs.models.analyzer import Analyzer
from sonopacs.models.data import load_pack


def _percentiles(values: np.ndarray) -> dict[str, float] | None:
    if not len(values):
        return None
    return {f"p{q}": round(float(np.percentile(values, q)), 4) for q in (10, 50, 90, 100)}


def probe(weights: Path, packs: list[Path], every: int = 10) -> dict[str, Any]:
    """The head's bias-only probability and, per pack, every ``every``-th image's figures."""
    analyzer = Analyzer.load(weights, device="cpu", scope_gate=False)
    net = analyzer.net
    head = net.unet.segmentation_head[0]
    bias = head.bias.detach()
    seen: list[torch.Tensor] = []
    hook = net.unet.decoder.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
    out: dict[str, Any] = {
        "weights": str(weights),
        "linear_seg_features": bool(analyzer.manifest["model"].get("linear_seg_features", False)),
        "no_feature_probability": round(float(torch.sigmoid(bias[1] - bias[0])), 4),
        "packs": {},
    }
    try:
        for path in packs:
            data = load_pack(path)
            idx = np.arange(0, len(data.labels), every)
            probs, feats = [], []
            with torch.no_grad():
                for s in range(0, len(idx), 32):
                    seen.clear()
                    x = torch.from_numpy(data.images[idx[s:s + 32]]).float()[:, None] / 255.0
                    _, seg = net(x)
                    probs.append(torch.softmax(seg, 1)[:, 1].numpy())
                    feats.append(seen[0].numpy())
            prob, feat = np.concatenate(probs), np.concatenate(feats)
            lesion_px = data.masks[idx].astype(bool)
            peak = prob.reshape(len(idx), -1).max(1)
            labels = data.labels[idx]
            out["packs"][path.name] = {
                "images": int(len(idx)),
                "peak_lesion_probability_lesion_images": _percentiles(peak[labels > 0]),
                "peak_lesion_probability_normal_images": _percentiles(peak[labels == 0]),
                "channels": [{"lesion_mean": round(float(c[lesion_px].mean()), 3) if lesion_px.any() else None,
                              "background_mean": round(float(c[~lesion_px].mean()), 3)}
                             for c in np.moveaxis(feat, 1, 0)],
            }
    finally:
        hook.remove()
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights", type=Path, help="a weights folder (model.json + model.pt)")
    ap.add_argument("--pack", type=Path, action="append", required=True, help="a training pack (repeatable)")
    ap.add_argument("--every", type=int, default=10, help="every N-th image of each pack")
    a = ap.parse_args(argv)
    print(json.dumps(probe(a.weights, a.pack, a.every), indent=1))


if __name__ == "__main__":
    main()
