"""AI likelihood category from the calibrated probability of malignancy, on the BI-RADS
likelihood-of-malignancy ranges. An AI likelihood category, not a BI-RADS assessment.

3: <= 2 %, 4A: > 2-10 %, 4B: > 10-50 %, 4C: > 50 and < 95 %, 5: >= 95 %; "1" where no lesion is
found; None where the image is not assessed.
"""

from __future__ import annotations

CATEGORIES = ("1", "3", "4A", "4B", "4C", "5")
LABEL = "AI likelihood category, not a BI-RADS assessment"


def likelihood_category(p_malignant: float, lesion_present: bool = True, assessed: bool = True) -> str | None:
    """The category of one image (see the module docstring for the ranges)."""
    if not assessed:
        return None
    if not lesion_present:
        return "1"
    p = float(p_malignant)
    if p != p:  # NaN: nothing honest to say
        raise ValueError("P(malignant) is NaN")
    if p <= 0.02:
        return "3"
    if p <= 0.10:
        return "4A"
    if p <= 0.50:
        return "4B"
    if p < 0.95:
        return "4C"
    return "5"


def category_rank(category: str) -> int:
    """Ordinal position (1 < 3 < 4A < 4B < 4C < 5), for agreement statistics."""
    return CATEGORIES.index(category)
