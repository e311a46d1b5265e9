"""Batched ultrasound augmentation on the training device (GPU or CPU), same code either way.

Per-sample MONAI dictionary transforms would keep a GPU waiting on a Python loop; these batched
tensor ops do the same kinds of change in one pass: horizontal flip, small affine + elastic
deformation (one ``grid_sample`` for image and mask), gamma/contrast, multiplicative speckle, blur,
simulated low resolution and synthetic burned-in annotations; opt-in, a decoy fill
(``_decoy_fill``) before all of them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F


def _u(n: int, lo: float, hi: float, g: torch.Generator, dev: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=dev) * (hi - lo) + lo


def _p(n: int, p: float, g: torch.Generator, dev: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=dev) < p


def _scanner_gain(x: torch.Tensor, on: torch.Tensor, strength: float, g: torch.Generator) -> torch.Tensor:
    """Multiply by exp(a smooth random curve over depth plus a gentler one across): TGC and lateral gain."""
    b, _, s, _ = x.shape
    dev = x.device
    depth = F.interpolate(torch.randn(b, 1, 4, 1, generator=g, device=dev) * strength,
                          size=(s, 1), mode="bicubic", align_corners=True)
    lateral = F.interpolate(torch.randn(b, 1, 1, 3, generator=g, device=dev) * strength * 0.5,
                            size=(1, s), mode="bicubic", align_corners=True)
    gain = torch.exp((depth + lateral) * on.float()[:, None, None, None])
    return x * gain


def _sharpen(x: torch.Tensor, on: torch.Tensor, amount: list[float], g: torch.Generator) -> torch.Tensor:
    """Unsharp mask with a random amount (negative: softer): vendors' edge enhancement differs."""
    b = x.shape[0]
    k1 = torch.tensor([1.0, 2.0, 1.0], device=x.device)
    k = (k1[:, None] * k1[None, :]) / 16.0
    smooth = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k[None, None])
    amt = _u(b, amount[0], amount[1], g, x.device) * on.float()
    return x + amt[:, None, None, None] * (x - smooth)


def _free_origins(blocked: torch.Tensor, y0: int, y1: int, x0: int, x1: int, bh: int, bw: int) -> torch.Tensor:
    """(row, col) of every bh x bw box inside [y0, y1) x [x0, x1) with no ``blocked`` pixel."""
    area = blocked[y0:y1, x0:x1].float()
    integral = F.pad(area.cumsum(0).cumsum(1), (1, 0, 1, 0))
    sums = integral[bh:, bw:] - integral[:-bh, bw:] - integral[bh:, :-bw] + integral[:-bh, :-bw]
    return torch.nonzero(sums == 0) + torch.tensor([y0, x0], device=blocked.device)


def _decoy_fill(x: torch.Tensor, y: torch.Tensor, on: torch.Tensor, g: torch.Generator,
                feather: float = 0.05, candidates: int = 8) -> torch.Tensor:
    """Cover a lesion-free ellipse of each chosen image with tissue from another lesion-free box of
    the same image, blended over a feathered edge as ``normal_crops.lesion_filled`` covers a lesion.

    Why: the lesion-filled fields that stand in for normal images carry such a blend where their
    lesion was; put the same kind of blend into lesion images (and normal ones) and it no longer
    tells the classes apart, so the network has to look for the lesion itself. Boxes lie inside the
    image's content (not the letterbox bands) and miss the lesion mask dilated by ``feather``; the
    source is the best of ``candidates`` boxes by how well its edge matches the target's; an image
    where no box fits is left as it is. ``y`` is not changed."""
    b, _, s, _ = x.shape
    dev = x.device
    r = max(1, int(round(feather * s)))
    lesion = F.max_pool2d(y, 2 * r + 1, stride=1, padding=r)[:, 0] > 0
    out = x.clone()

    for i in torch.nonzero(on).flatten().tolist():
        content = x[i, 0] > 0
        rows, cols = torch.nonzero(content.any(1)).flatten(), torch.nonzero(content.any(0)).flatten()
        if not len(rows) or not len(cols):
            continue
        cy0, cy1, cx0, cx1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        bh = max(4 * r, int((cy1 - cy0) * float(_u(1, 0.15, 0.4, g, dev).item())))
        bw = max(4 * r, int((cx1 - cx0) * float(_u(1, 0.15, 0.4, g, dev).item())))
        if bh >= cy1 - cy0 or bw >= cx1 - cx0:
            continue
        free = _free_origins(lesion[i], cy0, cy1, cx0, cx1, bh, bw)
        if len(free) < 2:
            continue
        draw = torch.randint(0, len(free), (2 * candidates,), generator=g, device=dev)
        ty, tx = (int(v) for v in free[draw[0]])
        yy = torch.linspace(-1, 1, bh, device=dev)[:, None]
        xx = torch.linspace(-1, 1, bw, device=dev)[None, :]
        alpha = ((1 - torch.sqrt(yy**2 + xx**2)) * min(bh, bw) / (4 * r)).clamp(0, 1)
        ring = alpha == 0
        target = x[i, 0, ty : ty + bh, tx : tx + bw]
        picks = [(int(free[k][0]), int(free[k][1])) for k in draw[1:]]
        sources = [(sy, sx) for sy, sx in picks if abs(sy - ty) >= bh or abs(sx - tx) >= bw][:candidates]
        if not sources or not ring.any():
            continue
        cost = [float((x[i, 0, sy : sy + bh, sx : sx + bw][ring] - target[ring]).abs().mean()) for sy, sx in sources]
        sy, sx = sources[min(range(len(sources)), key=cost.__getitem__)]
        out[i, 0, ty : ty + bh, tx : tx + bw] = alpha * x[i, 0, sy : sy + bh, sx : sx + bw] + (1 - alpha) * target
    return out


