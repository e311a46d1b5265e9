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
    _flat_cache: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = field(
        default=None, repr=False, compare=False)

    def decision(self, x: np.ndarray) -> np.ndarray:
        """Raw score (log-odds) per row of x (rows x features); all trees walked at once.

        Nodes of all trees live in flat arrays with absolute child indices, so each level is a few
        1-D `take`s over trees x rows (2-D fancy indexing was twice as slow).
        """
        n = x.shape[0]
        if n == 0:
            return np.full(0, self.bias)
        feat, thr, left, right, value = self._flat()
        xt = np.ascontiguousarray(x.T, dtype=np.float64).ravel()  # feature-major: xt[f * n + row]
        rows = np.arange(n, dtype=np.int64)[None, :]
        width = self.feature.shape[1]
        node = np.repeat(np.arange(self.feature.shape[0], dtype=np.int64)[:, None] * width, n, axis=1)
        for _ in range(self.depth):
            f = np.take(feat, node)
            go_left = np.take(xt, np.maximum(f, 0) * n + rows) <= np.take(thr, node)
            nxt = np.where(go_left, np.take(left, node), np.take(right, node))
            node = np.where(f < 0, node, nxt)
        return self.bias + np.take(value, node).sum(axis=0)

    def _flat(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if self._flat_cache is None:
            width = self.feature.shape[1]
            offset = (np.arange(self.feature.shape[0], dtype=np.int64) * width)[:, None]
            self._flat_cache = (self.feature.ravel(), self.threshold.ravel(), (self.left + offset).ravel(),
                                (self.right + offset).ravel(), self.value.ravel())
        return self._flat_cache

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
