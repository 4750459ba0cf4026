"""Mean squared intensity difference (similarity = minus the MSE), for same-modality pairs.

Points outside the moving image score the mean squared difference of unrelated images,
``var_f + var_m + (mean_f - mean_m)^2`` (estimated once per level, over each image's mask), and
the sum is divided by the fixed-mask size: a pose cannot gain by pushing voxels out of view.
Interpolation only lowers the warped variance, so this score is never better than real
unrelated content.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..spatial import Image
from .base import Prepared, Similarity, fixed_mask_of, mask_index
from .ncc import as_float, check_channels, mask_total


def mse(fixed: torch.Tensor, warped: torch.Tensor, region: torch.Tensor, total: Optional[float] = None,
        unrelated: float = 0.0) -> torch.Tensor:
    """Minus the mean squared difference (B,), averaged over channels.

    ``fixed`` (1 or B, C, Z, Y, X), ``warped`` (B, C, Z, Y, X), ``region`` (B, 1, Z, Y, X).
    With ``total`` (the fixed-mask size) the ``total - sum(region)`` points outside the moving
    image each add ``unrelated``; without it this is a plain mean over the region.
    """
    sq = ((warped - fixed) ** 2).mean(1, keepdim=True)
    num = (sq * region).flatten(1).sum(1)
    inside = region.flatten(1).sum(1)
    if total is None:
        return -num / inside.clamp_min(1e-12)
    return -(num + (total - inside).clamp_min(0.0) * unrelated) / max(float(total), 1e-12)


def unrelated_msd(fixed: torch.Tensor, moving: torch.Tensor, fixed_mask: Optional[torch.Tensor] = None,
                  moving_mask: Optional[torch.Tensor] = None) -> float:
    """E(f - m)^2 for independent draws f, m of the two images, averaged over channels.

    ``fixed`` and ``moving`` are (C, Z, Y, X); masks (1, Z, Y, X) select the voxels drawn from.
    """
    f = fixed.flatten(1) if fixed_mask is None else fixed[:, fixed_mask[0] > 0.5]
    m = moving.flatten(1) if moving_mask is None else moving[:, moving_mask[0] > 0.5]
    f, m = f.double(), m.double()
    val = f.var(1, unbiased=False) + m.var(1, unbiased=False) + (f.mean(1) - m.mean(1)) ** 2
    return float(val.mean())


class PreparedMSE(Prepared):
    def __init__(self, fixed: torch.Tensor, moving: torch.Tensor, fixed_mask, unrelated: float):
        super().__init__(moving, fixed_mask)
        self.fixed = fixed[None]
        self.unrelated = unrelated
        self.total = mask_total(fixed_mask, fixed.shape[1:])
        self.read_index = mask_index(fixed_mask)

    def evaluate(self, warped, valid):
        return mse(self.fixed, warped, self.region(valid), self.total, self.unrelated)


class MSE(Similarity):
    """Minus the mean squared intensity difference over the fixed mask."""

    name = "mse"

    def prepare(self, fixed: Image, moving: Image) -> PreparedMSE:
        check_channels(fixed, moving, self.name)
        f, m = as_float(fixed.data), as_float(moving.data)
        mask = fixed_mask_of(fixed)
        return PreparedMSE(f, m, mask, unrelated_msd(f, m, mask, moving.mask))
