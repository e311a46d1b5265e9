"""The shipped form of trained networks: half-precision state dicts beside a weights folder's
manifest. Shared by ``finalize`` (the shipped folder) and the lab tools that run a job's network
through the Analyzer (``job_eval``, ``analyzer_oof``)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


def save_half_state(checkpoint: Path, out_file: Path) -> dict[str, Any]:
    """Save a job checkpoint's state dict in half precision (the shipped form: half the bytes, the
    Analyzer computes in float32); the checkpoint back."""
    ck: dict[str, Any] = torch.load(checkpoint, map_location="cpu", weights_only=True)
    torch.save({k: (v.half() if v.is_floating_point() else v) for k, v in ck["state_dict"].items()}, out_file)
    return ck


def save_ensemble_members(checkpoints: Sequence[Path], wdir: Path, model: dict[str, Any]) -> list[str]:
    """Save each job checkpoint beside a weights folder's ``model.pt`` as ``member_K.pt`` (half
    precision); the file names for the manifest's ``ensemble_members``. A checkpoint of another
    network than ``model`` is refused: the Analyzer builds every member from the manifest's model."""
    names = []
    for k, checkpoint in enumerate(checkpoints, start=1):
        if save_half_state(checkpoint, wdir / f"member_{k}.pt").get("model", model) != model:
            raise ValueError(f"{checkpoint.parent} is not the same network as the weights folder's")
        names.append(f"member_{k}.pt")
    return names


def unship(wdir: Path, jobs_dir: Path) -> list[Path]:
    """The inverse of ``finalize``'s writing: a shipped folder's networks as job checkpoints
    (``jobs_dir/final/model.pt`` and one per ``ensemble_member_jobs``), in float32 from the shipped
    half precision. Why: a run folder lost with its machine can still be re-finalized (``train
    --repredict``) from what was shipped, on exactly the weights the Analyzer runs."""
    manifest = json.loads((wdir / "model.json").read_text())
    metrics = wdir / "metrics.json"
    epochs = {k: v.get("best_epoch") for k, v in json.loads(metrics.read_text()).get("jobs", {}).items()} if metrics.exists() else {}
    files = {"final": "model.pt",
             **dict(zip(manifest.get("ensemble_member_jobs", []), manifest.get("ensemble_members", []), strict=True))}
    written = []
    for job, name in files.items():
        state = torch.load(wdir / name, map_location="cpu", weights_only=True)
        out = jobs_dir / job / "model.pt"
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()},
                    "best_epoch": epochs.get(job), "model": manifest["model"], "image_size": int(manifest["image_size"]),
                    "unshipped_from": f"{manifest['name']} {manifest['version']}"}, out)
        written.append(out)
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description="Write a shipped weights folder's networks back as job checkpoints (unship).")
    ap.add_argument("weights", type=Path)
    ap.add_argument("--run", type=Path, required=True, help="the run folder; checkpoints go to RUN/jobs/JOB/model.pt")
    a = ap.parse_args()
    for path in unship(a.weights, a.run / "jobs"):
        print(path)


if __name__ == "__main__":
    main()
