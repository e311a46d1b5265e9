"""Benchmark for cleaning/: synthetic burn-ins on BUS-BRA (recall, precision, lesion damage, PSNR/SSIM),
per-frame time, and before/mask/after contact sheets of real scanner images.

    taskset -c 0 python benchmarks/cleaning.py --n 300 --sheets docs/

Numbers go to stdout (and --json FILE); docs/measurements.md quotes them with this command line.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from skimage.metrics import structural_similarity

# run as a script, this file's folder comes first on sys.path and its name shadows the package
sys.path[0] = str(Path(__file__).resolve().parents[1])
from sonopacs.cleaning import Region, burn_in_annotations, clean_image  # noqa: E402


def _gray(path: object) -> np.ndarray:
    """8-bit grayscale image; a missing or unreadable file is an error, not None."""
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise OSError(f"cannot read image {path}")
    return img


BUSBRA = Path("/work/shared/datasets/bus-bra")
BUSI = Path("/work/shared/datasets/busi")
DICOM_SAMPLES = Path("/work/shared/datasets/dicom-samples")
PYDICOM_DATA = [
    "OBXXXX1A.dcm",
    "gdcm-US-ALOKA-16.dcm",
    "US1_UNCR.dcm",
    "color3d_jpeg_baseline.dcm",
    "JPGLosslessP14SV1_1s_1f_8b.dcm",
]


def _read_index(root: Path) -> list[dict[str, str]]:
    with open(root / "index.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def load_dicom(path: str) -> tuple[np.ndarray, list[Region]]:
    """First frame as the pipeline would see it (palette and YBR converted to RGB) plus its regions."""
    import pydicom
    from pydicom.pixels import apply_color_lut

    ds = pydicom.dcmread(path)
    arr = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        arr = arr[0]
    if ds.PhotometricInterpretation == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        if arr.dtype != np.uint8:
            arr = (arr >> 8).astype(np.uint8)
    return arr, regions_from_dataset(ds)


def regions_from_dataset(ds: Any) -> list[Region]:
    regions = []
    for r in ds.get("SequenceOfUltrasoundRegions", []):
        spacing = None
        if int(r.get("PhysicalUnitsXDirection", 0)) == 3 and int(r.get("PhysicalUnitsYDirection", 0)) == 3:
            spacing = (float(r.PhysicalDeltaY) * 10.0, float(r.PhysicalDeltaX) * 10.0)
        regions.append(
            Region(
                int(r.RegionLocationMinX0),
                int(r.RegionLocationMinY0),
                int(r.RegionLocationMaxX1),
                int(r.RegionLocationMaxY1),
                int(r.RegionSpatialFormat),
                int(r.RegionDataType),
                spacing,
            )
        )
    return regions


def _full_frame_mask(results: list, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Removed-pixel mask, cleaned image and kept-field mask, pasted back into the source frame."""
    removed = np.ones(shape, bool)  # whatever is cropped away is gone too
    kept = np.zeros(shape, bool)
    cleaned = np.zeros(shape, np.uint8)
    for r in results:
        y, x = r.offset
        h, w = r.image.shape[:2]
        removed[y : y + h, x : x + w] = r.annotation_mask
        kept[y : y + h, x : x + w] = True
        cleaned[y : y + h, x : x + w] = (
            r.image if r.image.ndim == 2 else cv2.cvtColor(r.image, cv2.COLOR_RGB2GRAY)
        )
    return removed, cleaned, kept


def _one_per_patient(fold: str) -> dict[str, dict[str, str]]:
    """The first index row of each BUS-BRA patient in a fold: images of one patient are near-duplicates."""
    by_patient: dict[str, dict[str, str]] = {}
    for row in _read_index(BUSBRA):
        if row["fold5"] == fold:
            by_patient.setdefault(row["patient"], row)
    return by_patient