class Augmenter:
    """Call with x (B,1,S,S in [0,1]) and y (B,1,S,S {0,1}); returns augmented copies."""

    def __init__(self, cfg: dict[str, Any], stamps: torch.Tensor, generator: torch.Generator) -> None:
        self.cfg = cfg
        self.stamps = stamps  # K x S x S on the training device
        self.g = generator

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c, g, dev = self.cfg, self.g, x.device
        b, _, s, _ = x.shape
        # --- decoy fill (opt-in): a filled normal's kind of blend, put where no lesion is
        if c.get("decoy_fill", 0.0) > 0:
            x = _decoy_fill(x, y, _p(b, c["decoy_fill"], g, dev), g)
        # --- geometry: flip, affine, elastic in one sampling grid
        flip = torch.where(_p(b, c.get("flip", 0.5), g, dev), -1.0, 1.0)
        use_aff = _p(b, c.get("affine", 0.8), g, dev).float()
        ang = _u(b, -1, 1, g, dev) * math.radians(c.get("rotate_deg", 10)) * use_aff
        lo, hi = c.get("scale", [0.9, 1.1])
        sc = torch.exp(_u(b, math.log(lo), math.log(hi), g, dev) * use_aff)
        aspect = torch.exp(_u(b, -0.08, 0.08, g, dev) * use_aff)
        tr = c.get("translate", 0.05)
        tx, ty = _u(b, -tr, tr, g, dev) * use_aff * 2, _u(b, -tr, tr, g, dev) * use_aff * 2
        cos, sin = torch.cos(ang), torch.sin(ang)
        theta = torch.zeros(b, 2, 3, device=dev)
        theta[:, 0, 0] = cos / (sc * aspect) * flip
        theta[:, 0, 1] = -sin / sc
        theta[:, 1, 0] = sin / (sc * aspect) * flip
        theta[:, 1, 1] = cos / sc
        theta[:, 0, 2], theta[:, 1, 2] = tx, ty
        grid = F.affine_grid(theta, [b, 1, s, s], align_corners=False)
        el = _p(b, c.get("elastic", 0.3), g, dev).float()[:, None, None, None]
        if el.any():
            coarse = torch.randn(b, 2, 6, 6, generator=g, device=dev) * c.get("elastic_magnitude", 0.015) * 4
            disp = F.interpolate(coarse, size=(s, s), mode="bicubic", align_corners=False)
            grid = grid + disp.permute(0, 2, 3, 1) * el
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        y = (F.grid_sample(y, grid, mode="bilinear", padding_mode="zeros", align_corners=False) > 0.5).float()
        # --- intensity: gamma, contrast/brightness
        glo, ghi = c.get("gamma", [0.8, 1.25])
        gam = torch.exp(_u(b, math.log(glo), math.log(ghi), g, dev))[:, None, None, None]
        x = x.clamp(0, 1) ** gam
        clo, chi = c.get("contrast", [0.8, 1.2])
        mean = x.mean(dim=(2, 3), keepdim=True)
        x = (x - mean) * _u(b, clo, chi, g, dev)[:, None, None, None] + mean
        x = x + _u(b, -0.06, 0.06, g, dev)[:, None, None, None]
        # --- multiplicative speckle (spatially correlated over ~2 px, like resolution cells)
        sp = _p(b, c.get("speckle", 0.5), g, dev).float() * _u(b, 0, c.get("speckle_sigma", 0.2), g, dev)
        noise = torch.randn(b, 1, s // 2, s // 2, generator=g, device=dev)
        noise = F.interpolate(noise, size=(s, s), mode="bilinear", align_corners=False)
        x = x * (1 + sp[:, None, None, None] * noise)
        # --- blur (3x3 / 5x5 binomial) and simulated low resolution
        bl = _p(b, c.get("blur", 0.2), g, dev)
        if bl.any():
            k1 = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=dev)
            k = (k1[:, None] * k1[None, :]) / 256.0
            blurred = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), k[None, None])
            x = torch.where(bl[:, None, None, None], blurred, x)
        lr = _p(b, c.get("lowres", 0.2), g, dev)
        if lr.any():
            f = float(_u(1, 1.5, 3.0, g, dev).item())
            small = F.interpolate(x, scale_factor=1 / f, mode="area")
            up = F.interpolate(small, size=(s, s), mode="bilinear", align_corners=False)
            x = torch.where(lr[:, None, None, None], up, x)
        # --- scanner-style gain (opt-in): a smooth depth (TGC) and lateral gain curve, and edge
        # enhancement or softening, as one vendor's post-processing differs from another's
        if c.get("tgc", 0.0) > 0:
            x = _scanner_gain(x, _p(b, c["tgc"], g, dev), c.get("tgc_strength", 0.35), g)
        if c.get("sharpen", 0.0) > 0:
            x = _sharpen(x, _p(b, c["sharpen"], g, dev), c.get("sharpen_amount", [-0.5, 1.0]), g)
        # --- synthetic burned-in annotations (bright overlays the model must ignore)
        an = _p(b, c.get("annotations", 0.3), g, dev)
        if an.any() and self.stamps.shape[0] > 0:
            idx = torch.randint(0, self.stamps.shape[0], (b,), generator=g, device=dev)
            st = self.stamps[idx][:, None] * an[:, None, None, None].float()
            x = torch.maximum(x, st)
        return x.clamp(0, 1), y
