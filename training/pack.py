"""Pack a config's datasets at training resolution: ``python -m sonopacs.training.pack --config FILE``.

Reading, cleaning and letterboxing ~2500 originals is the slow part of training on a CPU; doing it
once yields a compact file that also travels to an accelerator machine.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import yaml

from sonopacs.models.data import build_pack, read_index, save_pack
from sonopacs.training.normal_crops import crop_pack_path, crop_settings, load_or_build_crops, wants_crops

log = logging.getLogger(__name__)


def pack_config(config_path: Path, force: bool = False) -> list[Path]:
    cfg = yaml.safe_load(Path(config_path).read_text())
    size = int(cfg["data"]["image_size"])
    written = []
    for ds in cfg["data"]["datasets"]:
        out = Path(ds["pack"])
        if out.exists() and not force:
            continue
        recs = read_index(Path(ds["index"]), ds["name"], ds.get("group_column"))
        save_pack(build_pack(recs, size), out)
        log.info("packed %d images of %s into %s", len(recs), ds["name"], out)
        written.append(out)
    crops = crop_settings(cfg)
    for ds in cfg["data"]["datasets"] if crops is not None else []:
        out = crop_pack_path(ds, crops, size)
        if not wants_crops(ds, crops) or (out.exists() and not force):
            continue
        load_or_build_crops(ds, None, crops, size, force=True)
        if out.exists():
            written.append(out)
    return written


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO)
    for p in pack_config(Path(a.config), a.force):
        print(p, p.stat().st_size // 1024, "KiB")


if __name__ == "__main__":
    main()
