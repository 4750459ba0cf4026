"""LC²: linear correlation of linear combination (Wein et al. 2008), exact and dense.

For every fixed voxel and radius r, the fixed patch b (e.g. ultrasound) is fitted by least
squares with the warped moving intensity a and the moving gradient magnitude g (e.g. MR):
``b ~ c1 a + c2 g + c3``. The local similarity is the explained share of the patch variance,
``(var(b) - residual) / var(b)`` in [0, 1]. Local values are averaged with the local variance
of the fixed patch as weight (the original measure's weighting) and over radii 3, 5 and 7.

All patch sums are box means (``spatial.filters.box_mean``: direct sums for narrow windows,
cumulative sums for wide ones), so one evaluation costs O(voxels) whatever the radius. Points outside the moving image or outside the
fixed mask drop out of every patch; a patch with less than half of its points left scores 0
(no information) while its weight still counts, so moving content out of view never pays.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch

from ..spatial import Image, crop_to_mask
from .base import Prepared, Similarity, fixed_mask_of
from ..spatial.filters import box_mean, gradient_magnitude

#: Radii in voxels of the working grid, as in the DISA paper.
DEFAULT_RADII: Tuple[int, ...] = (3, 5, 7)


def lc2_local(b: torch.Tensor, a: torch.Tensor, g: torch.Tensor, m: torch.Tensor, radius: int,
              ridge: float = 1e-3, min_fraction: float = 0.5, min_variance: float = 1e-4) -> torch.Tensor:
    """Local LC² map (B, 1, Z, Y, X) for one radius.

    ``b``: fixed intensities; ``a``/``g``: moving intensity and gradient magnitude on the fixed
    grid; ``m``: 1 where a point may enter a patch. ``ridge`` regularizes the 2x2 normal
    equations (in units of the normalized intensities' variance).
    """
    # The ten sums of the normal equations in one box filter pass.
    chans = torch.cat([m, m * a, m * g, m * b, m * a * a, m * a * g, m * g * g, m * a * b, m * g * b,
                       m * b * b], dim=1)
    s = box_mean(chans, radius)
    n, sa, sg, sb, saa, sag, sgg, sab, sgb, sbb = s.unbind(1)
    inv_n = 1.0 / n.clamp_min(1e-6)
    ma, mg, mb = sa * inv_n, sg * inv_n, sb * inv_n
    caa = saa * inv_n - ma * ma + ridge
    cag = sag * inv_n - ma * mg
    cgg = sgg * inv_n - mg * mg + ridge
    cab = sab * inv_n - ma * mb
    cgb = sgb * inv_n - mg * mb
    vb = sbb * inv_n - mb * mb
    det = (caa * cgg - cag * cag).clamp_min(1e-12)
    c1 = (cgg * cab - cag * cgb) / det
    c2 = (caa * cgb - cag * cab) / det
    explained = c1 * cab + c2 * cgb
    local = (explained / vb.clamp_min(min_variance)).clamp(0.0, 1.0)
    keep = (n >= min_fraction) & (vb > min_variance)
    return torch.where(keep, local, torch.zeros_like(local)).unsqueeze(1)


def fixed_weights(b: torch.Tensor, mask: torch.Tensor, radius: int, power: float = 1.0) -> torch.Tensor:
    """Local variance of the fixed patch (B=1, 1, Z, Y, X) inside the fixed mask: LC²'s weight
    (``power`` 0.5 gives the local standard deviation instead)."""
    s = box_mean(torch.cat([mask, mask * b, mask * b * b], dim=1), radius)
    n = s[:, 0].clamp_min(1e-6)
    var = (s[:, 2] / n - (s[:, 1] / n) ** 2).clamp_min(0.0)
    return (var ** power * mask[:, 0]).unsqueeze(1)


def lc2(fixed: torch.Tensor, moving: torch.Tensor, gradient: torch.Tensor, valid: torch.Tensor,
        fixed_mask: torch.Tensor = None, radii: Sequence[int] = DEFAULT_RADII,
        weights: Sequence[torch.Tensor] = None, min_fraction: float = 0.5) -> torch.Tensor:
    """Global LC² (B,) of a (1 or B, 1, Z, Y, X) fixed image and B warped moving images.

    ``gradient`` is the moving gradient magnitude warped like ``moving``; ``valid`` marks points
    inside the moving image. ``weights`` (one per radius) can be precomputed with
    :func:`fixed_weights`; they depend on the fixed image only.
    """
    b = fixed.reshape(1, 1, *fixed.shape[-3:])
    fm = torch.ones_like(b) if fixed_mask is None else fixed_mask.reshape(1, 1, *fixed.shape[-3:]).to(b.dtype)
    m = valid * fm
    total = 0.0
    for i, r in enumerate(radii):
        w = fixed_weights(b, fm, r) if weights is None else weights[i]
        local = lc2_local(b, moving, gradient, m, r, min_fraction=min_fraction)
        total = total + (local * w).flatten(1).sum(1) / w.flatten(1).sum(1).clamp_min(1e-12)
    return total / len(radii)


class PreparedLC2(Prepared):
    def __init__(self, fixed: torch.Tensor, moving: torch.Tensor, fixed_mask, radii, power=1.0, min_fraction=0.5,
                 fixed_grid=None):
        super().__init__(moving, fixed_mask, fixed_grid=fixed_grid)
        self.fixed = fixed[None]
        self.radii = tuple(radii)
        self.min_fraction = min_fraction
        fm = torch.ones_like(self.fixed) if fixed_mask is None else fixed_mask[None]
        self.weights = [fixed_weights(self.fixed, fm, r, power) for r in self.radii]

    def evaluate(self, warped, valid):
        return lc2(self.fixed, warped[:, :1], warped[:, 1:2], valid, self.fixed_mask,
                   self.radii, self.weights, self.min_fraction)


class LC2(Similarity):
    """Exact dense LC² over radii 3, 5, 7 (voxels of the working grid).

    The fixed image is the one fitted (put the ultrasound there); the moving image supplies
    intensity and gradient magnitude (per mm), computed once on its own grid and then warped.
    """

    name = "lc2"

    def __init__(self, radii: Sequence[int] = DEFAULT_RADII, weight_power: float = 1.0, min_fraction: float = 0.99):
        self.radii = tuple(int(r) for r in radii)
        self.weight_power, self.min_fraction = weight_power, min_fraction

    def at_scale(self, factor: float) -> "LC2":
        radii = sorted({max(1, int(round(r * factor))) for r in self.radii})
        return LC2(radii, self.weight_power, self.min_fraction)

    def prepare(self, fixed: Image, moving: Image) -> PreparedLC2:
        m = moving.data[:1].float()
        feats = torch.cat([m, gradient_magnitude(m, moving.spacing)], dim=0)
        # Voxels outside the fixed mask never enter a patch, so the mask's bounding box is exact.
        box = crop_to_mask(fixed)
        return PreparedLC2(box.data[:1].float(), feats, fixed_mask_of(box), self.radii,
                           self.weight_power, self.min_fraction, fixed_grid=box)
