"""A weighted sum of similarities, optimized simultaneously (Waldmannstetter et al., "Primitive
simultaneous optimization of similarity metrics for image registration").

Every part is prepared on its own; their moving features are stacked along the channel axis so
the objective warps them all in one pass, and ``evaluate`` hands each part its own channels back.
Parts whose moving features are the very same tensor (e.g. MSE and NCC, both on the raw
intensities) share one set of channels, so it is warped once.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import InputError
from ..spatial import Image, crop_to_mask
from .base import Prepared, Similarity, fixed_mask_of


class PreparedCombined(Prepared):
    """The prepared parts, their weights and the channel slice of each part in ``moving``."""

    def __init__(self, moving: torch.Tensor, fixed_mask, parts: List[Prepared], weights: List[float],
                 slices: List[slice], fixed_grid: Optional[Image] = None):
        super().__init__(moving, fixed_mask, fixed_grid)
        self.parts, self.weights, self.slices = parts, weights, slices

    def evaluate(self, warped, valid):
        total = None
        for w, part, sl in zip(self.weights, self.parts, self.slices):
            value = w * part.evaluate(warped[:, sl], valid)
            total = value if total is None else total + value
        return total


class Combined(Similarity):
    """``sum_k weight_k * similarity_k``; weights are used as given (the paper sums them to 1)."""

    name = "combined"

    def __init__(self, parts: Sequence[Tuple[float, Similarity]]):
        parts = list(parts)
        if not parts:
            raise InputError("a combined similarity needs at least one (weight, similarity) pair")
        checked = []
        for item in parts:
            try:
                weight, sim = item
            except (TypeError, ValueError):
                raise InputError(f"combined similarity parts are (weight, similarity) pairs, got {item!r}") from None
            if not isinstance(sim, Similarity):
                raise InputError(f"combined similarity part {sim!r} is not a similarity measure")
            try:
                weight = float(weight)
            except (TypeError, ValueError):
                raise InputError(f"the weight of {sim!r} must be a number, got {weight!r}") from None
            if not math.isfinite(weight):
                raise InputError(f"the weight of {sim!r} must be finite, got {weight}")
            checked.append((weight, sim))
        self.parts = checked

    def at_scale(self, factor: float) -> "Combined":
        return Combined([(w, sim.at_scale(factor)) for w, sim in self.parts])

    def prepare(self, fixed: Image, moving: Image) -> PreparedCombined:
        # Every part scores the same fixed grid: the fixed mask's bounding box, to which LC² and
        # MIND crop on their own (parts that score the whole grid lose only unscored voxels).
        fixed = crop_to_mask(fixed)
        prepared = [sim.prepare(fixed, moving) for _, sim in self.parts]
        for p, (_, sim) in zip(prepared, self.parts):
            grid = p.fixed_grid if p.fixed_grid is not None else fixed
            if grid.shape != fixed.shape or not np.allclose(grid.index_to_world(), fixed.index_to_world()):
                raise InputError(f"cannot combine {sim!r} with other measures: it scores its own fixed grid "
                                 f"{tuple(grid.shape)}, not the fixed image's {tuple(fixed.shape)}")
        stacked: List[torch.Tensor] = []
        slices: List[slice] = []
        start = 0
        for p, (_, sim) in zip(prepared, self.parts):
            feats = p.moving if p.moving.dim() == 4 else p.moving[None]
            if stacked and feats.shape[1:] != stacked[0].shape[1:]:
                raise InputError(f"cannot combine {sim!r} with {self.parts[0][1]!r}: their moving features "
                                 f"lie on different grids {tuple(feats.shape[1:])} and "
                                 f"{tuple(stacked[0].shape[1:])}")
            shared = next((slices[i] for i, q in enumerate(prepared[:len(slices)]) if q.moving is p.moving), None)
            if shared is not None:
                slices.append(shared)
                continue
            stacked.append(feats)
            slices.append(slice(start, start + feats.shape[0]))
            start += feats.shape[0]
        dtype = stacked[0].dtype
        for s in stacked[1:]:
            dtype = torch.promote_types(dtype, s.dtype)
        moving_all = torch.cat([s.to(dtype) for s in stacked], dim=0)
        return PreparedCombined(moving_all, fixed_mask_of(fixed), prepared, [w for w, _ in self.parts], slices,
                                fixed)

    def __repr__(self):
        return "Combined(" + " + ".join(f"{w:g}*{sim!r}" for w, sim in self.parts) + ")"
