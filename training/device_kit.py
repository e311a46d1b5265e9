"""Get a training config ready for one call on the lent accelerator machine (``device`` tool).

That machine has PyTorch but not MONAI, cannot download, and a call carries at most 64 MiB of the
working tree. ``prepare`` packs the data at training resolution (``.pack/``), puts the MONAI wheel
and the ImageNet start (the encoder's tensors in fp16: 7-9 MB instead of a 17-23-MB wheel) in
``.device/``, checks that everything that will travel fits, and prints the call to make.
``training/device_run.sh`` is the other half: it runs on that machine.

    python -m sonopacs.training.device_kit prepare --config models/configs/sonopacs_bus_v4.yaml [--minutes 6]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import yaml

from sonopacs.training.pack import pack_config

DEVICE_DIR = Path(".device")
LIMIT_BYTES = 64 * 2**20  # what one device call may carry: the working tree and the carried paths
DEVICE_PYTHON = "3.12"  # the accelerator image's python3


def _tree_bytes() -> int:
    """Tracked files plus untracked files git does not ignore: what travels without ``carry``."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         check=True, capture_output=True).stdout
    return sum(Path(p).stat().st_size for p in out.decode().split("\0") if p and Path(p).is_file())


def _folder_bytes(paths: list[Path]) -> int:
    return sum(f.stat().st_size for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())


def download_wheels(dest: Path) -> list[Path]:
    """MONAI's wheel, same version as here (pure Python; the machine has its other needs)."""
    dest.mkdir(parents=True, exist_ok=True)
    spec = f"monai=={metadata.version('monai')}"
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", DEVICE_PYTHON, "--implementation", "cp", "-d", str(dest), spec],
                   check=True)
    return sorted(dest.glob("*.whl"))


def prepare(config: Path, minutes: float) -> int:
    cfg = yaml.safe_load(config.read_text())
    packs = [Path(ds["pack"]) for ds in cfg["data"]["datasets"]]
    pack_config(config)
    if DEVICE_DIR.exists():
        shutil.rmtree(DEVICE_DIR)  # only this config's start and one MONAI wheel travel (two stop the install)
    wheels = download_wheels(DEVICE_DIR / "whl")
    model = cfg.get("model", {})
    if model.get("pretrained"):
        from sonopacs.models.efficientnet_lite import export_imagenet_encoder

        if model.get("pretrained_precision", "fp32") != "fp16":
            print("warning: the exported start is fp16; set model.pretrained_precision: fp16 so the "
                  "device and the CPU start alike", file=sys.stderr)
        export_imagenet_encoder(str(model["backbone"]), DEVICE_DIR / "imagenet")
    sizes = {"working tree": _tree_bytes(), "packs (.pack)": _folder_bytes(packs),
             "wheels + ImageNet start (.device)": _folder_bytes([DEVICE_DIR])}
    for what, n in sizes.items():
        print(f"{what:36s} {n / 2**20:6.1f} MiB")
    total = sum(sizes.values())
    print(f"{'total (limit 64 MiB)':36s} {total / 2**20:6.1f} MiB; wheels: {', '.join(w.name for w in wheels)}")
    carry = [*(str(p) for p in packs), str(DEVICE_DIR)]  # the files, not .pack/: it may hold other sizes
    print("\ndevice call (run tool):")
    print(f"  command: bash training/device_run.sh {config} {minutes:g}")
    print(f"  carry:   {carry}")
    print("  timeout_s: 600")
    if total > LIMIT_BYTES:
        print("too large to travel: lower data.image_size or the packs' JPEG quality", file=sys.stderr)
        return 1
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="packs, wheels, ImageNet start, size check, the call to make")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--minutes", type=float, default=6.0, help="minutes for the timing probe and the training (the call takes ~2 more)")
    a = ap.parse_args()
    sys.exit(prepare(a.config, a.minutes))


if __name__ == "__main__":
    main()
