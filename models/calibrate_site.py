"""``sonopacs calibrate``: a hospital's labelled images through the one cleaning path and the
network, then the site calibration fitted on them (kept apart from the file format in
``site_calibration``, which the Analyzer loads: that way the Analyzer does not depend on evaluation).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from sonopacs.models.data import load_image, load_mask, read_index
from sonopacs.models.evaluation import analyse_image
from sonopacs.models.site_calibration import SiteCalibration, SiteCalibrationError, fit_site_calibration


def calibrate_index(index_csv: Path, out_file: Path, analyzer: Any, n_boot: int = 200, seed: int = 0
                    ) -> SiteCalibration:
    """``sonopacs calibrate``: clean + analyse every labelled image of ``index_csv`` (the one cleaning
    path, as ``evaluate``), fit on the network's raw logits, write ``out_file``.

    ``analyzer`` must carry the shipped calibration (its biases are kept for normal-vs-lesion when
    the site set has too few normal images). Images not assessed by the scope gate are left out
    of the fit.
    """
    logits, labels, areas, confidence, groups = [], [], [], [], []
    skipped = 0
    for rec in read_index(Path(index_csv), group_column=fold_group_column(Path(index_csv))):
        if rec.label is None:
            continue
        img = load_image(rec.image)
        res, _ = analyse_image(analyzer, img, load_mask([], img.shape[:2]))
        if not res.assessed:
            skipped += 1
            continue
        logits.append(res.extra["logits"])
        labels.append(rec.label)
        areas.append(float(res.extra["lesion_area_fraction"]))  # the mask found, before the presence rule
        confidence.append(float(res.extra["lesion_mask_confidence"]))
        groups.append(rec.group)
    if not labels:
        raise SiteCalibrationError(f"no assessed labelled image in {index_csv}")
    site = fit_site_calibration(np.asarray(logits), np.asarray(labels), model_name=analyzer.name,
                                model_version=analyzer.version, shipped=analyzer.calibration,
                                shipped_priors=analyzer.class_priors,
                                normal_fraction=analyzer.expected_normal_fraction, n_boot=n_boot, seed=seed,
                                mask_area=np.asarray(areas), mask_confidence=np.asarray(confidence),
                                shipped_presence=analyzer.presence, groups=groups)
    if skipped:
        site.warnings.append(f"{skipped} images not assessed by the scope gate were left out")
    site.save(out_file)
    return site


def fold_group_column(index_csv: Path) -> str | None:
    """The column that keeps one patient's (or one near-duplicate group's) images in one fold when
    the presence rule is checked out of fold: ``patient``, else ``group``, else none."""
    with index_csv.open(newline="") as f:
        header = next(csv.reader(f), [])
    return next((c for c in ("patient", "group") if c in header), None)
