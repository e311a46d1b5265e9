"""The image-level presence loss (training/presence_loss.py): a confident blob on an image without
a lesion costs, an empty map there does not, and a lesion image needs confident pixels."""

from __future__ import annotations

import torch

from sonopacs.training.presence_loss import presence_loss, presence_score


def _logits(blob: bool, size: int = 64, strength: float = 6.0) -> torch.Tensor:
    """N=1 x 2 x H x W: background favoured everywhere, the lesion channel high inside a blob."""
    seg = torch.zeros(1, 2, size, size)
    seg[:, 0] = strength
    if blob:
        seg[:, 1, 20:30, 20:30] = 2 * strength
    return seg


def _mask(lesion: bool, size: int = 64) -> torch.Tensor:
    m = torch.zeros(1, 1, size, size)
    if lesion:
        m[:, :, 18:32, 18:32] = 1
    return m


def test_a_blob_on_an_image_without_a_lesion_costs_and_an_empty_map_does_not() -> None:
    false_blob = float(presence_loss(_logits(blob=True), _mask(lesion=False)))
    empty = float(presence_loss(_logits(blob=False), _mask(lesion=False)))
    assert false_blob > 3.0 > 0.01 > empty


def test_a_lesion_image_needs_confident_pixels() -> None:
    found = float(presence_loss(_logits(blob=True), _mask(lesion=True)))
    missed = float(presence_loss(_logits(blob=False), _mask(lesion=True)))
    assert missed > 3.0 > 0.01 > found


def test_the_score_pools_the_top_pixels_only() -> None:
    """100 confident pixels of 4096 dominate a top-0.5 % pool (20 pixels), not a top-50 % one."""
    seg = _logits(blob=True)
    assert float(presence_score(seg, 0.005)) > 5.0
    assert float(presence_score(seg, 0.5)) < 0.0


def test_the_gradient_pushes_false_pixels_down() -> None:
    seg = _logits(blob=True)
    seg[0, 1, 25, 25] += 1.0  # the most confident pixel: surely in the pool
    seg.requires_grad_(True)
    presence_loss(seg, _mask(lesion=False)).backward()
    assert seg.grad is not None
    assert float(seg.grad[0, 1, 25, 25]) > 0.0  # descent lowers the lesion logit there
    assert float(seg.grad[0, 1, 50, 50]) == 0.0  # pixels outside the pool are left alone
