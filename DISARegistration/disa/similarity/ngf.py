"""Normalized gradient fields (Haber and Modersitzki 2006): edges that line up, whatever the contrast.

Per point the score is ``(n_f . n_m)^2`` with ``n = grad / sqrt(|grad|^2 + eta^2)``; the square
makes it blind to contrast inversion, and ``eta`` (a fraction of each image's mean gradient norm)
fades out gradients weaker than typical edges, such as noise in flat regions.

The gradients of the WARPED moving image are taken on the fixed grid in evaluate (finite
differences in mm), so both gradients live in the same frame and the measure stays correct when
the pose rotates the moving image. Only points whose difference stencil lies inside the moving
image and inside the fixed mask score; the others (out of view, or on a mask border where the
image drops to 0) count 0, the lowest value, and the sum is divided by the fixed-mask size, so a
pose cannot gain by pushing points out of view.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from ..errors import InputError
from ..spatial import Image
from .base import Prepared, Similarity, fixed_mask_of
from .ncc import as_float, check_channels, mask_total

Number = Union[float, torch.Tensor]


def _diff(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Central differences along ``dim``, one-sided at the two ends (``numpy.gradient``'s stencil)."""
    n = x.shape[dim]
    if n < 2:
        return torch.zeros_like(x)
    first = x.narrow(dim, 1, 1) - x.narrow(dim, 0, 1)
    last = x.narrow(dim, n - 1, 1) - x.narrow(dim, n - 2, 1)
    mid = (x.narrow(dim, 2, n - 2) - x.narrow(dim, 0, n - 2)) * 0.5
    return torch.cat([first, mid, last], dim=dim)


