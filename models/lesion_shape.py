"""Shape of the network's own lesion mask, as features for the calibration.

Why: BI-RADS describes malignancy by shape (irregular, not circumscribed, taller than wide); a
logistic layer on the classifier's logits plus these few numbers lets the classification use what
the segmentation decoder already found. Always computed on the mirror-averaged lesion probability
in the network's letterboxed frame (what ``training.predict`` returns), so that the features seen
when the calibration is fitted and at inference are the same numbers.
"""

from __future__ import annotations

import cv2
import numpy as np

from sonopacs.models.measure import lesion_mask

SHAPE_FEATURES = (
    "lesion_present",      # the post-processed mask is non-empty
    "log_area_fraction",   # log of the mask's share of the frame (floored at 1e-3)
    "peak_probability",    # max lesion probability anywhere
    "mean_probability",    # mean lesion probability inside the mask
    "log_height_over_width",  # bounding box, > 0 = taller than wide
    "solidity",            # area / convex-hull area: < 1 for lobulated, angular margins
    "circularity",         # 4 pi area / perimeter^2: 1 for a disc
)
_MIN_FRACTION = 1e-3


def shape_features(prob: np.ndarray) -> np.ndarray:
    """One image's features, in ``SHAPE_FEATURES`` order; neutral values where there is no lesion."""
    p = np.asarray(prob, np.float32)
    mask = lesion_mask(p)
    peak = float(p.max()) if p.size else 0.0
    if not mask.any():
        return np.array([0.0, np.log(_MIN_FRACTION), peak, 0.0, 0.0, 1.0, 1.0])
    area = float(mask.sum())
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cnt = max(contours, key=cv2.contourArea)
    _, _, w, h = cv2.boundingRect(cnt)
    hull_area = float(cv2.contourArea(cv2.convexHull(cnt)))
    perimeter = float(cv2.arcLength(cnt, True))
    solidity = min(1.0, area / hull_area) if hull_area > 0 else 1.0
    circularity = min(1.0, 4.0 * np.pi * area / perimeter**2) if perimeter > 0 else 1.0
    return np.array([1.0, np.log(max(area / mask.size, _MIN_FRACTION)), peak, float(p[mask].mean()),
                     float(np.log(h / w)), solidity, circularity])


def shape_feature_matrix(prob_maps: np.ndarray) -> np.ndarray:
    """N x len(SHAPE_FEATURES) for a stack of lesion probability maps."""
    return np.stack([shape_features(p) for p in prob_maps]) if len(prob_maps) else np.zeros((0, len(SHAPE_FEATURES)))
