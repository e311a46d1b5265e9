"""A go-live rehearsal at a stand-in site: part of a dataset the network never trained on is the
hospital's labelled calibration set, the rest is what it then sees.

    python -m sonopacs.training.site_trial runs/RUN/jobs/cross_bus-bra_to_busi \\
        --index ../shared/datasets/busi/index.csv --drop-label-conflict --out runs/site_trial/v8

``site.csv``: whole near-duplicate groups (or patients) drawn in a seeded order until at least
``--site-size`` images, as a hospital would label a sample of its own studies; ``check.csv``: every
other image. Then exactly what a site does (``sonopacs calibrate`` on site.csv) and what it gets
(``sonopacs evaluate`` on check.csv, without and with the site calibration), through the shipped
Analyzer; a job folder gets ``job_eval``'s weights (identity calibration, the fixed presence rule
or, with ``--presence-from``, a run's fitted one).
``summary.json``: both metric sets and the fitted site calibration.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sonopacs.models.analyzer import Analyzer
from sonopacs.models.calibrate_site import calibrate_index
from sonopacs.models.evaluation import evaluate_index
from sonopacs.models.site_calibration import describe
from sonopacs.training.job_eval import KEYS, held_out_index, job_weights, presence_from, write_index

REPORT = (*KEYS, "sensitivity_malignant_high", "specificity_malignant_high")


def split_by_group(index_csv: Path, out_dir: Path, site_size: int, seed: int, group_column: str = "group"
                   ) -> tuple[Path, Path]:
    """``site.csv`` (whole groups in a seeded order until >= ``site_size`` images) and
    ``check.csv`` (the rest) beside each other in ``out_dir``; rows without a group are their own."""
    with index_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    groups: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        groups.setdefault((r.get(group_column) or "").strip() or f"image:{r['image']}", []).append(r)
    order = sorted(groups)
    np.random.default_rng(seed).shuffle(order)
    site: list[dict[str, str]] = []
    taken = set()
    for g in order:
        if len(site) >= site_size:
            break
        site += groups[g]
        taken.add(g)
    check = [r for g in order if g not in taken for r in groups[g]]
    paths = out_dir / "site.csv", out_dir / "check.csv"
    for path, part in zip(paths, (site, check), strict=True):
        write_index(path, list(rows[0]), part)
    return paths


def rehearsal_parser(doc: str | None) -> argparse.ArgumentParser:
    """The arguments every go-live rehearsal takes (``site_trial``, ``site_splits``)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="a weights folder, or a training job folder (runs/RUN/jobs/JOB)")
    ap.add_argument("--index", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--drop-label-conflict", action="store_true")
    ap.add_argument("--site-size", type=int, default=150)
    ap.add_argument("--seed", type=int, default=16, help="the (first) split's seed")
    ap.add_argument("--group-column", default="group")
    ap.add_argument("--expected-normal-fraction", type=float, default=0.4)
    ap.add_argument("--image-size", type=int, default=None,
                    help="for a job folder; default: the size it trained at (its model.pt, else its run's config.yaml)")
    ap.add_argument("--presence-from", type=Path, default=None,
                    help="for a job folder: a model.json whose lesion_presence rule (mask threshold included) "
                         "the job's weights get, e.g. the one its run's finalize fitted")
    ap.add_argument("--members", type=Path, nargs="*", default=[],
                    help="for a job folder: further job folders of the same network, evaluated as one ensemble")
    ap.add_argument("--second-look", type=float, default=None, metavar="FRACTION",
                    help="for a job folder: a second, zoomed look at each found lesion (models.second_look)")
    return ap


def rehearsal_setup(a: argparse.Namespace) -> tuple[Path, Callable[[Path | None], Analyzer]]:
    """The held-out index (in ``a.out``) and a maker of the model's Analyzer, with or without a site
    calibration file; a job folder gets ``job_weights``' folder and no scope bank."""
    a.out.mkdir(parents=True, exist_ok=True)
    index = held_out_index(a.index, a.out / "index.csv", a.drop_label_conflict)
    is_job = not (a.model / "model.json").exists()
    wdir = (job_weights(a.model, a.out / "weights", a.image_size, presence=presence_from(a.presence_from),
                        members=a.members,
                        second_look=None if a.second_look is None else {"fraction": a.second_look})
            if is_job else a.model)

    def analyzer(site_file: Path | None) -> Analyzer:
        return Analyzer.load(wdir, device="cpu", expected_normal_fraction=a.expected_normal_fraction,
                             site_calibration=site_file, scope_gate=not is_job)

    return index, analyzer


def main() -> None:
    a = rehearsal_parser(__doc__).parse_args()
    index, analyzer = rehearsal_setup(a)
    site_csv, check_csv = split_by_group(index, a.out, a.site_size, a.seed, a.group_column)
    site = calibrate_index(site_csv, a.out / "site.json", analyzer(None))
    print(describe(site))
    summary: dict[str, Any] = {"site": site.to_dict()}
    for name, site_file in (("without", None), ("with_site_calibration", a.out / "site.json")):
        m = evaluate_index(check_csv, a.out / name, analyzer=analyzer(site_file))
        summary[name] = {k: m.get(k) for k in REPORT}
    (a.out / "summary.json").write_text(json.dumps(summary, indent=2))
    for k in REPORT:
        print(f"{k:32s} {summary['without'][k]!s:>22} {summary['with_site_calibration'][k]!s:>22}")


if __name__ == "__main__":
    main()
