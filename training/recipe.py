"""A training recipe (``models/configs/*.yaml``) read into a dict: one small module, so that the
lab tools that need only the recipe do not import training itself (finalize -> analyzer_oof ->
train -> finalize would be a cycle)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def load_config(path: Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a YAML config; ``overrides`` like ``train.epochs=3`` are for quick checks only."""
    cfg = yaml.safe_load(Path(path).read_text())
    cfg["_path"] = str(path)
    for item in overrides or []:
        key, _, val = item.partition("=")
        node = cfg
        *parents, leaf = key.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = yaml.safe_load(val)
    cfg["_overrides"] = list(overrides or [])
    return cfg
