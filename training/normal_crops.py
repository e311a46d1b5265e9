"""Lesion-free crops of lesion images as extra ``normal`` training examples (issue 16, scope 2).

BUSI has ~104 normal training images and BUS-BRA none, so a model trained on BUS-BRA alone has
never seen breast tissue without a lesion. Many lesion images hold a wide lesion-free region: a
rectangle that does not touch the (dilated) lesion mask and spans at least ``min_fraction`` of
the image's height and width is cut from the cleaned original, letterboxed at training
resolution and labelled normal with an empty mask.

Opt-in with ``data.normal_crops`` in a training config, e.g.::

    data:
      normal_crops: {per_image: 1, min_fraction: 0.4, dilate_fraction: 0.05, seed: 7}

``fraction`` (optional, 0-1): only that share of the lesion images, drawn per image, gives crops.

``mode: fill`` (optional; default ``crop``): instead of a zoomed-in crop, the whole cleaned field
with its lesion covered by tissue from a lesion-free box of the same image that best matches the
lesion's surroundings (feathered edges), letterboxed like its source. A crop is a zoomed view that a network can tell
from a whole field by its scale alone; a filled field has the scale, skin line and depth of every
real image, and differs from its source only where the lesion was.

Crops are packed next to the dataset's pack (``<pack>.normal_crops_<key>.npz``). Each keeps its
source's dataset and group (near-duplicate set / patient), and ``train.make_jobs`` adds a crop only
to the *training* side of a job whose training groups include its source: never to a test set.
"""

from __future__ import annotations

import hashlib
import logging
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from sonopacs.models.clean import CleaningFailed
from sonopacs.models.data import Packed, Record, load_clean_pair, load_pack, read_index, save_pack
from sonopacs.models.transforms import letterbox_image

log = logging.getLogger(__name__)

CROP_TAG = "#normal_crop"  # in Packed.names: "<source name>#normal_crop<k>"


def crop_settings(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """The config's normal-crop settings with defaults, or None when the option is off."""
    raw = (cfg.get("data") or {}).get("normal_crops")
    if not raw or (isinstance(raw, dict) and raw.get("enabled") is False):
        return None
    raw = raw if isinstance(raw, dict) else {}
    return {"per_image": int(raw.get("per_image", 1)), "min_fraction": float(raw.get("min_fraction", 0.4)),
            "dilate_fraction": float(raw.get("dilate_fraction", 0.05)), "seed": int(raw.get("seed", 0)),
            "tries": int(raw.get("tries", 8)), "datasets": raw.get("datasets"),
            **({"fraction": float(raw["fraction"])} if "fraction" in raw else {}),
            **({"mode": _mode(raw["mode"])} if raw.get("mode", "crop") != "crop" else {})}


def _mode(value: Any) -> str:
    if value not in ("crop", "fill"):
        raise ValueError(f"data.normal_crops.mode must be 'crop' or 'fill', not {value!r}")
    return str(value)


def _dilated(mask: np.ndarray, dilate_fraction: float) -> np.ndarray:
    m = np.asarray(mask) > 0
    r = int(round(dilate_fraction * max(m.shape)))
    if r <= 0:
        return m
    return cv2.dilate(m.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))) > 0


def _box_sums(m: np.ndarray, bh: int, bw: int) -> np.ndarray:
    """Count of ``m`` pixels in every bh x bw box, indexed by the box's top-left corner."""
    h, w = m.shape
    integral = np.zeros((h + 1, w + 1), np.int64)
    integral[1:, 1:] = m.astype(np.int64).cumsum(0).cumsum(1)
    return integral[bh:, bw:] - integral[:-bh, bw:] - integral[bh:, :-bw] + integral[:-bh, :-bw]


