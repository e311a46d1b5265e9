"""Where the Analyzer's heat map lands relative to the reference lesion (a benchmark, not a test).

For each image with a reference mask: the fraction of heat-map mass inside the lesion mask dilated
by 5 % of the image's long side (``mass_in``; ``area_in`` is that region's share of the image, the
value a uniform map would get), whether the heat-map peak lies inside it (``peak_in``), and the
mass in the outer 5 % frame of the image (``mass_edge``; ``area_edge`` is the uniform value).

    python benchmarks/heatmap_placement.py [--index CSV] [--n 50] [--json OUT.json]

Default: the 6 committed BUS-BRA samples, plus ``--n`` images taken evenly from ``--index`` (e.g.
``/work/shared/datasets/bus-bra/index.csv``) when given. These are training images: the figures
describe where the map points, not generalisation.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sonopacs.models import Analyzer  # noqa: E402


def _gray(path: object) -> np.ndarray:
    """8-bit grayscale image; a missing or unreadable file is an error, not None."""
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise OSError(f"cannot read image {path}")
    return img


SAMPLES = Path(__file__).resolve().parents[1] / "tests/data/bus-bra/index.csv"


def read_index(csv_path: Path, n: int | None) -> list[tuple[Path, Path]]:
    """(image, mask) pairs with a non-empty mask column; ``n`` evenly spaced rows when given."""
    with csv_path.open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("mask")]
    if n is not None and n < len(rows):
        rows = [rows[i] for i in np.linspace(0, len(rows) - 1, n).round().astype(int)]
    return [(csv_path.parent / r["image"], csv_path.parent / r["mask"].split("|")[0]) for r in rows]


def placement(heat: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Heat-map mass/peak inside the dilated lesion and mass in the outer frame, for one image."""
    h, w = truth.shape
    r = max(1, round(0.05 * max(h, w)))
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    region = cv2.dilate(truth.astype(np.uint8), k) > 0
    edge = np.ones_like(region)
    edge[r:-r, r:-r] = False
    heat = heat.astype(np.float64)
    total = max(float(heat.sum()), 1e-12)
    peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return {
        "mass_in": float(heat[region].sum()) / total,
        "area_in": float(region.mean()),
        "peak_in": float(region[peak]),
        "mass_edge": float(heat[edge].sum()) / total,
        "area_edge": float(edge.mean()),
    }


def summarise(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = ["mass_in", "area_in", "peak_in", "mass_edge", "area_edge"]
    out: dict[str, float] = {"n": len(rows)}
    for k in keys:
        v = np.array([r[k] for r in rows])
        out[f"{k}_mean"] = round(float(v.mean()), 3)
        if k in ("mass_in", "mass_edge"):
            out[f"{k}_median"] = round(float(np.median(v)), 3)
    return out


def run(an: Analyzer, pairs: list[tuple[Path, Path]]) -> dict[str, float]:
    """Placement over the images given a map; an image called normal or not assessed gets none (the
    Analyzer computes a map only for a lesion result) and is counted in ``no_map`` instead."""
    rows = []
    no_map = 0
    for img_path, mask_path in pairs:
        img = _gray(img_path)
        truth = _gray(mask_path) > 0
        heat = an.analyze(img).heatmap
        if not heat.any():
            no_map += 1
            continue
        rows.append(placement(heat, truth))
    return {**summarise(rows), "no_map": no_map}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--index", type=Path, help="a further index.csv with masks (e.g. BUS-BRA)")
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    an = Analyzer.load(device="cpu")
    res: dict[str, object] = {
        "heatmap_method": an.analyze(np.zeros((64, 64), np.uint8)).extra.get("heatmap_method"),
        "samples": run(an, read_index(SAMPLES, None)),
    }
    if a.index is not None:
        res[f"index_{a.n}"] = run(an, read_index(a.index, a.n))
    text = json.dumps(res, indent=2)
    print(text)
    if a.json:
        a.json.write_text(text)


if __name__ == "__main__":
    main()
