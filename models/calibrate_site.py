"""``sonopacs calibrate``: a hospital's labelled images through the one cleaning path and the
network, then the site calibration fitted on them (kept apart from the file format in
``site_calibration``, which the Analyzer loads: that way the Analyzer does not depend on evaluation).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sonopacs.models.data import load_image, load_mask, read_index
from sonopacs.models.evaluation import analyse_image_field
from sonopacs.models.scope import OUT_OF_DISTRIBUTION
from sonopacs.models.site_calibration import SiteCalibration, SiteCalibrationError, fit_site_calibration


@dataclass
class SiteImage:
    """What the Analyzer said about one labelled site image, once: what a site fit is made from."""

    name: str
    label: int
    group: str
    logits: list[float]
    area: float  # the detection mask found, before the presence rule (what a site's rule is fitted on)
    confidence: float
    given: bool  # given a lesion by the Analyzer as loaded
    features: np.ndarray  # the scope gate's features of the reported field
    out_of_bank: bool  # not assessed only because it lies outside the loaded scope bank


def read_site_images(index_csv: Path, analyzer: Any, group_column: str | None = None
                     ) -> tuple[list[SiteImage], int]:
    """Each labelled image of ``index_csv`` once through the one cleaning path and the Analyzer (as
    ``evaluate``). Images not assessed for a reason other than the scope bank (header, colour,
    sector, cleaning) are counted, not kept: returns the kept images and that count."""
    images: list[SiteImage] = []
    skipped = 0
    for rec in read_index(Path(index_csv), group_column=group_column):
        if rec.label is None:
            continue
        img = load_image(rec.image)
        res, _, _ = analyse_image_field(analyzer, img, load_mask([], img.shape[:2]))
        out_of_bank = not res.assessed and (res.not_assessed_reason or "").startswith(OUT_OF_DISTRIBUTION)
        if not res.assessed and not out_of_bank:
            skipped += 1
            continue
        assert res.scope_features is not None  # the Analyzer keeps them on every result
        images.append(SiteImage(rec.image.name, rec.label, rec.group, list(res.extra["logits"]),  # type: ignore[call-overload]
                                float(res.extra["lesion_area_fraction"]),  # type: ignore[arg-type]
                                float(res.extra["lesion_mask_confidence"]),  # type: ignore[arg-type]
                                bool(res.mask.any()), res.scope_features, out_of_bank))
    return images, skipped


def calibrate_index(index_csv: Path, out_file: Path, analyzer: Any, n_boot: int = 200, seed: int = 0
                    ) -> SiteCalibration:
    """``sonopacs calibrate``: clean + analyse every labelled image of ``index_csv`` (the one cleaning
    path, as ``evaluate``), fit on the network's raw logits, write ``out_file``.

    ``analyzer`` must carry the shipped calibration (its biases are kept for normal-vs-lesion when
    the site set has too few normal images). The site's labelled images are breast ultrasound by its
    own account, so with a scope bank loaded their features are kept in the file and pooled into the
    bank (``FeatureBank.with_site``); images the shipped bank alone refused join the fit where the
    pooled one keeps them. Images not assessed for any other reason (header, colour, sector), or
    still outside the pooled bank, are left out of the fit.
    """
    rows, skipped = read_site_images(index_csv, analyzer, fold_group_column(Path(index_csv)))
    bank = analyzer.scope_bank
    features = np.asarray([r.features for r in rows]) if bank is not None and rows else None
    still_out = np.array([r.out_of_bank for r in rows], bool)
    if features is not None:
        still_out &= bank.with_site(features).distance(features) > bank.threshold
    fit = [r for r, out in zip(rows, still_out, strict=True) if not out]
    if not fit:
        raise SiteCalibrationError(f"no assessed labelled image in {index_csv}")
    site = fit_site_calibration(np.asarray([r.logits for r in fit]), np.asarray([r.label for r in fit]),
                                model_name=analyzer.name, model_version=analyzer.version,
                                shipped=analyzer.calibration, shipped_priors=analyzer.class_priors,
                                normal_fraction=analyzer.expected_normal_fraction, n_boot=n_boot, seed=seed,
                                mask_area=np.asarray([r.area for r in fit]),
                                mask_confidence=np.asarray([r.confidence for r in fit]),
                                shipped_presence=analyzer.presence, groups=[r.group for r in fit])
    site.scope_features = features
    n_out = sum(r.out_of_bank for r in rows)
    if n_out:
        site.warnings.append(f"{n_out} of the {len(rows)} images were outside the shipped scope bank; with the site's "
                             f"images pooled into it, {int(still_out.sum())} still are (left out of the fit)")
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
