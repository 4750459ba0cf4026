"""Filters shared by descriptors and similarity measures: box means, gradients, masked means."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def box_mean_1d(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Mean over a window of 2*radius+1 along ``dim`` (zero padded), in O(1) per voxel.

    Implemented with a cumulative sum, so the cost does not grow with the radius.
    """
    k = 2 * radius + 1
    n = x.shape[dim]
    pad_shape = list(x.shape)
    pad_shape[dim] = radius + 1
    front = x.new_zeros(pad_shape)
    pad_shape[dim] = radius
    back = x.new_zeros(pad_shape)
    c = torch.cat([front, x, back], dim=dim).cumsum(dim)
    return (c.narrow(dim, k, n) - c.narrow(dim, 0, n)) / k


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over (2r+1)^3 cubes of the last three dims of ``x`` (zero padded outside)."""
    for dim in (-1, -2, -3):
        x = box_mean_1d(x, radius, x.dim() + dim)
    return x


def gradient_magnitude(x: torch.Tensor, spacing=(1.0, 1.0, 1.0)) -> torch.Tensor:
    """Central-difference gradient magnitude of (C, Z, Y, X) or (B, C, Z, Y, X) data.

    ``spacing`` (x, y, z) in mm gives a magnitude per mm; the default is per voxel.
    """
    squeeze = x.dim() == 4
    v = x[None] if squeeze else x
    sx, sy, sz = (float(s) for s in spacing)
    p = F.pad(v, (1, 1, 1, 1, 1, 1), mode="replicate")
    gx = (p[..., 1:-1, 1:-1, 2:] - p[..., 1:-1, 1:-1, :-2]) / (2 * sx)
    gy = (p[..., 1:-1, 2:, 1:-1] - p[..., 1:-1, :-2, 1:-1]) / (2 * sy)
    gz = (p[..., 2:, 1:-1, 1:-1] - p[..., :-2, 1:-1, 1:-1]) / (2 * sz)
    g = torch.sqrt(gx * gx + gy * gy + gz * gz + 1e-12)
    return g[0] if squeeze else g


def masked_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-batch weighted mean of (B, ...) values; 0 where the weights sum to 0."""
    num = (values * weights).flatten(1).sum(1)
    den = weights.flatten(1).sum(1)
    return num / den.clamp_min(1e-12)
