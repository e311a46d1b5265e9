"""The one cleaning path: training, ``evaluate``, ``analyze`` and the pipeline all clean through
``clean_for_model`` (``sonopacs.cleaning.clean_image`` on every field, with the ultrasound regions
when the source has them).

There is no fallback crop: when cleaning raises or finds no field, ``CleaningFailed`` says why, and
the caller reports it as that image's outcome (the pipeline fails the instance, ``evaluate``
counts the image as not assessed with the reason, training leaves the image out and logs it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sonopacs.cleaning import CleanResult, Region, clean_image


class CleaningFailed(ValueError):
    """Cleaning could not produce a field for this image; the message is the reason."""


def clean_for_model(image: np.ndarray, regions: Sequence[Region] | None = None) -> list[CleanResult]:
    """Every cleaned ultrasound field of one frame (at least one), or ``CleaningFailed``."""
    try:
        results = clean_image(image, list(regions) if regions else None)
    except ValueError as exc:
        raise CleaningFailed(f"cleaning refused the image: {exc}") from exc
    if not results:
        raise CleaningFailed("cleaning found no ultrasound field")
    return results


def field_for_mask(results: list[CleanResult], mask: np.ndarray) -> int:
    """Index of the field holding most of ``mask`` (source geometry); 0 when the mask is empty.

    Training and evaluation with one label per image use this field: the one the lesion is in.
    """
    if len(results) == 1 or not mask.any():
        return 0
    inside = []
    for r in results:
        (r0, c0), (h, w) = r.offset, r.image.shape[:2]
        inside.append(int(mask[r0 : r0 + h, c0 : c0 + w].sum()))
    return int(np.argmax(inside))


def crop_to(result: CleanResult, array: np.ndarray) -> np.ndarray:
    """``array`` (source geometry) cut to the field ``result`` was cleaned from."""
    (r0, c0), (h, w) = result.offset, result.image.shape[:2]
    return array[r0 : r0 + h, c0 : c0 + w]
