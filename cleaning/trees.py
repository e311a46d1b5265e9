"""A boosted-tree ensemble evaluated with numpy, stored as plain JSON.

Why not pickle/sklearn at run time: a pickle breaks across library versions and runs code on load;
a few hundred small trees as JSON arrays are portable, reviewable, and fast enough for the few
hundred candidate components of one frame.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MODEL_PATH = Path(__file__).with_name("detector_model.json")  # the shipped overlay-component classifier


@dataclass
class TreeEnsemble:
    feature: np.ndarray  # (trees, nodes) int: feature index, -1 at leaves
    threshold: np.ndarray  # (trees, nodes) float: go left when x <= threshold
    left: np.ndarray  # (trees, nodes) int
    right: np.ndarray  # (trees, nodes) int
    value: np.ndarray  # (trees, nodes) float: leaf contribution (already scaled by the learning rate)
    bias: float
    depth: int
    feature_names: list[str]

    def decision(self, x: np.ndarray) -> np.ndarray:
        """Raw score (log-odds) per row of x (rows x features); all trees walked at once."""
        n = x.shape[0]
        if n == 0:
            return np.full(0, self.bias)
        trees = self.feature.shape[0]
        tree_idx = np.arange(trees)[:, None]
        rows = np.arange(n)[None, :]
        node = np.zeros((trees, n), dtype=np.int64)
        for _ in range(self.depth):
            f = self.feature[tree_idx, node]
            leaf = f < 0
            go_left = x[rows, np.maximum(f, 0)] <= self.threshold[tree_idx, node]
            node = np.where(leaf, node, np.where(go_left, self.left[tree_idx, node], self.right[tree_idx, node]))
        return self.bias + self.value[tree_idx, node].sum(axis=0)

    def probability(self, x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-np.clip(self.decision(x), -50, 50)))

    def to_json(self, path: Path) -> None:
        data = {
            "bias": self.bias, "depth": self.depth, "feature_names": self.feature_names,
            "trees": [
                {"feature": self.feature[t].tolist(), "threshold": [round(float(v), 6) for v in self.threshold[t]],
                 "left": self.left[t].tolist(), "right": self.right[t].tolist(),
                 "value": [round(float(v), 6) for v in self.value[t]]}
                for t in range(self.feature.shape[0])
            ],
        }
        path.write_text(json.dumps(data, separators=(",", ":")))

    @classmethod
    def from_json(cls, path: Path) -> TreeEnsemble:
        data = json.loads(path.read_text())
        trees = data["trees"]
        width = max(len(t["feature"]) for t in trees)

        def pad(key: str, fill: float, dtype: type) -> np.ndarray:
            return np.array([t[key] + [fill] * (width - len(t[key])) for t in trees], dtype=dtype)

        return cls(pad("feature", -1, np.int64), pad("threshold", 0.0, np.float64), pad("left", 0, np.int64),
                   pad("right", 0, np.int64), pad("value", 0.0, np.float64), float(data["bias"]),
                   int(data["depth"]), list(data["feature_names"]))