def spatial_gradient(x: torch.Tensor, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> torch.Tensor:
    """Gradient per mm (..., 3, Z, Y, X) of (..., Z, Y, X) data; components along x, y, z.

    ``spacing`` is (x, y, z) in mm, as SimpleITK gives it.
    """
    sx, sy, sz = (float(s) for s in spacing)
    d = x.dim()
    return torch.stack([_diff(x, d - 1) / sx, _diff(x, d - 2) / sy, _diff(x, d - 3) / sz], dim=-4)


def stencil_support(mask: torch.Tensor) -> torch.Tensor:
    """Points whose :func:`spatial_gradient` stencil lies entirely inside ``mask`` (..., Z, Y, X)."""
    out = mask
    for axis in (1, 2, 3):
        dim = mask.dim() - axis
        n = mask.shape[dim]
        if n < 2:
            continue
        prev = torch.cat([mask.narrow(dim, 0, 1), mask.narrow(dim, 0, n - 1)], dim=dim)
        nxt = torch.cat([mask.narrow(dim, 1, n - 1), mask.narrow(dim, n - 1, 1)], dim=dim)
        out = out * prev * nxt
    return out


def normalized_gradient(x: torch.Tensor, spacing: Sequence[float], eta: Number) -> torch.Tensor:
    """``grad x / sqrt(|grad x|^2 + eta^2)`` (..., 3, Z, Y, X); ``eta`` a scalar or (C, 1, 1, 1)."""
    g = spatial_gradient(x, spacing)
    eta = torch.as_tensor(eta, dtype=g.dtype, device=g.device)
    if eta.dim() > 0:
        eta = eta.unsqueeze(-4)  # (C, 1, 1, 1) -> (C, 1, 1, 1, 1): skip the vector axis
    return g / torch.sqrt((g * g).sum(-4, keepdim=True) + eta * eta)


def ngf_score(fixed_normal: torch.Tensor, moving_normal: torch.Tensor, region: torch.Tensor,
              total: Optional[float] = None) -> torch.Tensor:
    """Sum over region points of the channel-mean ``(n_f . n_m)^2``, divided by ``total`` (B,).

    Normals are (1 or B, C, 3, Z, Y, X); ``region`` (B, 1, Z, Y, X); ``total`` None divides by
    the region size.
    """
    dot = (fixed_normal * moving_normal).sum(2)
    local = (dot * dot).mean(1, keepdim=True)
    num = (local * region).flatten(1).sum(1)
    den = region.flatten(1).sum(1) if total is None else torch.full_like(num, float(total))
    return num / den.clamp_min(1e-12)


def ngf(fixed: torch.Tensor, warped: torch.Tensor, region: torch.Tensor, spacing: Sequence[float],
        eta_fixed: Number, eta_moving: Number, total: Optional[float] = None) -> torch.Tensor:
    """NGF similarity (B,) of ``fixed`` (1 or B, C, Z, Y, X) and ``warped`` (B, C, Z, Y, X) on one grid.

    ``region`` should already exclude points whose stencil leaves the valid area
    (see :func:`stencil_support`). ``eta_*`` are absolute, in intensity per mm; tensors of
    shape (C, 1, 1, 1) give one per channel.
    """
    return ngf_score(normalized_gradient(fixed, spacing, eta_fixed),
                     normalized_gradient(warped, spacing, eta_moving), region, total)


def mean_gradient_norm(x: torch.Tensor, spacing: Sequence[float], mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean gradient norm per channel (C, 1, 1, 1) of (C, Z, Y, X) data over the mask's stencil support."""
    g = torch.sqrt((spatial_gradient(x, spacing) ** 2).sum(-4))  # (C, Z, Y, X)
    if mask is None:
        mean = g.flatten(1).mean(1)
    else:
        w = stencil_support(mask.to(g.dtype))
        mean = (g * w).flatten(1).sum(1) / w.sum().clamp_min(1.0)
    return mean.view(-1, 1, 1, 1)


class PreparedNGF(Prepared):
    def __init__(self, fixed_normal: torch.Tensor, moving: torch.Tensor, fixed_mask, spacing,
                 eta_moving: torch.Tensor):
        super().__init__(moving, fixed_mask)
        self.fixed_normal = fixed_normal[None]
        self.spacing = tuple(float(s) for s in spacing)
        self.eta_moving = eta_moving
        # Fixed points whose gradient does not straddle the mask border; they are all that may score.
        self.support = None if fixed_mask is None else stencil_support(fixed_mask)[None]
        self.total = mask_total(self.support, fixed_normal.shape[-3:])

    def evaluate(self, warped, valid):
        region = stencil_support(valid)
        if self.support is not None:
            region = region * self.support
        nm = normalized_gradient(warped, self.spacing, self.eta_moving)
        return ngf_score(self.fixed_normal, nm, region, self.total)


class NGF(Similarity):
    """Normalized gradient fields, squared dot product, averaged over the fixed mask.

    ``eta``: edge parameter as a fraction of each image's mean gradient norm (over its mask);
    gradients much weaker than ``eta`` times the mean count little.
    """

    name = "ngf"

    def __init__(self, eta: float = 0.5):
        if not eta > 0:
            raise InputError(f"NGF eta must be positive (a fraction of the mean gradient norm), got {eta}")
        self.eta = float(eta)

    def prepare(self, fixed: Image, moving: Image) -> PreparedNGF:
        check_channels(fixed, moving, self.name)
        f, m = as_float(fixed.data), as_float(moving.data)
        mask = fixed_mask_of(fixed)
        # eta in intensity per mm for each image; floored so a flat masked image gives no NaN.
        eta_f = (self.eta * mean_gradient_norm(f, fixed.spacing, mask)).clamp_min(1e-6)
        mmask = None if moving.mask is None else moving.mask.float()
        eta_m = (self.eta * mean_gradient_norm(m, moving.spacing, mmask)).clamp_min(1e-6)
        nf = normalized_gradient(f, fixed.spacing, eta_f)
        return PreparedNGF(nf, m, mask, fixed.spacing, eta_m)

    def __repr__(self):
        return f"NGF(eta={self.eta:g})"
