"""MIND-SSC similarity: negative mean squared difference of the 12-channel descriptors."""
from __future__ import annotations

import copy

import numpy as np
import torch

from ..features.mind import mind_ssc
from ..spatial import Image, crop_to_mask
from .base import Prepared, Similarity, fixed_mask_of


def descriptor_ssd(fixed: torch.Tensor, warped: torch.Tensor, valid: torch.Tensor,
                   fixed_mask: torch.Tensor = None, unrelated: float = None) -> torch.Tensor:
    """Similarity (B,) = -mean over the fixed mask of the per-voxel channel-mean squared difference.

    Points outside the moving image score ``unrelated`` (the expected difference of independent
    descriptors) so that leaving the field of view never lowers the cost.
    """
    ssd = ((fixed[None] - warped) ** 2).mean(dim=1, keepdim=True)
    region = torch.ones_like(valid[:1]) if fixed_mask is None else fixed_mask[None]
    if unrelated is None:
        cost = (ssd * valid * region).flatten(1).sum(1) / (valid * region).flatten(1).sum(1).clamp_min(1e-12)
    else:
        cost = (ssd * valid + unrelated * (1 - valid)) * region
        cost = cost.flatten(1).sum(1) / region.flatten(1).sum(1).clamp_min(1e-12)
    return -cost


def unrelated_ssd(fixed: torch.Tensor, moving: torch.Tensor, fixed_mask=None) -> float:
    """E||f - m||^2 / C for independent descriptor draws: var_f + var_m + (mean_f - mean_m)^2."""
    f = fixed.flatten(1) if fixed_mask is None else fixed[:, fixed_mask[0] > 0.5]
    m = moving.flatten(1)
    val = f.var(1) + m.var(1) + (f.mean(1) - m.mean(1)) ** 2
    return float(val.mean())


#: ``PreparedMIND.sampled`` never thins its points below this many (it keeps the finer lattice).
MIN_SAMPLED_POINTS = 1000


class PreparedMIND(Prepared):
    """Fixed MIND-SSC descriptors (C, Z, Y, X) on the fixed mask's bounding box.

    With a fixed mask, only the voxels inside it are warped (``points``): the SSD is a mean over
    independent voxels, so the value is the same, and an ultrasound fan fills about 37% of its
    box (Case 24). ``fixed_mask`` is then None (every point is in the mask). A combined measure
    warps the whole box instead (it leaves ``points`` unused); ``evaluate`` takes either layout.
    Not ``read_index``, which puts the warped values back on the whole box: with 12 channels that
    took Case 24's registration 10.3 s instead of 7.6 s.
    """

    def __init__(self, fixed, moving, fixed_mask, fixed_grid=None):
        super().__init__(moving, fixed_mask, fixed_grid=fixed_grid)
        self.fixed = fixed
        self.unrelated = unrelated_ssd(fixed, moving, fixed_mask)
        self.box_mask = fixed_mask
        if fixed_mask is not None:
            zyx = torch.nonzero(fixed_mask[0] > 0.5)
            self.points = zyx.flip(1)  # (N, 3) voxel indices (x, y, z)
            self.fixed_points = self.descriptors_at(self.points)
            self.fixed_mask = None

    def descriptors_at(self, points: torch.Tensor) -> torch.Tensor:
        """(C, 1, 1, N) fixed descriptors at (N, 3) voxel indices (x, y, z)."""
        return self.fixed[:, points[:, 2], points[:, 1], points[:, 0]][:, None, None]

    def sampled(self, max_points: int) -> "PreparedMIND":
        points = self.points
        if points is None:  # every voxel of the box is a point
            points = torch.nonzero(torch.ones(self.fixed.shape[-3:], dtype=torch.bool)).flip(1)
        keep, count = None, len(points)
        stride = max(1, int((count / max(max_points, 1)) ** (1 / 3)) - 1)  # a little below the answer
        while count > max_points:  # the smallest stride that leaves at most max_points
            stride += 1
            lattice = (points % stride == 0).all(dim=1)
            count = int(lattice.sum())
            if count < MIN_SAMPLED_POINTS:  # a small box or mask: keep the finer lattice
                break
            keep = lattice
        if keep is None:
            return self
        out = copy.copy(self)
        out.points = points[keep]
        out.fixed_points = self.descriptors_at(out.points)  # fixed_mask is None: every point counts
        return out

    def evaluate(self, warped, valid):
        if warped.shape[-3:] == self.fixed.shape[-3:]:  # the whole box
            return descriptor_ssd(self.fixed, warped, valid, self.box_mask, self.unrelated)
        return descriptor_ssd(self.fixed_points, warped, valid, None, self.unrelated)


class MIND(Similarity):
    """MIND-SSC descriptors of both images compared by SSD (differentiable: use L-BFGS)."""

    name = "mind"

    def __init__(self, radius: int = 2, dilation: int = 2):
        self.radius, self.dilation = radius, dilation

    def at_scale(self, factor: float) -> "MIND":
        return MIND(max(1, int(round(self.radius * factor))), max(1, int(round(self.dilation * factor))))

    def prepare(self, fixed: Image, moving: Image) -> PreparedMIND:
        # Radius and dilation are in fixed-grid voxels; an oversampled moving grid scales them.
        ratio = max(1, int(round(float(np.mean(fixed.spacing) / np.mean(moving.spacing)))))
        f = mind_ssc(fixed.data[:1].float(), self.radius, self.dilation)
        m = mind_ssc(moving.data[:1].float(), self.radius * ratio, self.dilation * ratio)
        # Only fixed-mask points are scored, so the mask's bounding box is exact (and cheaper).
        box = crop_to_mask(fixed.same_geometry(f, fixed.mask))
        return PreparedMIND(box.data, m, fixed_mask_of(box), fixed_grid=box)
