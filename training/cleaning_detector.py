"""Fit the overlay-component classifier on synthetic burn-ins and write cleaning/detector_model.json.

    python -m sonopacs.training.cleaning_detector --images 450 --trees 150 --depth 5

Training images: BUS-BRA patients outside fold 1 (fold5 != 1); the benchmark scores fold 1 only, so
the reported numbers never see a training patient. Needs scikit-learn at training time only.
Native BUS-BRA annotations (some images carry calipers/text) are unlabelled and count as negatives:
label noise that costs a little recall, documented in docs/cleaning.md.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from sonopacs.cleaning.convert import grey_and_chroma
from sonopacs.cleaning.features import FEATURE_NAMES, find_candidates
from sonopacs.cleaning.synthetic import burn_in_annotations
from sonopacs.cleaning.trees import MODEL_PATH, TreeEnsemble

# BUS-BRA (index.csv + images) where the training configs find it: beside the checkout, run from its root.
BUSBRA = Path("../shared/datasets/bus-bra")


def _read_index(root: Path) -> list[dict[str, str]]:
    with open(root / "index.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def augment_base(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Vary scale, gain and gamma so the classifier sees the speckle sizes and brightness of real frames."""
    scale = 1.0 if rng.random() < 0.35 else float(rng.uniform(0.8, 2.2))
    img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    gamma = float(rng.uniform(0.7, 1.4))
    gain = float(rng.uniform(0.7, 1.3))
    out = 255.0 * (img.astype(np.float32) / 255.0) ** gamma * gain
    return np.clip(out, 0, 255).astype(np.uint8)