def lesion_free_crops(mask: np.ndarray, n: int, min_fraction: float, rng: np.random.Generator,
                      dilate_fraction: float = 0.05, tries: int = 8) -> list[tuple[int, int, int, int]]:
    """Up to ``n`` boxes ``(y0, y1, x0, x1)`` (half-open) that miss the lesion mask dilated by
    ``dilate_fraction`` of the longer side and span >= ``min_fraction`` of each side.

    Each box draws its height and width fractions from [min_fraction, 1] (up to ``tries`` draws,
    then the minimum size) and a position uniformly among the valid ones; empty list when even
    the minimum box does not fit. Deterministic for the same ``rng`` state. An empty mask gives
    no crops (the image is normal already, or its lesion is not outlined).
    """
    if not np.asarray(mask).any() or n <= 0:
        return []
    m = _dilated(mask, dilate_fraction)
    h, w = m.shape
    hmin, wmin = max(1, int(np.ceil(min_fraction * h))), max(1, int(np.ceil(min_fraction * w)))

    def valid_origins(bh: int, bw: int) -> np.ndarray:
        return np.argwhere(_box_sums(m, bh, bw) == 0)  # (y0, x0) of boxes with no dilated-lesion pixel

    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(n):
        sizes = [(int(rng.integers(hmin, h + 1)), int(rng.integers(wmin, w + 1))) for _ in range(tries)]
        for bh, bw in [*sizes, (hmin, wmin)]:
            ok = valid_origins(bh, bw)
            if len(ok):
                y0, x0 = (int(v) for v in ok[int(rng.integers(len(ok)))])
                boxes.append((y0, y0 + bh, x0, x0 + bw))
                break
        else:
            break  # not even the smallest box fits: no more tries will
    return boxes


def lesion_filled(gray: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                  dilate_fraction: float = 0.05, candidates: int = 256) -> np.ndarray | None:
    """``gray`` with its (dilated) lesion covered by a lesion-free patch of the same image, or None.

    The patch is the lesion's bounding box plus a feather margin, taken from wherever the whole box
    misses the dilated lesion and its tissue best matches the target's surroundings (mean absolute
    difference over the box's lesion-free ring, plus how far the patch's centre departs from the
    ring's mean and spread, among up to ``candidates`` positions drawn by ``rng``), so a shadow or
    a fat lobule is not pasted in place of the lesion. It is blended in through the dilated mask
    blurred over that margin, so no hard seam is left. None when the
    mask is empty or no such box exists (a lesion too wide for its field).
    """
    if not np.asarray(mask).any():
        return None
    h, w = gray.shape
    lesion = _dilated(mask, dilate_fraction)
    feather = max(2, int(round(dilate_fraction * max(h, w))))
    ys, xs = np.nonzero(lesion)
    y0, y1 = max(0, int(ys.min()) - feather), min(h, int(ys.max()) + 1 + feather)
    x0, x1 = max(0, int(xs.min()) - feather), min(w, int(xs.max()) + 1 + feather)
    bh, bw = y1 - y0, x1 - x0
    ring = ~lesion[y0:y1, x0:x1]
    if bh >= h or bw >= w or not ring.any():
        return None  # no room for a patch, or nothing around the lesion to match
    origins = np.argwhere(_box_sums(lesion, bh, bw) == 0)
    if not len(origins):
        return None
    if len(origins) > candidates:
        origins = origins[rng.choice(len(origins), candidates, replace=False)]
    target = gray[y0:y1, x0:x1][ring].astype(np.float32)
    level, spread = float(target.mean()), float(target.std())

    def mismatch(oy: int, ox: int) -> float:
        src = gray[oy:oy + bh, ox:ox + bw].astype(np.float32)
        inner = src[~ring]  # what will cover the lesion: as bright and as textured as the surroundings
        return (float(np.abs(src[ring] - target).mean()) + abs(float(inner.mean()) - level)
                + abs(float(inner.std()) - spread))

    cost = [mismatch(int(oy), int(ox)) for oy, ox in origins]
    sy, sx = (int(v) for v in origins[int(np.argmin(cost))])
    k = 2 * feather + 1
    alpha = cv2.GaussianBlur(lesion[y0:y1, x0:x1].astype(np.float32), (k, k), feather / 2)
    alpha = np.maximum(alpha, (np.asarray(mask)[y0:y1, x0:x1] > 0).astype(np.float32))
    out = gray.astype(np.float32)
    out[y0:y1, x0:x1] = alpha * out[sy:sy + bh, sx:sx + bw] + (1 - alpha) * out[y0:y1, x0:x1]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _record_rng(seed: int, rec: Record) -> np.random.Generator:
    """Per-image stream: the same crops whatever the order or subset of records."""
    return np.random.default_rng([seed, zlib.crc32(f"{rec.dataset}/{rec.image.name}".encode())])


