"""Fit the fringe classifier (cleaning/fringe.py) on synthetic burn-ins and write cleaning/fringe_model.json.

    python -m sonopacs.training.cleaning_fringe --images 700 --trees 20 --depth 6 --learning-rate 0.4

Training images: BUS-BRA patients of folds 3-5. The benchmark scores fold 1; fold 2 is kept for
choosing the acceptance threshold (`--tune` reports recall and precision per threshold there).
The strokes are what the shipped detector accepts on each burn-in, so the classifier learns the
rings it will really be asked about. Ring pixels next to BUS-BRA's own marks (found by the same
detector on the image before burn-in) are left out: their fringe is real but not in the mask.
Needs scikit-learn at training time only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from sonopacs.cleaning.annotations import detect_annotations
from sonopacs.cleaning.convert import grey_and_chroma, rgb_max
from sonopacs.cleaning.fringe import FEATURE_NAMES, FRINGE_MODEL_PATH, ring_features
from sonopacs.training.cleaning_detector import BUSBRA, _read_index, burn_ins, fit

_NEAR_NATIVE = np.ones((7, 7), np.uint8)


def _strokes(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grey plane, accepted strokes before any fringe step and the top-hat, as detect_annotations sees them."""
    grey, chroma = grey_and_chroma(image)
    seen: list[tuple[np.ndarray, np.ndarray]] = []

    def record(g: np.ndarray, strokes: np.ndarray, tophat: np.ndarray) -> np.ndarray:
        seen.append((strokes.copy(), tophat))
        return np.zeros_like(strokes)

    detect_annotations(grey, chroma, None if chroma is None else rgb_max(image), fringe_step=record)
    if not seen:  # nothing accepted: no ring to learn from
        return grey, np.zeros(grey.shape, bool), np.zeros(grey.shape, np.uint8)
    return grey, seen[0][0], seen[0][1]


def ring_samples(dirty: np.ndarray, truth: np.ndarray, native: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    grey, strokes, tophat = _strokes(dirty)
    idx, feats = ring_features(grey, strokes, tophat)
    near_native = cv2.dilate(native.astype(np.uint8), _NEAR_NATIVE).ravel()[idx] > 0
    return feats[~near_native], truth.ravel()[idx][~near_native].astype(np.int8)


def build_dataset(n_images: int, seed: int, folds: set[str]) -> tuple[np.ndarray, np.ndarray]:
    rows = [r for r in _read_index(BUSBRA) if r["fold5"] in folds]
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for img, dirty, truth in burn_ins(rows, min(n_images, len(rows)), rng, (2, 8)):
        x, y = ring_samples(dirty, truth, _strokes(img)[1])
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=700)
    ap.add_argument("--trees", type=int, default=20)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--learning-rate", type=float, default=0.4)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--out", type=Path, default=FRINGE_MODEL_PATH)
    ap.add_argument("--cache", type=Path, default=None, help="reuse/store the ring-pixel table (.npz)")
    ap.add_argument("--tune", type=int, default=0, help="also report thresholds on this many fold-2 images")
    args = ap.parse_args()
    if args.cache and args.cache.exists():
        with np.load(args.cache) as z:
            x, y = z["x"], z["y"]
    else:
        x, y = build_dataset(args.images, args.seed, {"3", "4", "5"})
        if args.cache:
            np.savez_compressed(args.cache, x=x, y=y)
    print(f"{len(y)} ring pixels, {int(y.sum())} fringe")
    ens = fit(x, y, args.trees, args.depth, args.seed, names=FEATURE_NAMES, learning_rate=args.learning_rate)
    ens.to_json(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB)")
    if args.tune:
        xt, yt = build_dataset(args.tune, args.seed + 1, {"2"})
        p = ens.probability(xt)
        rule = xt[:, FEATURE_NAMES.index("over_tissue")] >= 10
        print(f"fold 2, halo margin 10: fringe recall {(rule & (yt == 1)).sum() / max(1, yt.sum()):.3f}, "
              f"precision {(rule & (yt == 1)).sum() / max(1, rule.sum()):.3f}")
        for t in (0.15, 0.2, 0.25, 0.3, 0.4, 0.5):
            hit = p >= t
            print(f"fold 2, threshold {t}: fringe recall {(hit & (yt == 1)).sum() / max(1, yt.sum()):.3f}, "
                  f"precision {(hit & (yt == 1)).sum() / max(1, hit.sum()):.3f}, "
                  f"ring pixels kept {hit.mean():.3f}")


if __name__ == "__main__":
    main()
