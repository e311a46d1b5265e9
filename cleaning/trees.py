"""A boosted-tree ensemble evaluated with numpy, stored as plain JSON.

Why not pickle/sklearn at run time: a pickle breaks across library versions and runs code on load;
a few hundred small trees as JSON arrays are portable, reviewable, and fast enough for the few
hundred candidate components of one frame.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
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
    _complete_cache: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(
        default=None, repr=False, compare=False)

    def decision(self, x: np.ndarray) -> np.ndarray:
        """Raw score (log-odds) per row of x (rows x features); all trees walked at once.

        Each tree is laid out as a complete binary tree of `depth` levels (children of node k at
        2k+1 and 2k+2; a leaf above the last level routes left to copies of itself), so a level
        is two `take`s and arithmetic over trees x rows, with no child lookups or leaf tests.
        """
        n = x.shape[0]
        if n == 0:
            return np.full(0, self.bias)
        feat, thr, leaf = self._complete()
        trees, inner = feat.shape
        xt = np.ascontiguousarray(x.T, dtype=np.float64).ravel()  # feature-major: xt[f * n + row]
        rows = np.arange(n, dtype=np.int64)[None, :]
        base = (np.arange(trees, dtype=np.int64) * inner)[:, None]
        feat_flat, thr_flat = feat.ravel(), thr.ravel()
        node = np.zeros((trees, n), dtype=np.int64)
        for _ in range(self.depth):
            at = node + base
            right = np.take(xt, np.take(feat_flat, at) * n + rows) > np.take(thr_flat, at)
            node = 2 * node + 1 + right
        leaf_index = node - inner + (np.arange(trees, dtype=np.int64) * (inner + 1))[:, None]
        return self.bias + np.take(leaf.ravel(), leaf_index).sum(axis=0)

    def _complete(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(feature, threshold) per inner node and value per leaf of the complete-tree layout."""
        if self._complete_cache is None:
            trees, levels = self.feature.shape[0], self.depth
            inner = 2 ** levels - 1
            feat = np.zeros((trees, inner), np.int64)
            thr = np.full((trees, inner), np.inf)
            leaf = np.zeros((trees, inner + 1))
            for t in range(trees):
                stack = [(0, 0, 0)]  # (node in the stored tree, position in the complete tree, level)
                while stack:
                    node, pos, level = stack.pop()
                    is_leaf = self.feature[t, node] < 0
                    if level == levels:
                        if not is_leaf:
                            raise ValueError(f"tree {t} is deeper than its ensemble's depth {levels}")
                        leaf[t, pos - inner] = self.value[t, node]
                        continue
                    if is_leaf:  # x <= inf always goes left: both children carry the leaf
                        stack += [(node, 2 * pos + 1, level + 1), (node, 2 * pos + 2, level + 1)]
                    else:
                        feat[t, pos], thr[t, pos] = self.feature[t, node], self.threshold[t, node]
                        stack += [(int(self.left[t, node]), 2 * pos + 1, level + 1),
                                  (int(self.right[t, node]), 2 * pos + 2, level + 1)]
            self._complete_cache = (feat, thr, leaf)
        return self._complete_cache

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
