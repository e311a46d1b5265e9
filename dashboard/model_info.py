"""What the model page shows: the shipped model card, its metrics, operating points and version.

Read from the weights folder's files rather than by loading the network, so the page costs no
GPU/CPU time and works in a dashboard-only install.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sonopacs.dashboard.markdown import render_markdown

if TYPE_CHECKING:
    from sonopacs.config import Settings

MAX_JSON_BYTES = 512 * 1024
# a site calibration carries its images' scope features (about 1.7 kB per image): room for ~30 000
MAX_SITE_FILE_BYTES = 64 * 1024 * 1024
_VERSION_KEYS = ("model_version", "version")


def weights_dir(settings: Settings) -> Path | None:
    if settings.model.weights_dir is not None:
        return Path(settings.model.weights_dir)
    spec = importlib.util.find_spec("models")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "weights"


def _find_key(data: Any, keys: tuple[str, ...], depth: int = 0) -> Any:
    if not isinstance(data, dict) or depth > 3:
        return None
    for key in keys:
        if key in data:
            return data[key]
    for value in data.values():
        found = _find_key(value, keys, depth + 1)
        if found is not None:
            return found
    return None


def _read_json_files(folder: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in sorted(folder.glob("*.json")):
        if path.stat().st_size > MAX_JSON_BYTES:
            continue
        try:
            out[path.name] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return out


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The numbers worth a table row (curves, matrices and nested records are left out)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}


def active_calibration(settings: Settings, name: Any, version: Any) -> dict[str, Any]:
    """Which calibration the Analyzer applies: the shipped one or ``model.site_calibration``
    (read from its file; whether it belongs to this model is checked the way the Analyzer does)."""
    info: dict[str, Any] = {"expected_normal_fraction": settings.model.expected_normal_fraction,
                            "scope_gate": settings.model.scope_gate}
    path = settings.model.site_calibration
    if path is None:
        return {**info, "source": "shipped", "summary": "shipped calibration (no site calibration set)"}
    info.update(source="site", path=str(path))
    try:
        size = Path(path).stat().st_size
        if size > MAX_SITE_FILE_BYTES:
            return {**info, "problem": f"the site calibration file is {size} bytes, too large to show here"}
        site = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        return {**info, "problem": f"cannot read the site calibration: {exc}"}
    model = site.get("model", {}) if isinstance(site, dict) else {}
    info.update(created=site.get("created"), n_images=site.get("n_images"), class_counts=site.get("class_counts"),
                operating_points=site.get("operating_points"), model=model)
    if isinstance(site.get("expected_normal_fraction"), int | float):  # the Analyzer takes the site's own
        info["expected_normal_fraction"] = float(site["expected_normal_fraction"])
    if (model.get("name"), model.get("version")) != (name, version):
        info["problem"] = (f"made for model {model.get('name')} {model.get('version')}, not {name} {version}: "
                           f"the Analyzer refuses it")
    info["summary"] = f"site calibration {path} ({site.get('n_images')} images, {site.get('created')})"
    return info


def model_info(settings: Settings) -> dict[str, Any]:
    folder = weights_dir(settings)
    if folder is None or not folder.is_dir():
        return {"available": False, "reason": "no weights folder found (models package not installed yet)"}
    files = _read_json_files(folder)
    metrics = files.get("metrics.json", {})
    manifest = files.get("model.json", {})
    card_path = folder / "model_card.md"
    card = card_path.read_text() if card_path.is_file() else None
    # The manifest (model.json) is authoritative; the others are searched only when it is absent.
    ordered = [manifest, metrics, *(v for k, v in files.items() if k not in ("model.json", "metrics.json"))]
    operating_points = None
    version = None
    for data in ordered:
        operating_points = operating_points or _find_key(data, ("operating_points",))
        version = version or _find_key(data, _VERSION_KEYS)
    headline = metrics.get("oof", {}).get("all") if isinstance(metrics.get("oof"), dict) else None
    return {
        "available": card is not None or bool(files),
        "reason": None if card is not None or files else "the weights folder has no model card or metrics yet",
        "weights_dir": folder.name,
        "name": manifest.get("name") if isinstance(manifest, dict) else None,
        "version": version,
        # more than one: an ensemble, whose class logits and lesion probability are averaged
        "networks": 1 + len(manifest.get("ensemble_members") or []) if isinstance(manifest, dict) else None,
        "model_card_markdown": card,
        "model_card_html": render_markdown(card) if card else None,
        "metrics": scalar_metrics(headline if isinstance(headline, dict) else metrics)
        if isinstance(metrics, dict)
        else {},
        "metrics_scope": "out-of-fold, all datasets" if isinstance(headline, dict) else None,
        "operating_points": operating_points,
        "calibration": active_calibration(settings, manifest.get("name") if isinstance(manifest, dict) else None,
                                          version),
        "files": sorted(p.name for p in folder.iterdir() if p.is_file()),
    }
