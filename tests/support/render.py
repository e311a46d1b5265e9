"""Render results for eyes: an SC as PNG, an SR through DCMTK dsr2html and headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pydicom
from PIL import Image


def sc_png(sc: pydicom.Dataset, out: Path) -> Path:
    Image.fromarray(sc.pixel_array).save(out)
    return out


def render_sr_png(sr_path: Path, out: Path, width: int = 1100, height: int = 1500) -> Path:
    """dsr2html -> HTML -> Chromium --headless --screenshot."""
    html = out.with_suffix(".html")
    subprocess.run(["dsr2html", "+U8", "+Ra", "+Rt", "+Cm", str(sr_path), str(html)], check=True, capture_output=True, timeout=60)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or "chromium"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--hide-scrollbars",
            f"--window-size={width},{height}",
            f"--screenshot={out}",
            html.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out
