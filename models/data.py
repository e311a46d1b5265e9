"""Index CSVs (the ``image,label,mask`` contract) and the packed arrays training reads.

Splits must follow near-duplicate groups (BUSI ``group``) and patients (BUS-BRA ``patient``):
``Record.group`` carries that id, made unique per dataset, so no image's twin crosses a split.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from sonopacs.models.clean import CleaningFailed, clean_for_model, crop_to, field_for_mask
from sonopacs.models.transforms import letterbox_image, letterbox_mask, to_gray
from sonopacs.models.types import CLASSES

log = logging.getLogger(__name__)


@dataclass
class Record:
    image: Path
    label: int | None  # index into CLASSES; None when the CSV gives no label
    masks: list[Path]
    group: str
    dataset: str
    label_conflict: bool = False


def read_index(index_csv: Path, dataset: str | None = None, group_column: str | None = None) -> list[Record]:
    """Read an index CSV; ``group_column`` (e.g. ``group``/``patient``) names the split unit."""
    index_csv = Path(index_csv)
    root = index_csv.parent
    name = dataset or root.name
    out: list[Record] = []
    with index_csv.open(newline="") as f:
        for i, row in enumerate(csv.DictReader(f)):
            lab = (row.get("label") or "").strip().lower()
            if lab and lab not in CLASSES:
                raise ValueError(f"{index_csv}:{i + 2}: unknown label {lab!r}")
            masks = [root / m.strip() for m in (row.get("mask") or "").split("|") if m.strip()]
            gval = (row.get(group_column) or "").strip() if group_column else ""
            group = f"{name}:{gval}" if gval else f"{name}:img{i}"
            out.append(
                Record(
                    image=root / row["image"].strip(),
                    label=CLASSES.index(lab) if lab else None,
                    masks=masks,
                    group=group,
                    dataset=name,
                    label_conflict=(row.get("label_conflict") or "0").strip() == "1",
                )
            )
    return out


def load_image(path: Path) -> np.ndarray:
    """uint8 HxW or HxWx3 (RGB) from PNG/JPEG."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise OSError(f"cannot read image {path}")
    if img.dtype != np.uint8:
        img = (img.astype(np.float32) / max(float(img.max()), 1.0) * 255).astype(np.uint8)
    if img.ndim == 3:
        img = cv2.cvtColor(img[..., :3], cv2.COLOR_BGR2RGB)
    return img


def load_mask(paths: list[Path], shape: tuple[int, int]) -> np.ndarray:
    """Union of the mask files as bool HxW (empty when there are none)."""
    mask = np.zeros(shape, dtype=bool)
    for p in paths:
        m = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        if m is None:
            raise OSError(f"cannot read mask {p}")
        if m.shape != shape:
            m = cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
        mask |= m > 0
    return mask


def load_clean_pair(rec: Record, clean: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Cleaned grayscale image and its lesion mask in the cleaned geometry.

    Cleans through the one path (``clean_for_model``); the field holding the lesion is used.
    Raises ``CleaningFailed`` when cleaning finds no field.
    """
    img = load_image(rec.image)
    mask = load_mask(rec.masks, img.shape[:2])
    if clean:
        results = clean_for_model(img)
        r = results[field_for_mask(results, mask)]
        img, mask = r.image, crop_to(r, mask)
    return to_gray(img), mask


@dataclass
class Packed:
    """Letterboxed uint8 images/masks at training resolution plus labels and groups."""

    images: np.ndarray  # N x S x S uint8
    masks: np.ndarray  # N x S x S uint8 {0,1}
    labels: np.ndarray  # N int64
    groups: np.ndarray  # N str
    datasets: np.ndarray  # N str
    conflicts: np.ndarray  # N bool
    names: np.ndarray  # N str (image path relative to its CSV)

    def subset(self, idx: np.ndarray) -> Packed:
        return Packed(*(getattr(self, k)[idx] for k in self.__dataclass_fields__))


def build_pack(records: list[Record], size: int, clean: bool = True) -> Packed:
    """Clean, letterbox and collect every record (slow: reads the original files)."""
    imgs, masks, kept = [], [], []
    for rec in records:
        try:
            g, m = load_clean_pair(rec, clean=clean)
        except CleaningFailed as exc:  # a clear per-image outcome: left out, and said so
            log.warning("%s left out of the pack: %s", rec.image, exc)
            continue
        imgs.append(letterbox_image(g, size)[0])
        masks.append(letterbox_mask(m, size))
        kept.append(rec)
    records = kept
    return Packed(
        images=np.stack(imgs),
        masks=np.stack(masks),
        labels=np.array([-1 if r.label is None else r.label for r in records], dtype=np.int64),
        groups=np.array([r.group for r in records]),
        datasets=np.array([r.dataset for r in records]),
        conflicts=np.array([r.label_conflict for r in records]),
        names=np.array([r.image.name for r in records]),
    )


def save_pack(p: Packed, path: Path, jpeg_quality: int = 92) -> None:
    """JPEG images + PNG masks in one npz: ~15 kB/image so both datasets travel in < 64 MiB."""
    enc_i = [cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])[1] for im in p.images]
    enc_m = [cv2.imencode(".png", m * 255)[1] for m in p.masks]
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(
        buf,
        img_bytes=np.concatenate(enc_i).astype(np.uint8),
        img_len=np.array([len(e) for e in enc_i]),
        mask_bytes=np.concatenate(enc_m).astype(np.uint8),
        mask_len=np.array([len(e) for e in enc_m]),
        labels=p.labels,
        groups=p.groups,
        datasets=p.datasets,
        conflicts=p.conflicts,
        names=p.names,
    )
    path.write_bytes(buf.getvalue())


def load_pack(path: Path) -> Packed:
    z = np.load(path)

    def decode(data: np.ndarray, lengths: np.ndarray, flag: int) -> np.ndarray:
        ends = np.cumsum(lengths)
        out = [cv2.imdecode(data[e - n : e], flag) for e, n in zip(ends, lengths, strict=True)]
        if any(o is None for o in out):
            raise ValueError(f"corrupt image in pack {path}")
        return np.stack(out)  # type: ignore[arg-type]

    return Packed(
        images=decode(z["img_bytes"], z["img_len"], cv2.IMREAD_GRAYSCALE),
        masks=(decode(z["mask_bytes"], z["mask_len"], cv2.IMREAD_GRAYSCALE) > 127).astype(np.uint8),
        labels=z["labels"],
        groups=z["groups"],
        datasets=z["datasets"],
        conflicts=z["conflicts"],
        names=z["names"],
    )


def concat_packs(packs: list[Packed]) -> Packed:
    return Packed(*(np.concatenate([getattr(p, k) for p in packs]) for k in Packed.__dataclass_fields__))