def synthetic(n: int, seed: int, fold: str = "1") -> dict[str, float]:
    """Burn annotations into n BUS-BRA images (one per patient) and score what clean_image removes.

    Fold 1 is the test fold (no detector was trained on it); fold 2 is where thresholds are tuned.
    """
    rng = np.random.default_rng(seed)
    by_patient = _one_per_patient(fold)
    picks = [by_patient[p] for p in rng.permutation(sorted(by_patient))[:n]]
    tp = fp = fn = fp_native = 0
    tp_clear = n_clear = 0
    lesion_total = lesion_removed = lesion_removed_native = 0
    field_lost = field_total = 0
    psnr_clean, psnr_dirty, ssim_clean, ssim_dirty = [], [], [], []
    psnr_clean_nn, ssim_clean_nn = [], []
    per_image_recall = []
    for row in picks:
        original = _gray(BUSBRA / row["image"])
        lesion = _gray(BUSBRA / row["mask"]) > 127
        dirty, truth = burn_in_annotations(original, rng)
        results = clean_image(dirty)
        removed, cleaned, kept = _full_frame_mask(results, original.shape)
        native, _, _ = _full_frame_mask(clean_image(original), original.shape)
        tp += int((removed & truth).sum())
        fn += int((~removed & truth).sum())
        fp += int((removed & ~truth).sum())
        fp_native += int((removed & ~truth & ~native).sum())
        # "clear" annotation pixels: changed by >= 40 grey levels (faint marks over bright tissue are
        # the hardest case and the least harmful one)
        change = np.abs(dirty.astype(np.int16) - (original if dirty.ndim == 2 else original[:, :, None]))
        clear = truth & ((change.max(axis=2) if change.ndim == 3 else change) >= 40)
        tp_clear += int((removed & clear).sum())
        n_clear += int(clear.sum())
        per_image_recall.append((removed & truth).sum() / max(1, truth.sum()))
        lesion_total += int(lesion.sum())
        lesion_removed += int((removed & lesion & ~truth).sum())
        lesion_removed_native += int((removed & lesion & ~truth & ~native).sum())
        field_total += original.size
        field_lost += int((~kept).sum())
        grey_dirty = dirty if dirty.ndim == 2 else cv2.cvtColor(dirty, cv2.COLOR_RGB2GRAY)
        psnr_clean.append(cv2.PSNR(np.where(kept, cleaned, original), original))
        psnr_dirty.append(cv2.PSNR(grey_dirty, original))
        ssim_clean.append(structural_similarity(np.where(kept, cleaned, original), original, data_range=255))
        ssim_dirty.append(structural_similarity(grey_dirty, original, data_range=255))
        # the same, leaving out pixels the cleaner also removes from the un-annotated original
        # (BUS-BRA's own calipers and text): erasing those is wanted, not an error
        keep = ~native
        after = np.where(kept, cleaned, original).astype(np.float64)
        mse = float(np.mean((after[keep] - original[keep]) ** 2)) if keep.any() else 0.0
        psnr_clean_nn.append(10 * np.log10(255.0**2 / max(mse, 1e-3)))
        _, ssim_map = structural_similarity(after.astype(np.uint8), original, data_range=255, full=True)
        ssim_clean_nn.append(float(ssim_map[keep].mean()) if keep.any() else 1.0)
    return {
        "images": len(picks),
        "recall": tp / max(1, tp + fn),
        "recall_clear_pixels": tp_clear / max(1, n_clear),
        "precision": tp / max(1, tp + fp),
        "precision_excl_native": tp / max(1, tp + fp_native),
        "median_image_recall": float(np.median(per_image_recall)),
        "lesion_pixels_removed_fraction": lesion_removed / max(1, lesion_total),
        "lesion_pixels_removed_excl_native": lesion_removed_native / max(1, lesion_total),
        "field_pixels_cropped_fraction": field_lost / max(1, field_total),
        "psnr_annotated_db": float(np.mean(psnr_dirty)),
        "psnr_cleaned_db": float(np.mean(psnr_clean)),
        "ssim_annotated": float(np.mean(ssim_dirty)),
        "ssim_cleaned": float(np.mean(ssim_clean)),
        "psnr_cleaned_excl_native_db": float(np.mean(psnr_clean_nn)),
        "ssim_cleaned_excl_native": float(np.mean(ssim_clean_nn)),
    }


def timing(repeats: int, seed: int) -> dict[str, float]:
    """Milliseconds per 800x600 frame (BUS-BRA resized and annotated; real DICOM at 800x600)."""
    cv2.setNumThreads(1)
    rows = list(_read_index(BUSBRA))
    rng = np.random.default_rng(seed)
    frames: list[tuple[np.ndarray, list[Region] | None]] = []
    for i in rng.choice(len(rows), 10, replace=False):
        img = cv2.resize(_gray(BUSBRA / rows[int(i)]["image"]), (800, 600))
        frames.append((burn_in_annotations(img, rng)[0], None))
    from pydicom.data import get_testdata_file

    ob, ob_regions = load_dicom(str(get_testdata_file("OBXXXX1A.dcm")))
    frames.append((ob, ob_regions))
    frames.append((ob, None))
    for f, r in frames:  # warm-up
        clean_image(f, r)
    times = []
    for _ in range(repeats):
        for f, r in frames:
            t = time.perf_counter()
            clean_image(f, r)
            times.append((time.perf_counter() - t) * 1000)
    return {
        "ms_median": float(np.median(times)),
        "ms_p95": float(np.percentile(times, 95)),
        "ms_max": float(np.max(times)),
        "frames": len(times),
    }


