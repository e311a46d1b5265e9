"""Inference speed of the shipped model (a benchmark, not a test).

CPU: seconds per image of the full ``Analyzer.analyze`` (letterbox, mirror TTA, Grad-CAM, mask,
measurement) with the torch thread count of this machine (or ``--threads``): wall-clock median and
mean, the process CPU seconds per image (less sensitive to other jobs on shared cores), and the
1-minute load average before and after the run. GPU (when CUDA is present): images/s at
batch 64 for the full ``Analyzer.analyze_batch`` and for the bare network forward, side by side
with a randomly initialised ViT-B/16 classifier (MONAI ``ViT``, 224 px, 86M parameters), the size
the seed model cards use.

    python benchmarks/inference.py [--images DIR] [--n 20] [--threads K] [--json OUT.json]
        [--weights DIR]...   (default: the shipped weights; several folders are measured side by side)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sonopacs.models import Analyzer  # noqa: E402
from sonopacs.models.analyzer import DEFAULT_WEIGHTS  # noqa: E402


def _gray(path: object) -> np.ndarray:
    """8-bit grayscale image; a missing or unreadable file is an error, not None."""
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise OSError(f"cannot read image {path}")
    return img


def sample_images(folder: Path | None, n: int) -> list[np.ndarray]:

    if folder is not None and folder.exists():
        files = sorted(
            p
            for p in folder.rglob("*")
            if p.suffix.lower() in {".png", ".jpg", ".jpeg"} and "mask" not in p.name.lower()
        )[:n]
        imgs = [_gray(p) for p in files]
        if imgs:
            return [imgs[i % len(imgs)] for i in range(n)]
    rng = np.random.default_rng(0)
    return [rng.gamma(2.0, 40.0, (400, 520)).clip(0, 255).astype(np.uint8) for _ in range(n)]


def bench_cpu(images: list[np.ndarray], weights: Path | None = None) -> dict[str, float]:
    an = Analyzer.load(weights, device="cpu")
    an.analyze(images[0], (0.1, 0.1))  # warm-up
    load_before = os.getloadavg()[0]
    times, cpu = [], []
    for img in images:
        t, c = time.perf_counter(), time.process_time()
        an.analyze(img, (0.1, 0.1))
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    # the median resists other processes sharing the cores; the mean is reported beside it
    return {
        "seconds_per_image": float(np.median(times)),
        "seconds_per_image_mean": float(np.mean(times)),
        "cpu_seconds_per_image_median": float(np.median(cpu)),
        "n": len(times),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count() or 0,
        "load_average_1min_before": load_before,
        "load_average_1min": os.getloadavg()[0],
    }


def _rate(fn, batch: int, reps: int) -> float:
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return batch * reps / (time.perf_counter() - t)


def bench_gpu(images: list[np.ndarray], weights: Path | None = None, batch: int = 64, reps: int = 10
              ) -> dict[str, object]:
    from monai.networks.nets import ViT

    dev = torch.device("cuda")
    an = Analyzer.load(weights, device="cuda")
    imgs = [images[i % len(images)] for i in range(batch)]
    out: dict[str, object] = {"device": torch.cuda.get_device_name(0), "batch": batch}
    out["analyzer_full_images_per_s"] = _rate(lambda: an.analyze_batch(imgs), batch, max(2, reps // 3))
    x = torch.rand(batch, 1, an.size, an.size, device=dev)
    vit = (
        ViT(
            in_channels=1,
            img_size=(224, 224),
            patch_size=(16, 16),
            hidden_size=768,
            mlp_dim=3072,
            num_layers=12,
            num_heads=12,
            classification=True,
            num_classes=3,
            spatial_dims=2,
        )
        .to(dev)
        .eval()
    )
    xv = torch.rand(batch, 1, 224, 224, device=dev)
    from sonopacs.models.networks import build_network

    # counted on an unfused copy: the Analyzer folds BatchNorm into the convolutions
    out["ours_params_m"] = sum(p.numel() for p in build_network(an.manifest["model"], pretrained=False).parameters()) / 1e6
    out["vit_b16_params_m"] = sum(p.numel() for p in vit.parameters()) / 1e6
    for prec, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        with torch.no_grad(), torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            out[f"ours_forward_{prec}_images_per_s"] = _rate(lambda: an.net(x), batch, reps)
            out[f"vit_b16_forward_{prec}_images_per_s"] = _rate(lambda: vit(xv), batch, reps)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=Path, default=Path(__file__).resolve().parents[1] / "tests/data/bus-bra")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--skip-cpu", action="store_true")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads for the CPU run (default: torch's)")
    ap.add_argument("--weights", type=Path, action="append", help="weights folder (repeatable; default: shipped)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    images = sample_images(a.images, a.n)
    res: dict[str, object] = {"python": platform.python_version(), "torch": torch.__version__}
    for w in a.weights or [None]:
        manifest = json.loads(((w or DEFAULT_WEIGHTS) / "model.json").read_text())
        entry: dict[str, object] = {"model": manifest.get("name"), "version": manifest.get("version")}
        if not a.skip_cpu:
            entry["cpu"] = bench_cpu(images, w)
        if torch.cuda.is_available():
            entry["gpu"] = bench_gpu(images, w)
        res[str(w or "shipped")] = entry
    text = json.dumps(res, indent=2)
    print(text)
    if a.json:
        a.json.write_text(text)


if __name__ == "__main__":
    main()
