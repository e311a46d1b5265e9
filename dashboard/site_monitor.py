"""What the model has reported at this site: per model version, the share of assessed images given
a lesion, the share not assessed and the AI likelihood categories, over the last 30 days.

Why: after go-live nobody labels a site's images for us, and a model can behave at a new hospital
as it never did in validation (model card: trained on one dataset, it gave a lesion to about half of
another hospital's normal images). The counts still show it. Two warnings, each only on enough images
that chance alone would rarely raise it (three standard errors, at least 50 images):

- more assessed images given a lesion than the configured share of normal images allows
  (``model.expected_normal_fraction``): lesions drawn on normal tissue, or a site whose images hold
  fewer normal images than configured;
- more images not assessed than the scope gate refuses of breast images in validation (2 %):
  non-breast images routed to sonopacs, or breast images unlike any the model has seen.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from math import sqrt
from typing import TYPE_CHECKING, Any

from sonopacs.dashboard import queries

if TYPE_CHECKING:
    from sonopacs.db import Database

WINDOW = timedelta(days=30)
MIN_IMAGES = 50
# the scope gate's goal for breast images: 0.40 % in-sample; at a hospital it never saw (leave-one-
# dataset-out, model card) the gate refused 18 %, which this warning is there to show
NOT_ASSESSED_IN_VALIDATION = 0.02


def _above(observed: float, expected: float, n: int) -> bool:
    """``observed`` above ``expected`` by more than three binomial standard errors on ``n`` images."""
    return n >= MIN_IMAGES and observed > expected + 3 * sqrt(expected * (1 - expected) / n)


def judge(row: dict[str, Any], expected_normal_fraction: float) -> dict[str, Any]:
    """One model version's counts with their shares and the warnings they raise."""
    assessed = row["lesion"] + row["normal"]
    lesion_share = row["lesion"] / assessed if assessed else None
    not_assessed_share = row["not_assessed"] / row["images"] if row["images"] else None
    expected_lesion = 1 - expected_normal_fraction
    warnings = []
    if lesion_share is not None and _above(lesion_share, expected_lesion, assessed):
        warnings.append(
            f"{lesion_share:.0%} of {assessed} assessed images were given a lesion, where the share of normal "
            f"images the model assumes ({expected_normal_fraction:.0%}: model.expected_normal_fraction, or the "
            f"site calibration's) leaves at most about {expected_lesion:.0%} with one. Either this site's images "
            "hold fewer normal images than assumed, or the model draws lesions on this site's normal tissue: "
            "check with 'sonopacs evaluate' on labelled normal images and run 'sonopacs calibrate'.")
    if not_assessed_share is not None and _above(not_assessed_share, NOT_ASSESSED_IN_VALIDATION, row["images"]):
        warnings.append(
            f"{not_assessed_share:.0%} of {row['images']} images were not assessed (the goal is under "
            f"{NOT_ASSESSED_IN_VALIDATION:.0%} of breast images; at a hospital it never saw, the scope gate refused "
            "18 % in validation). The reasons are in each study's results and the audit log: images that are "
            "not breast B-mode ultrasound are being sent to sonopacs, or this site's breast images look unlike "
            "those the model was trained on: a site calibration ('sonopacs calibrate') brings the site's own "
            "labelled images into the scope gate (18 % -> 3 % in validation).")
    return {**row, "assessed": assessed, "lesion_share": lesion_share, "not_assessed_share": not_assessed_share,
            "expected_lesion_share": expected_lesion, "warnings": warnings}


def site_outcomes(db: Database, expected_normal_fraction: float, now: datetime | None = None) -> dict[str, Any]:
    """The last 30 days of per-image results, judged per model version against the share of normal
    images the Analyzer assumes (the site calibration's when one is active, else the setting)."""
    since = (now or datetime.now(UTC)) - WINDOW
    with db.session() as session:
        counts = queries.image_outcomes(session, since=since)
    fraction = expected_normal_fraction
    models = [{"name": name, "version": version, **judge(row, fraction)}
              for (name, version), row in sorted(counts.items(), reverse=True)]
    return {"since": since, "days": WINDOW.days, "expected_normal_fraction": fraction, "models": models}