def _panel(before: np.ndarray, results: list, width: int) -> np.ndarray:
    """One row of a contact sheet: source frame, removed-pixel mask (red) on grey, cleaned crops."""
    src = before if before.ndim == 3 else cv2.cvtColor(before, cv2.COLOR_GRAY2RGB)
    grey = cv2.cvtColor(src, cv2.COLOR_RGB2GRAY)
    removed, cleaned, kept = _full_frame_mask(results, grey.shape)
    overlay = cv2.cvtColor(grey // 2, cv2.COLOR_GRAY2RGB)
    overlay[removed & kept] = (255, 0, 0)
    overlay[~kept] = (0, 0, 90)
    after = cv2.cvtColor(np.where(kept, cleaned, 0).astype(np.uint8), cv2.COLOR_GRAY2RGB)
    for r in results:
        y, x = r.offset
        h, w = r.image.shape[:2]
        cv2.rectangle(after, (x, y), (x + w - 1, y + h - 1), (0, 200, 0), 2)
    row = np.hstack([src, overlay, after])
    scale = width / row.shape[1]
    return cv2.resize(row, (width, max(1, int(row.shape[0] * scale))), interpolation=cv2.INTER_AREA)


def _label(panel: np.ndarray, text: str) -> np.ndarray:
    bar = np.zeros((18, panel.shape[1], 3), np.uint8)
    cv2.putText(bar, text, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
    return np.vstack([bar, panel])


def _write_png(path: Path, rgb: np.ndarray) -> None:
    """256-colour PNG: contact sheets live in git, and a palette keeps each to a few hundred KB."""
    from PIL import Image

    Image.fromarray(rgb).quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def sheets(out_dir: Path, seed: int) -> list[str]:
    """Contact sheets (before | removed in red, cropped-away in blue | after, field boxes in green)."""
    from pydicom.data import get_testdata_file

    out_dir.mkdir(parents=True, exist_ok=True)
    width = 780
    written = []
    dicom_paths = [str(get_testdata_file(f)) for f in PYDICOM_DATA] + sorted(
        glob.glob(str(DICOM_SAMPLES / "*.dcm"))
    )
    panels = []
    for p in dicom_paths:
        arr, regions = load_dicom(p)
        for use, tag in ((regions, "regions"), (None, "pixels")):
            if tag == "regions" and not regions:
                continue
            res = clean_image(arr, use)
            s = res[0].summary
            panels.append(
                _label(
                    _panel(arr, res, width),
                    f"{Path(p).name} [{tag}] fields={len(res)} flags={s['flags']} "
                    f"removed={s['fraction_removed']:.3f} conf={s['confidence']}",
                )
            )
    for i in range(0, len(panels), 6):
        path = out_dir / f"cleaning_dicom_{i // 6 + 1}.png"
        _write_png(path, np.vstack(panels[i : i + 6]))
        written.append(str(path))
    # BUSI: of 60 random lesion images, the 5 where the cleaner removes most (calipers and text
    # are common there; false detections would show up here too)
    rng = np.random.default_rng(seed)
    busi_rows = [r for r in _read_index(BUSI) if r["label"] != "normal"]
    scored = []
    for i in rng.choice(len(busi_rows), 60, replace=False):
        img = _gray(BUSI / busi_rows[int(i)]["image"])
        res = clean_image(img)
        fraction = res[0].summary["fraction_removed"]
        assert isinstance(fraction, float)
        scored.append((fraction, busi_rows[int(i)]["image"], img, res))
    scored.sort(key=lambda t: -t[0])
    panels = [
        _label(_panel(img, res, width), f"BUSI {name} removed={frac:.3f}")
        for frac, name, img, res in scored[:5]
    ]
    path = out_dir / "cleaning_busi.png"
    _write_png(path, np.vstack(panels))
    written.append(str(path))
    bb_rows = [r for r in _read_index(BUSBRA) if r["fold5"] == "1"]  # patients the detector never saw
    panels = []
    for i in rng.choice(len(bb_rows), 4, replace=False):
        img = _gray(BUSBRA / bb_rows[int(i)]["image"])
        dirty, _ = burn_in_annotations(img, rng)
        panels.append(
            _label(
                _panel(dirty, clean_image(dirty), width), f"BUS-BRA {bb_rows[int(i)]['image']} + synthetic"
            )
        )
    path = out_dir / "cleaning_synthetic.png"
    _write_png(path, np.vstack(panels))
    written.append(str(path))
    path = out_dir / "cleaning_native.png"
    _write_png(path, native_sheet(bb_rows, rng, width))
    written.append(str(path))
    return written


def native_sheet(rows: list[dict[str, str]], rng: np.random.Generator, width: int) -> np.ndarray:
    """What the cleaner removes from un-annotated fold-1 originals (the pixels the benchmark's second
    precision does not count): 8 random originals with any removal, two per row, so a reader can
    check that they are BUS-BRA's own calipers and text and not tissue."""
    panels = []
    for i in rng.permutation(len(rows)):
        img = _gray(BUSBRA / rows[int(i)]["image"])
        res = clean_image(img)
        if not res[0].annotation_mask.any():
            continue
        removed, _, kept = _full_frame_mask(res, img.shape)
        over = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
        over[removed & kept] = (255, 0, 0)
        over[~kept] = (0, 0, 90)
        pair = cv2.resize(np.hstack([cv2.cvtColor(img, cv2.COLOR_GRAY2RGB), over]), (width // 2, width // 4))
        panels.append(
            _label(pair, f"{rows[int(i)]['image']} removed={res[0].summary['fraction_removed']:.4f}")
        )
        if len(panels) == 8:
            break
    while len(panels) % 2:
        panels.append(np.zeros_like(panels[0]))
    return np.vstack([np.hstack(panels[j : j + 2]) for j in range(0, len(panels), 2)])


def native_audit(n: int, seed: int, out_dir: Path) -> list[str]:
    """Sheets for judging by eye what the cleaner removes from un-annotated fold-1 originals.

    Pixels are drawn uniformly from everything removed, so the share a reviewer calls tissue
    estimates the tissue share of the native removals, which sets where true precision lies
    between the strict and the native-excluded figure. Each tile: 64x64 original | removal in red,
    sampled pixel circled in green; `cleaning_audit.csv` lists the tiles for recording judgments.
    """
    by_patient = _one_per_patient("1")
    names, images, masks = [], [], []
    for patient in sorted(by_patient):
        img = _gray(BUSBRA / by_patient[patient]["image"])
        removed, _, kept = _full_frame_mask(clean_image(img), img.shape)
        names.append(by_patient[patient]["image"])
        images.append(img)
        masks.append(removed & kept)
    counts = np.array([int(m.sum()) for m in masks])
    picks = np.sort(np.random.default_rng(seed).choice(int(counts.sum()), n, replace=False))
    starts = np.concatenate([[0], np.cumsum(counts)])
    out_dir.mkdir(parents=True, exist_ok=True)
    tiles, lines = [], ["tile,image,row,column,judgement"]
    r = 32
    for k, flat in enumerate(picks):
        i = int(np.searchsorted(starts, flat, side="right") - 1)
        ys, xs = np.nonzero(masks[i])
        y, x = int(ys[flat - starts[i]]), int(xs[flat - starts[i]])
        pad_img = np.pad(images[i], r)
        pad_mask = np.pad(masks[i], r)
        crop = cv2.cvtColor(pad_img[y:y + 2 * r, x:x + 2 * r], cv2.COLOR_GRAY2RGB)
        marked = crop.copy()
        marked[pad_mask[y:y + 2 * r, x:x + 2 * r]] = (255, 0, 0)
        cv2.circle(marked, (r, r), 3, (0, 255, 0), 1)
        tile = cv2.resize(np.hstack([crop, np.zeros((2 * r, 2, 3), np.uint8), marked]), None, fx=2, fy=2,
                          interpolation=cv2.INTER_NEAREST)
        tiles.append(np.pad(_label(tile, str(k)), ((0, 4), (0, 4), (0, 0))))
        lines.append(f"{k},{names[i]},{y},{x},")
    written = []
    for s in range(0, len(tiles), 30):
        chunk = tiles[s:s + 30]
        chunk += [np.zeros_like(tiles[0])] * (-len(chunk) % 5)
        path = out_dir / f"cleaning_audit_{s // 30 + 1}.png"
        _write_png(path, np.vstack([np.hstack(chunk[j:j + 5]) for j in range(0, len(chunk), 5)]))
        written.append(str(path))
    (out_dir / "cleaning_audit.csv").write_text("\n".join(lines) + "\n")
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=300, help="synthetic images (one per BUS-BRA patient)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=5, help="timing passes over 12 frames")
    ap.add_argument("--sheets", type=Path, default=None, help="write contact sheets into this folder")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--skip-synthetic", action="store_true")
    ap.add_argument("--fold", default="1", help="BUS-BRA fold of the synthetic set (1: test, 2: tuning)")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--audit", type=int, default=0, metavar="N",
                    help="write sheets of N pixels drawn from the native removals (into --sheets) and stop")
    args = ap.parse_args()
    report: dict[str, Any] = {}
    if args.audit:
        print("\n".join(native_audit(args.audit, args.seed, args.sheets or Path("."))))
        return
    if not args.skip_synthetic:
        report["synthetic"] = synthetic(args.n, args.seed, args.fold)
        print(json.dumps({"synthetic": report["synthetic"]}, indent=1))
    if not args.skip_timing:
        report["timing_800x600"] = timing(args.repeats, args.seed)
        print(json.dumps({"timing_800x600": report["timing_800x600"]}, indent=1))
    if args.sheets:
        report["sheets"] = sheets(args.sheets, args.seed)
        print("\n".join(report["sheets"]))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
