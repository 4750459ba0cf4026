"""The contract every similarity follows, so that any of them plugs into any optimizer.

A similarity is prepared once per resolution level, from the fixed and moving images on their
own working grids: ``prepare`` computes what depends on one image only (descriptors, gradient
magnitudes, weights) and returns a :class:`Prepared` object. The objective then warps
``Prepared.moving`` (C, z, y, x) onto the fixed grid for a batch of B poses or displacement
fields and calls ``Prepared.evaluate(warped, valid)`` with

- ``warped``: (B, C, Z, Y, X) moving features sampled at the fixed grid points;
- ``valid``: (B, 1, Z, Y, X) 1 where the sampled point lies inside the moving image (and its mask).

``evaluate`` returns (B,) similarities, higher is better, differentiable with respect to
``warped``. Points outside the moving image must not be able to raise the similarity: each
measure scores them as "no information", so a pose cannot gain by pushing patches out of view.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..spatial import Image


class Prepared:
    """Per-level state of a similarity: fixed-side tensors and the moving features to warp.

    By default the features live on the grids of the level images given to ``prepare``. A
    measure whose features live elsewhere (e.g. descriptors at a stride) sets
    ``fixed_grid``/``moving_grid`` to images with the matching geometry; the objective then
    samples on those grids.

    A measure that is a weighted sum over independent points (DISA) may set ``points``: the
    (N, 3) voxel indices (x, y, z) of the fixed grid that carry weight. The objective then
    warps only those, handing ``evaluate`` features of shape (B, C, 1, 1, N); ``fixed_mask``
    is then None or of shape (1, 1, 1, N). ``needs_valid`` False: ``evaluate`` ignores the
    validity mask, so the objective does not compute it; such a measure may sample its moving
    features by cubic B-spline (``interpolation``).
    """

    points: Optional[torch.Tensor] = None
    #: Flat indices into the fixed grid's voxels (z, y, x order) of every voxel ``evaluate`` reads,
    #: for a measure that scores each voxel alone and ignores the others (outside its fixed mask,
    #: or not among its samples): the objective may then warp only these and hand ``evaluate``
    #: zeros with validity 0 elsewhere. None: all voxels (or ``points``).
    read_index: Optional[torch.Tensor] = None
    needs_valid: bool = True
    #: How measures without a validity mask sample the moving features: "linear" (trilinear) or
    #: "cubic" (cubic B-spline, the same blur at every sub-voxel offset; ``spatial.bspline``).
    interpolation: str = "linear"

    def __init__(self, moving: torch.Tensor, fixed_mask: Optional[torch.Tensor],
                 fixed_grid: Optional[Image] = None, moving_grid: Optional[Image] = None):
        self.moving = moving
        self.fixed_mask = fixed_mask
        self.fixed_grid = fixed_grid
        self.moving_grid = moving_grid

    def evaluate(self, warped: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def for_search(self) -> "Prepared":
        """A cheaper stand-in for the global search's scoring and brief refinements when it has no
        coarser level to run on (``registration/search.py``); by default this measure itself."""
        return self

    def sampled(self, max_points: int) -> "Prepared":
        """This measure scoring at most about ``max_points`` fixed voxels on a regular lattice
        (every s-th voxel along each axis, s the smallest stride that leaves no more), where its
        value is a mean over independent voxels (MIND-SSC) so a lattice estimates it; measures
        that need the whole grid (histograms, local statistics, DISA's own descriptor grid)
        return themselves."""
        return self

    def region(self, valid: torch.Tensor) -> torch.Tensor:
        """Valid points that are also inside the fixed mask, (B, 1, Z, Y, X) float."""
        return valid if self.fixed_mask is None else valid * self.fixed_mask


class Similarity:
    """A similarity measure; subclasses set ``name`` and implement ``prepare``."""

    name = "similarity"
    #: Whether the pipeline hands ``prepare`` a moving level sampled finer than the working
    #: spacing (``registration.pipeline.moving_level``; measures that interpolate raw features).
    oversampled_moving = True

    def prepare(self, fixed: Image, moving: Image) -> Prepared:
        raise NotImplementedError

    @classmethod
    def fine_spacing(cls, finest: float, extent: float) -> float:
        """The finest working spacing (mm) by default, for images whose finest voxel is ``finest``
        mm and whose fixed content spans ``extent`` mm: about 48 voxels across the content."""
        return max(finest, extent / 48.0)

    @classmethod
    def working_spacing(cls, fixed, moving, extent: float) -> float:
        """The finest working spacing (mm) for these grids (``fixed``, ``moving``: VolumeInfo) and
        fixed content spanning ``extent`` mm: ``fine_spacing`` at the coarser of the two images'
        finest voxels, so never finer than either image."""
        return cls.fine_spacing(float(max(min(fixed.spacing), min(moving.spacing))), extent)

    @classmethod
    def coarse_spacing(cls, fine: float, extent: float) -> float:
        """The coarse level's spacing (mm) above a ``fine`` one for content spanning ``extent`` mm."""
        return 2.0 * fine

    def at_scale(self, factor: float) -> "Similarity":
        """This measure for a coarser pyramid level (``factor`` = finest / level spacing < 1).

        Measures with patch sizes in voxels shrink them so the physical size stays the same.
        """
        return self

    def __repr__(self):
        return f"{type(self).__name__}()"


def fixed_mask_of(image: Image) -> Optional[torch.Tensor]:
    return None if image.mask is None else image.mask.float()


def mask_index(fixed_mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Flat indices of the voxels in a (1, Z, Y, X) fixed mask (``Prepared.read_index``)."""
    return None if fixed_mask is None else torch.nonzero(fixed_mask.flatten() > 0.5).flatten()