def _drawn(rng: np.random.Generator, settings: dict[str, Any]) -> bool:
    """Does this image give crops? Only ``fraction`` of them do (fewer extra normals, less training
    time); no draw at all without the option, so configs without it crop exactly as before."""
    return "fraction" not in settings or bool(rng.random() < settings["fraction"])


def build_crop_pack(records: list[Record], size: int, settings: dict[str, Any]) -> Packed:
    """Normal crops of every lesion record with a mask (cleaned originals, letterboxed to ``size``)."""
    imgs, names, groups, datasets, conflicts = [], [], [], [], []
    n_src = 0
    for rec in records:
        if rec.label is None or rec.label == 0 or not rec.masks:
            continue
        rng = _record_rng(settings["seed"], rec)
        if not _drawn(rng, settings):
            continue
        try:
            g, m = load_clean_pair(rec)
        except CleaningFailed:
            continue  # the main pack leaves it out too
        if settings.get("mode") == "fill":
            filled = lesion_filled(g, m, rng, settings["dilate_fraction"])
            views = [] if filled is None else [filled]
        else:
            boxes = lesion_free_crops(m, settings["per_image"], settings["min_fraction"], rng,
                                      settings["dilate_fraction"], settings["tries"])
            views = [np.ascontiguousarray(g[y0:y1, x0:x1]) for y0, y1, x0, x1 in boxes]
        n_src += bool(views)
        for k, view in enumerate(views):
            imgs.append(letterbox_image(view, size)[0])
            names.append(f"{rec.image.name}{CROP_TAG}{k}")
            groups.append(rec.group)
            datasets.append(rec.dataset)
            conflicts.append(rec.label_conflict)
    log.info("normal %ss: %d from %d of %d records", settings.get("mode", "crop"), len(imgs), n_src, len(records))
    empty = np.zeros((0, size, size), np.uint8)
    return Packed(
        images=np.stack(imgs) if imgs else empty,
        masks=np.zeros((len(imgs), size, size), np.uint8) if imgs else empty,
        labels=np.zeros(len(imgs), np.int64),
        groups=np.array(groups, dtype=str),
        datasets=np.array(datasets, dtype=str),
        conflicts=np.array(conflicts, dtype=bool),
        names=np.array(names, dtype=str),
    )


def crop_pack_path(ds: dict[str, Any], settings: dict[str, Any], size: int) -> Path:
    key = hashlib.sha256(repr(sorted((k, v) for k, v in settings.items() if k != "datasets")).encode()).hexdigest()[:10]
    base = Path(ds["pack"]) if ds.get("pack") else Path(".pack") / f"{ds['name']}_{size}.npz"
    return base.with_name(f"{base.stem}.normal_crops_{key}.npz")


def wants_crops(ds: dict[str, Any], settings: dict[str, Any]) -> bool:
    only = settings.get("datasets")
    return only is None or ds["name"] in only


def load_or_build_crops(ds: dict[str, Any], records: list[Record] | None, settings: dict[str, Any],
                        size: int, force: bool = False) -> Packed:
    """The dataset's crop pack, built and saved on first use (``records`` read from its index if None)."""
    path = crop_pack_path(ds, settings, size)
    if path.exists() and not force:
        return load_pack(path)
    recs = records if records is not None else read_index(Path(ds["index"]), ds["name"], ds.get("group_column"))
    p = build_crop_pack(recs, size, settings)
    if len(p.labels):
        save_pack(p, path)
        return load_pack(path)  # train on exactly what a later run reads (JPEG round trip)
    return p


def is_crop(data: Packed) -> np.ndarray:
    return np.char.find(data.names.astype(str), CROP_TAG) >= 0


def add_crops_to_train(data: Packed, jobs: dict[str, dict[str, np.ndarray]]) -> None:
    """In place: each job's training set gains the crops whose source group (same dataset) trains in it."""
    crops = np.flatnonzero(is_crop(data))
    if not len(crops):
        return
    for j in jobs.values():
        train_keys = {(d, g) for d, g in zip(data.datasets[j["train"]], data.groups[j["train"]], strict=True)}
        add = [i for i in crops if (data.datasets[i], data.groups[i]) in train_keys]
        j["train"] = np.concatenate([j["train"], np.asarray(add, dtype=j["train"].dtype)])
