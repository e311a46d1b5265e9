"""`POST /api/v1/analyze`: one uploaded PNG/JPEG/DICOM through the research analysis path.

The upload is checked before the model sees it (size, type by content rather than by name, the
image actually decodes), so a bad file gets a 4xx with a reason instead of a 500. The work is done
by the pipeline's `sonopacs.worker.single_analysis.analyze_files`, the same code as `sonopacs analyze`.
"""

from __future__ import annotations

import base64
import io
import json
import re
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import HTTPException

from sonopacs.worker.findings import get_analyzer
from sonopacs.worker.single_analysis import analyze_files

if TYPE_CHECKING:
    from sonopacs.config import Settings

MAX_UPLOAD_BYTES = 32 * 1024 * 1024
# Samples (rows x columns x bands) of one image, checked from the header before decoding; the
# service passes settings.dicom.max_frame_samples (the same limit as the DICOM door), this is its default.
MAX_SAMPLES = 4096 * 4096 * 3
BUSY_WAIT_SECONDS = 60
# One upload at a time: the model is large and the dashboard shares its host with the worker.
_one_at_a_time = threading.Semaphore(1)
DISCLAIMER = "AI result, for assistance only, not for diagnosis. Research use."


def sniff_kind(data: bytes) -> str | None:
    """png, jpeg or dicom by magic bytes; None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    return None


def _safe_stem(filename: str | None, kind: str) -> str:
    stem = Path(filename or "").stem
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")[:64]
    return stem or f"upload_{kind}"


def validate_upload(data: bytes, filename: str | None, max_samples: int = MAX_SAMPLES) -> tuple[str, str]:
    """(kind, safe file name) or an HTTPException saying what is wrong with the file.

    The declared image size is checked before anything is decoded (a few KB of JPEG may claim
    16000 x 65500 pixels); PIL's own bomb check (MAX_IMAGE_PIXELS) is answered 413 as well.
    """
    if not data:
        raise HTTPException(400, "the uploaded file is empty")
    if len(data) > MAX_UPLOAD_BYTES:
        raise HTTPException(413, f"file is larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MiB")
    kind = sniff_kind(data)
    if kind is None:
        raise HTTPException(415, "not a PNG, JPEG or DICOM (Part 10, with the DICM preamble) file")
    if kind in ("png", "jpeg"):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(data)) as img:  # reads the header only
                width, height = img.size
                samples = width * height * len(img.getbands())
                if samples > max_samples:
                    raise HTTPException(
                        413, f"image of {width}x{height}x{len(img.getbands())} samples over limit {max_samples}"
                    )
                img.load()
        except HTTPException:
            raise
        except Image.DecompressionBombError as exc:
            raise HTTPException(413, f"image refused by the decompression-bomb check: {exc}") from exc
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise HTTPException(422, f"the {kind.upper()} image cannot be decoded: {type(exc).__name__}") from exc
    else:
        from pydicom import dcmread

        try:
            ds = dcmread(io.BytesIO(data))
        except Exception as exc:
            raise HTTPException(422, f"the DICOM file cannot be parsed: {type(exc).__name__}") from exc
        if "PixelData" not in ds and "FloatPixelData" not in ds:
            raise HTTPException(422, "the DICOM file has no pixel data (not an image)")
        try:
            rows, cols = int(ds.Rows), int(ds.Columns)
            spp = int(ds.get("SamplesPerPixel", 1) or 1)
        except (AttributeError, TypeError, ValueError) as exc:
            raise HTTPException(422, "the DICOM file has no usable Rows/Columns") from exc
        if rows * cols * spp > max_samples:  # per frame; compressed frame headers: the pixel reader checks
            raise HTTPException(413, f"frame of {rows}x{cols}x{spp} samples over limit {max_samples}")
    suffix = {"png": ".png", "jpeg": ".jpg", "dicom": ".dcm"}[kind]
    return kind, _safe_stem(filename, kind) + suffix


def _b64(path: Path) -> str | None:
    return base64.b64encode(path.read_bytes()).decode("ascii") if path.is_file() else None


def analyze_upload(settings: Settings, data: bytes, filename: str | None) -> dict[str, Any]:
    """Validate, run the analysis in a temporary folder, return its JSON plus overlay/mask as base64."""
    kind, name = validate_upload(data, filename, settings.dicom.max_frame_samples)
    try:
        get_analyzer(settings)  # loaded once per process; a missing model is our fault, not the file's
    except (ImportError, AttributeError, OSError, NotImplementedError, RuntimeError) as exc:
        raise HTTPException(503, f"analysis engine not installed or not loadable: {type(exc).__name__}: {exc}") from exc
    if not _one_at_a_time.acquire(timeout=BUSY_WAIT_SECONDS):
        raise HTTPException(503, "the analysis engine is busy; try again shortly", headers={"Retry-After": "10"})
    try:
        return _run(settings, analyze_files, data, name, kind)
    finally:
        _one_at_a_time.release()


def _run(settings: Settings, analyze_files: Any, data: bytes, name: str, kind: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sonopacs-analyze-") as tmp:
        src = Path(tmp) / "in" / name
        src.parent.mkdir()
        src.write_bytes(data)
        out = Path(tmp) / "out"
        out.mkdir()
        try:
            results = analyze_files(settings, [src], out)
        except NotImplementedError as exc:
            raise HTTPException(503, f"analysis engine not ready: {exc}") from exc
        result = dict(results[0]) if results else {"error": "the analysis returned nothing"}
        if result.get("error"):
            raise HTTPException(422, f"the image could not be analysed: {result['error']}")
        stem = Path(name).stem
        written = out / f"{stem}.json"
        if written.is_file():  # the documented per-input JSON is the fuller record
            result.update(json.loads(written.read_text()))
        result.pop("input", None)
        result.pop("outputs", None)
        return {
            "disclaimer": DISCLAIMER,
            "filename": name,
            "kind": kind,
            "result": _json_safe(result),
            "overlay_png_base64": _b64(out / f"{stem}_overlay.png"),
            "mask_png_base64": _b64(out / f"{stem}_mask.png"),
        }


def _json_safe(value: Any) -> Any:
    """Drop local file paths (they name a temporary folder that is gone) and keep plain JSON types."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items() if not isinstance(v, Path)}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)
