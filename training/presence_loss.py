"""An image-level "is any lesion here?" loss on the segmenter's own output.

Why: the mask decides lesion presence in service (``models.presence``), yet the Dice + CE loss
barely notices a small confident blob on an image without a lesion (batch Dice counts it among
the batch's pixels, per-pixel CE averages it over the whole frame). At an unseen site the masks
fired on most normal images. This loss scores each image by the mean of its top-k lesion logits
(multiple-instance pooling) and asks that score to say whether the (augmented) truth mask has a
lesion: an empty image must have no confident pixels anywhere, a lesion image some.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def presence_score(seg_logits: torch.Tensor, top_fraction: float) -> torch.Tensor:
    """Per-image lesion logit: mean of the ``top_fraction`` highest lesion-vs-background logits.

    ``seg_logits`` is N x 2 x H x W (background, lesion), as the network returns it."""
    d = (seg_logits[:, 1] - seg_logits[:, 0]).flatten(1)  # the 2-class softmax as one logit
    k = max(1, round(top_fraction * d.shape[1]))
    return d.topk(k, dim=1).values.mean(dim=1)


def presence_loss(seg_logits: torch.Tensor, masks: torch.Tensor, top_fraction: float = 0.005) -> torch.Tensor:
    """Binary cross-entropy of ``presence_score`` against "the truth mask is non-empty".

    ``masks`` is N x 1 x H x W (or N x H x W) after augmentation, so a lesion moved out of the
    frame counts as absent. 0.5 % of a 160 px frame is 128 pixels; a lesion smaller than that (the
    service reports lesions down to 0.2 %, ``models.presence``) pools some background too."""
    present = (masks.flatten(1) > 0.5).any(dim=1).to(seg_logits.dtype)
    return F.binary_cross_entropy_with_logits(presence_score(seg_logits, top_fraction), present)
