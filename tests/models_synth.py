"""Tiny synthetic ultrasound-like dataset for the models tests (no real data needed)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def make_synthetic_index(root: Path, n_per_class: int = 4, size: tuple[int, int] = (72, 96), seed: int = 0) -> Path:
    """Write PNG images/masks and an index.csv with a ``group`` column; return the CSV path."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = ["image,label,mask,group,label_conflict"]
    k = 0
    for label in ("normal", "benign", "malignant"):
        for i in range(n_per_class):
            img = (rng.gamma(2.0, 40.0, size)).clip(0, 255).astype(np.uint8)
            mask = np.zeros(size, np.uint8)
            if label != "normal":
                c = (int(rng.integers(30, 66)), int(rng.integers(25, 47)))
                ax = (int(rng.integers(10, 20)), int(rng.integers(6, 12)))
                cv2.ellipse(mask, c, ax, float(rng.uniform(0, 180)), 0, 360, 255, -1)
                img[mask > 0] = (img[mask > 0] * (0.3 if label == "malignant" else 0.6)).astype(np.uint8)
            name = f"{label}_{i}.png"
            cv2.imwrite(str(root / name), img)
            mname = ""
            if label != "normal":
                mname = f"{label}_{i}_mask.png"
                cv2.imwrite(str(root / mname), mask)
            rows.append(f"{name},{label},{mname},g{k // 2},0")
            k += 1
    (root / "index.csv").write_text("\n".join(rows) + "\n")
    return root / "index.csv"


def write_smoke_config(root: Path, index_csv: Path, pack: bool = True) -> Path:
    cfg = f"""name: smoke
version: 0.0.0
seed: 1
out_dir: {root / 'run'}
data:
  image_size: 64
  drop_label_conflict: true
  datasets:
    - name: synth
      index: {index_csv}
      group_column: group
      pack: {root / 'pack.npz' if pack else ''}
model:
  backbone: resnet10
  decoder_channels: [32, 16, 8, 8, 8]
  dropout: 0.1
train:
  epochs: 2
  min_epochs: 1
  patience: 5
  batch_size: 4
  lr: 0.001
  weight_decay: 0.0001
  warmup_epochs: 1
  class_weights: balanced
  inner_val_fraction: 0.3
  n_stamps: 8
  augment: {{annotations: 0.5, elastic: 0.5, blur: 0.5, lowres: 0.5}}
cv:
  folds: 2
jobs: [cv, final]
calibration:
  high_sensitivity_target: 0.95
"""
    p = root / "smoke.yaml"
    p.write_text(cfg)
    return p