def degrade(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Slight blur and JPEG re-encoding: overlays in exported PNG/JPEG datasets (BUSI, BUS-BRA) are
    softened like this, and the detector must still call them overlays."""
    if rng.random() < 0.5:
        image = cv2.GaussianBlur(image, (3, 3), float(rng.uniform(0.4, 0.8)))
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(60, 95))])
    decoded = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if ok else None
    return image if decoded is None else np.asarray(decoded, dtype=np.uint8)


def sector_frame(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Put the image behind a scanner-like field edge (convex-probe sector with a curved top, or a
    rectangle on black), so field borders and the bright near-field arc are seen as tissue."""
    h, w = img.shape[:2]
    pad = int(rng.integers(10, 60))
    canvas = np.zeros((h + 2 * pad, w + 2 * pad), np.uint8)
    canvas[pad:pad + h, pad:pad + w] = img
    mask = np.zeros_like(canvas)
    if rng.random() < 0.6:
        apex = (pad + w // 2, pad - int(rng.uniform(0.3, 1.5) * h))
        r_in = pad + h * 0.05 - apex[1]
        r_out = pad + h - apex[1]
        half = np.degrees(np.arctan2(w / 2, r_out)) * rng.uniform(0.8, 1.0)
        cv2.ellipse(mask, apex, (int(r_out), int(r_out)), 90, -half, half, 255, -1)
        cv2.ellipse(mask, apex, (int(r_in), int(r_in)), 90, -half, half, 0, -1)
    else:
        cv2.rectangle(mask, (pad, pad), (pad + w - 1, pad + h - 1), 255, -1)
    framed = np.where(mask > 0, canvas, 0).astype(np.uint8)
    if rng.random() < 0.5:  # near-field brightening fading over the top rows of the field
        inside: np.ndarray = mask > 0
        first = np.argmax(inside, axis=0)
        depth = np.arange(canvas.shape[0])[:, None] - first[None, :]
        columns = np.asarray(inside.any(axis=0))[None, :]
        fade = np.clip(1.0 - depth / float(rng.uniform(4, 10)), 0, 1) * inside * columns
        framed = np.clip(framed + fade * float(rng.uniform(30, 90)), 0, 255).astype(np.uint8)
    return framed


def native_overlay(clean: np.ndarray, model: TreeEnsemble | None) -> np.ndarray:
    """Overlay pixels already in the 'clean' image (BUS-BRA keeps some calipers and text), found by a
    previous model: their components are left out of training instead of being taught as tissue."""
    if model is None:
        return np.zeros(clean.shape[:2], bool)
    grey, chroma = grey_and_chroma(clean)
    cand = find_candidates(grey, chroma)
    if cand.n <= 1:
        return np.zeros(grey.shape, bool)
    keep = np.concatenate([[False], model.probability(cand.features.astype(np.float64)) >= 0.25])
    return keep[cand.labels]


def component_samples(image: np.ndarray, truth: np.ndarray, ignore: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    grey, chroma = grey_and_chroma(image)
    cand = find_candidates(grey, chroma)
    if cand.n <= 1:
        return np.zeros((0, len(FEATURE_NAMES)), np.float32), np.zeros(0, np.int8)
    lab = cand.labels.ravel()
    area = np.maximum(np.bincount(lab, minlength=cand.n), 1)
    frac = (np.bincount(lab, weights=truth.ravel().astype(np.float64), minlength=cand.n) / area)[1:]
    native = (np.bincount(lab, weights=ignore.ravel().astype(np.float64), minlength=cand.n) / area)[1:]
    use = (frac >= 0.5) | (native < 0.3)
    return cand.features[use], (frac[use] >= 0.5).astype(np.int8)


def burn_ins(rows: list[dict[str, str]], n_images: int, rng: np.random.Generator, annotations: tuple[int, int]
             ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(varied clean image, the same with burn-ins, truth mask) for n_images drawn from rows.

    The detector and the fringe classifier train on the same kind of frames: rescaled, re-gained,
    sometimes behind a sector edge, 2-9 annotations, sometimes blurred and JPEG re-encoded.
    """
    for i in rng.choice(len(rows), n_images, replace=False):
        base = cv2.imread(str(BUSBRA / rows[int(i)]["image"]), cv2.IMREAD_GRAYSCALE)
        if base is None:
            raise FileNotFoundError(rows[int(i)]["image"])
        img = augment_base(np.asarray(base, dtype=np.uint8), rng)
        if rng.random() < 0.4:
            img = sector_frame(img, rng)
        dirty, truth = burn_in_annotations(img, rng, n=int(rng.integers(*annotations)))
        if rng.random() < 0.4:
            dirty = degrade(dirty, rng)
        yield img, dirty, truth


def build_dataset(n_images: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rows = [r for r in _read_index(BUSBRA) if r["fold5"] != "1"]
    rng = np.random.default_rng(seed)
    previous = TreeEnsemble.from_json(MODEL_PATH) if MODEL_PATH.exists() else None
    xs, ys = [], []
    for img, dirty, truth in burn_ins(rows, n_images, rng, (3, 10)):
        x, y = component_samples(dirty, truth, native_overlay(img, previous))
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def fit(x: np.ndarray, y: np.ndarray, trees: int, depth: int, seed: int,
        names: list[str] | None = None, learning_rate: float = 0.1) -> TreeEnsemble:
    """Histogram gradient boosting (fast to fit), exported node by node to a TreeEnsemble."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    clf = HistGradientBoostingClassifier(max_iter=trees, max_depth=depth, learning_rate=learning_rate,
                                         max_leaf_nodes=2 ** depth, l2_regularization=1.0,
                                         early_stopping=False, random_state=seed)
    clf.fit(x, y)
    nodes = [p[0].nodes for p in clf._predictors]
    width = max(len(nd) for nd in nodes)

    def pad(vals: list[np.ndarray], fill: float) -> np.ndarray:
        return np.array([np.concatenate([v, np.full(width - len(v), fill)]) for v in vals])

    ens = TreeEnsemble(
        feature=pad([np.where(nd["is_leaf"], -1, nd["feature_idx"]) for nd in nodes], -1).astype(np.int64),
        threshold=pad([nd["num_threshold"].astype(np.float64) for nd in nodes], 0.0),
        left=pad([nd["left"].astype(np.int64) for nd in nodes], 0).astype(np.int64),
        right=pad([nd["right"].astype(np.int64) for nd in nodes], 0).astype(np.int64),
        value=pad([nd["value"].astype(np.float64) for nd in nodes], 0.0),
        bias=float(np.ravel(clf._baseline_prediction)[0]),
        depth=depth,
        feature_names=list(FEATURE_NAMES if names is None else names),
    )
    check = x[:5000].astype(np.float64)
    diff = np.abs(ens.decision(check) - clf.decision_function(check)).max()
    if diff > 1e-3:
        raise RuntimeError(f"exported trees disagree with scikit-learn by {diff}")
    return ens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--trees", type=int, default=120)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=MODEL_PATH)
    ap.add_argument("--cache", type=Path, default=None, help="reuse/store the component table (.npz)")
    args = ap.parse_args()
    if args.cache and args.cache.exists():
        with np.load(args.cache) as z:
            x, y = z["x"], z["y"]
    else:
        x, y = build_dataset(args.images, args.seed)
        if args.cache:
            np.savez_compressed(args.cache, x=x, y=y)
    print(f"{len(y)} candidate components, {int(y.sum())} overlay")
    ens = fit(x, y, args.trees, args.depth, args.seed)
    p = ens.probability(x)
    print(f"train: recall@0.5 {((p >= 0.5) & (y == 1)).sum() / max(1, y.sum()):.3f}, "
          f"precision@0.5 {((p >= 0.5) & (y == 1)).sum() / max(1, (p >= 0.5).sum()):.3f}")
    ens.to_json(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
