"""The scope gate on photographs: how many of scikit-image's 22 sample images (none an ultrasound
image) a weights folder's Analyzer leaves not assessed, and why.

    python -m sonopacs.training.scope_photos WEIGHTS [--bank BANK.npz]

``--bank``: a scope bank other than the folder's own (e.g. one built for a leave-one-dataset-out
network: ``scope_bank --weights DIR --reference bus-bra``). The model card's photograph row.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from skimage import data as skdata

from sonopacs.models.analyzer import Analyzer
from sonopacs.models.scope import FeatureBank

PHOTOS = ("camera", "astronaut", "coins", "moon", "page", "text", "chelsea", "coffee", "rocket", "brick", "grass",
          "gravel", "hubble_deep_field", "immunohistochemistry", "retina", "shepp_logan_phantom", "cell", "clock",
          "logo", "microaneurysms", "colorwheel", "checkerboard")


def _uint8(image: np.ndarray) -> np.ndarray:
    """A sample image as uint8 gray or RGB (some are float or carry an alpha channel)."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = (255 * (img - img.min()) / max(float(np.ptp(img)), 1e-9)).astype(np.uint8)
    return img[..., :3] if img.ndim == 3 else img


def photographs() -> dict[str, np.ndarray]:
    """The 22 sample images by name, as uint8 gray or RGB."""
    return {name: _uint8(getattr(skdata, name)()) for name in PHOTOS}


def photo_outcomes(analyzer: Analyzer) -> dict[str, Any]:
    """Each photograph's outcome: not assessed (with the reason) or assessed (with its score)."""
    rows = {}
    for name, image in photographs().items():
        res = analyzer.analyze(image)
        rows[name] = {"assessed": res.assessed, "reason": res.not_assessed_reason,
                      "ood_score": res.extra.get("ood_score"), "sector_score": res.extra.get("sector_score")}
    return {"not_assessed": sum(not r["assessed"] for r in rows.values()), "n": len(rows), "photos": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights", type=Path)
    ap.add_argument("--bank", type=Path, default=None)
    a = ap.parse_args()
    analyzer = Analyzer.load(a.weights, device="cpu")
    if a.bank is not None:  # the same Analyzer, its gate measured with another bank
        analyzer.scope_bank = FeatureBank.load(a.bank)
    print(json.dumps(photo_outcomes(analyzer), indent=2))


if __name__ == "__main__":
    main()
