"""Normalized cross-correlation: global (NCC) and local, box-windowed (LNCC).

Both compare intensities channel by channel (fixed and moving need the same channel count)
and average the channels. Correlations are signed: they suit images whose intensities are
related by an increasing linear map (same modality, or after contrast inversion of one image).

Points outside the moving image:
- global NCC is the correlation over the overlap (valid points inside the fixed mask), as usual;
  it is invariant to the overlap size, so keep the capture range modest or combine it with a
  measure that penalizes leaving the view.
- LNCC scores points outside the moving image 0, the correlation of unrelated images, and divides
  by the fixed-mask size, so a pose cannot gain by pushing badly matching patches out of view.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..errors import InputError
from ..spatial import Image
from .base import Prepared, Similarity, fixed_mask_of, mask_index
from ..spatial.filters import box_mean


# helpers shared by the intensity measures ---------------------------------------------------------
def check_channels(fixed: Image, moving: Image, name: str) -> None:
    """Intensity measures compare channel c of fixed with channel c of moving."""
    if fixed.channels != moving.channels:
        raise InputError(f"the {name} similarity compares intensities channel by channel, but the fixed "
                         f"image has {fixed.channels} channel(s) and the moving image {moving.channels}")


def as_float(t: torch.Tensor) -> torch.Tensor:
    """The tensor itself when already floating point (so Combined can share identical channels)."""
    return t if t.is_floating_point() else t.float()


def mask_total(mask: Optional[torch.Tensor], shape) -> float:
    """Number of fixed points that may score: the mask's sum, or all voxels without a mask."""
    if mask is None:
        n = 1
        for s in shape:
            n *= int(s)
        return float(n)
    return float(mask.sum())


# global NCC ---------------------------------------------------------------------------------------
def ncc(fixed: torch.Tensor, warped: torch.Tensor, weights: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Weighted Pearson correlation (B,), averaged over channels.

    ``fixed`` (1 or B, C, Z, Y, X), ``warped`` (B, C, Z, Y, X), ``weights`` (B, 1, Z, Y, X) (the
    overlap region). An empty or flat overlap gives 0.
    """
    w = weights
    n = w.flatten(1).sum(1).clamp_min(1e-12)[:, None]  # (B, 1)

    spatial = [1] * (warped.dim() - 2)

    def mean(x):
        return (x * w).flatten(2).sum(2) / n  # (B, C)

    # Centre before multiplying: E[fm] - E[f]E[m] loses precision in float32.
    fc = fixed - mean(fixed).view(warped.shape[0], -1, *spatial)
    mc = warped - mean(warped).view(warped.shape[0], -1, *spatial)
    cov = mean(fc * mc)
    vf = mean(fc * fc)
    vm = mean(mc * mc)
    return (cov / torch.sqrt(vf * vm + eps)).mean(1)


class PreparedNCC(Prepared):
    def __init__(self, fixed: torch.Tensor, moving: torch.Tensor, fixed_mask):
        super().__init__(moving, fixed_mask)
        self.fixed = fixed[None]
        self.read_index = mask_index(fixed_mask)

    def evaluate(self, warped, valid):
        return ncc(self.fixed, warped, self.region(valid))


class NCC(Similarity):
    """Global normalized cross-correlation over the overlap (valid points in the fixed mask)."""

    name = "ncc"

    def prepare(self, fixed: Image, moving: Image) -> PreparedNCC:
        check_channels(fixed, moving, self.name)
        return PreparedNCC(as_float(fixed.data), as_float(moving.data), fixed_mask_of(fixed))


# local NCC ----------------------------------------------------------------------------------------
def lncc_map(fixed: torch.Tensor, warped: torch.Tensor, region: torch.Tensor, radius: int,
             eps: float = 1e-5) -> torch.Tensor:
    """Local correlation (B, C, Z, Y, X) in (2r+1)^3 windows, over the region points of each window.

    Window statistics use only points with region weight (the overlap inside the fixed mask), so
    the borders of the view or of a mask do not create artificial edges. ``eps`` (in units of the
    normalized intensities' variance squared) keeps flat windows at a correlation near 0.
    """
    b = warped.shape[0]
    f = fixed.expand(b, *fixed.shape[1:])
    w = region
    c = warped.shape[1]
    s = box_mean(torch.cat([w, w * f, w * warped, w * f * f, w * warped * warped, w * f * warped], 1), radius)
    # The box sums are zero where no region point is in reach; only region points are read later.
    inv = 1.0 / s[:, :1].clamp_min(1e-6 / (2 * radius + 1) ** 3)
    sf, sm, sff, smm, sfm = (s[:, 1 + i * c:1 + (i + 1) * c] * inv for i in range(5))
    vf = (sff - sf * sf).clamp_min(0.0)
    vm = (smm - sm * sm).clamp_min(0.0)
    return (sfm - sf * sm) / torch.sqrt(vf * vm + eps)


def lncc(fixed: torch.Tensor, warped: torch.Tensor, region: torch.Tensor, radius: int = 4,
         total: Optional[float] = None, eps: float = 1e-5) -> torch.Tensor:
    """Mean local NCC (B,): the channel-mean of :func:`lncc_map` summed over region points.

    Divided by ``total`` (the fixed-mask size, so points outside the moving image count as 0) or,
    when ``total`` is None, by the region size (a plain mean over the overlap).
    """
    local = lncc_map(fixed, warped, region, radius, eps).mean(1, keepdim=True)
    num = (local * region).flatten(1).sum(1)
    den = region.flatten(1).sum(1) if total is None else torch.full_like(num, float(total))
    return num / den.clamp_min(1e-12)


class PreparedLNCC(Prepared):
    def __init__(self, fixed: torch.Tensor, moving: torch.Tensor, fixed_mask, radius: int, eps: float):
        super().__init__(moving, fixed_mask)
        self.fixed = fixed[None]
        self.radius, self.eps = radius, eps
        self.total = mask_total(fixed_mask, fixed.shape[1:])

    def evaluate(self, warped, valid):
        return lncc(self.fixed, warped, self.region(valid), self.radius, self.total, self.eps)


class LNCC(Similarity):
    """Local NCC in cubes of ``radius`` voxels (of the working grid), averaged over the fixed mask.

    Points outside the moving image score 0, the value of unrelated images.
    """

    name = "lncc"

    def __init__(self, radius: int = 4, eps: float = 1e-5):
        if int(radius) < 1:
            raise InputError(f"LNCC radius must be at least 1 voxel, got {radius}")
        if not eps > 0:
            raise InputError(f"LNCC eps must be positive, got {eps}")
        self.radius, self.eps = int(radius), float(eps)

    def prepare(self, fixed: Image, moving: Image) -> PreparedLNCC:
        check_channels(fixed, moving, self.name)
        return PreparedLNCC(as_float(fixed.data), as_float(moving.data), fixed_mask_of(fixed),
                            self.radius, self.eps)

    def __repr__(self):
        return f"LNCC(radius={self.radius})"
