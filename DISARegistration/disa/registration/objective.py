"""The registration objective: warp prepared moving features by a batch of poses and score them.

Batched: ``similarity(params)`` takes (B, n) parameter vectors and returns (B,) similarities,
so local optimizers (B = 1, with gradients) and global search (B = hundreds, chunked) share it.
Dense displacement fields plug in through ``similarity_of_grid``. A prepared measure that lists
its informative ``points`` (DISA, MIND-SSC with a fixed mask) is warped at those points only,
so an evaluation costs little more than its few hundred dot products; one that lists the voxels
it reads (``read_index``: MSE and NCC with a fixed mask) is warped there and handed the whole
grid, zero elsewhere.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..similarity.base import Prepared
from ..spatial import Image
from ..spatial.bspline import sample_cubic
from ..spatial.image import index_to_normalized, normalized_to_world, sample, world_to_normalized
from ..spatial.sampling import channels_fastest, grid_sample
from ..transforms.linear import LinearModel


#: A measure's ``read_index`` is used when it lists fewer than this share of the fixed voxels.
SPARSE_SHARE = 0.8


class Objective:
    """Similarity of the fixed level image and the moving features under ``initial @ model(p)``."""

    def __init__(self, prepared: Prepared, fixed: Image, moving: Image, model: LinearModel,
                 initial: Optional[np.ndarray] = None, chunk: int = 8):
        self.prepared = prepared
        self.fixed = prepared.fixed_grid if prepared.fixed_grid is not None else fixed
        self.moving = prepared.moving_grid if prepared.moving_grid is not None else moving
        self.model = model
        self.device = prepared.moving.device
        self.initial = torch.as_tensor(np.eye(4) if initial is None else initial, dtype=torch.float64,
                                       device=self.device)
        self.moving_mask = None if self.moving.mask is None else self.moving.mask.float().to(self.device)
        # Every evaluation samples these: trilinear sampling reads them channel-fastest
        # (``channels_fastest``: same values, relaid in place, so they are not held twice).
        if prepared.interpolation != "cubic":
            prepared.moving = channels_fastest(prepared.moving)
        self.n_evals = 0
        # fixed grid -> LPS and LPS -> moving normalized coordinates, fixed per level
        self._to_moving = torch.as_tensor(world_to_normalized(self.moving), dtype=torch.float64, device=self.device)
        self._from_fixed = torch.as_tensor(normalized_to_world(self.fixed), dtype=torch.float64, device=self.device)
        self.points = None  # (N, 4) homogeneous fixed-grid normalized coordinates of the prepared points
        self._scatter = None  # (flat indices, (Z, Y, X)): only the voxels evaluate reads are warped
        points = prepared.points
        read = prepared.read_index
        if points is None and read is not None and read.numel() < SPARSE_SHARE * self.fixed.data[0].numel():
            shape = tuple(int(n) for n in self.fixed.shape)
            read = read.to(self.device)
            zyx = torch.stack([read // (shape[1] * shape[2]), (read // shape[2]) % shape[1], read % shape[2]], 1)
            points, self._scatter = zyx.flip(1), (read, shape)
        if points is not None:
            idx = torch.as_tensor(points, dtype=torch.float64, device=self.device)
            ones = torch.ones(len(idx), 1, dtype=torch.float64, device=self.device)
            to_normalized = torch.as_tensor(index_to_normalized(self.fixed.size), dtype=torch.float64,
                                            device=self.device)
            self.points = (torch.cat([idx, ones], dim=1) @ to_normalized.T).to(torch.float32)
            # Points are cheap: chunk by a budget of warped points rather than of poses.
            chunk = max(chunk, (1 << 20) // max(len(idx), 1))
        self.chunk = chunk
        self._fixed_points = None  # see grid_of

    def for_search(self) -> "Objective":
        """This objective on its measure's search stand-in (``Prepared.for_search``), or itself."""
        prepared = self.prepared.for_search()
        if prepared is self.prepared:
            return self
        return Objective(prepared, self.fixed, self.moving, self.model, self.initial.cpu().numpy())

    def matrices(self, params: torch.Tensor) -> torch.Tensor:
        """(B, 4, 4) fixed -> moving LPS matrices of the parameter vectors."""
        return self.initial @ self.model.matrix(params.to(self.device))

    def grid(self, matrices: torch.Tensor) -> torch.Tensor:
        """Normalized moving coordinates (B, Z, Y, X, 3) of the fixed grid, or (B, 1, 1, N, 3)
        of the prepared points."""
        theta = (self._to_moving @ matrices @ self._from_fixed)[:, :3, :].to(torch.float32)
        if self.points is not None:
            b = theta.shape[0]  # one (N, 4) x (4, 3B) product, not B small ones
            xyz = (self.points @ theta.permute(2, 0, 1).reshape(4, 3 * b)).view(-1, b, 3)
            return xyz.transpose(0, 1)[:, None, None]
        return F.affine_grid(theta, [theta.shape[0], 1, *self.fixed.shape], align_corners=True)

    def grid_of(self, params: torch.Tensor) -> torch.Tensor:
        """The sampling grid of (B, n) parameter vectors: ``grid(matrices(params))``, plus, for a
        model with a fixed-space ``displacement`` (the probe-pressure model), that displacement
        taken through the linear part of the map (it is applied before the matrix)."""
        matrices = self.matrices(params)
        grid = self.grid(matrices)
        if not hasattr(self.model, "displacement"):
            return grid
        if self._fixed_points is None:  # LPS of the fixed grid (or prepared points), once per level
            to_world = self._from_fixed[:3].to(torch.float32)
            self._fixed_points = (self.points @ to_world.T)[None, None] if self.points is not None else \
                F.affine_grid(to_world[None], [1, 1, *self.fixed.shape], align_corners=True)[0]
        d = self.model.displacement(params.to(self.device), self._fixed_points)  # (B, ..., 3) mm
        linear = (self._to_moving @ matrices)[:, :3, :3].to(grid.dtype)
        return grid + (d.flatten(1, -2) @ linear.transpose(1, 2)).view_as(grid)

    def warp(self, grid: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Moving features and validity on the fixed grid for normalized sampling ``grid``."""
        warped, valid = sample(self.prepared.moving, grid)
        if self.moving_mask is not None:
            inside, _ = sample(self.moving_mask, grid.detach())
            valid = valid * (inside > 0.5).to(valid.dtype)
        if self._scatter is not None and grid.shape[1:4] == (1, 1, len(self._scatter[0])):
            warped, valid = self._on_fixed_grid(warped), self._on_fixed_grid(valid)
        return warped, valid

    def _on_fixed_grid(self, values: torch.Tensor) -> torch.Tensor:
        """(B, C, 1, 1, N) values at the read voxels -> (B, C, Z, Y, X), zero elsewhere."""
        index, shape = self._scatter
        full = values.new_zeros(values.shape[0], values.shape[1], shape[0] * shape[1] * shape[2])
        return full.index_copy(2, index, values.flatten(2)).view(*values.shape[:2], *shape)

    def similarity_of_grid(self, grid: torch.Tensor) -> torch.Tensor:
        """Similarity (B,) for arbitrary sampling grids, e.g. affine grid + dense displacement."""
        if self.prepared.needs_valid:
            warped, valid = self.warp(grid)
        else:  # no validity mask: one grid_sample, no mask sampling or comparisons
            src = self.prepared.moving
            if self.prepared.interpolation == "cubic":
                warped = sample_cubic(src, grid)
            else:
                warped = grid_sample(src[None].expand(grid.shape[0], *src.shape), grid, padding_mode="zeros", align_corners=True)
            valid = None
        self.n_evals += grid.shape[0]
        return self.prepared.evaluate(warped, valid)

    def similarity(self, params: torch.Tensor) -> torch.Tensor:
        """Similarity (B,) of (B, n) parameter vectors; differentiable when ``params`` requires grad."""
        params = torch.as_tensor(params, dtype=torch.float64, device=self.device)
        if params.dim() == 1:
            params = params[None]
        out = [self.similarity_of_grid(self.grid_of(p)) for p in params.split(self.chunk)]
        return torch.cat(out)

    def overlap(self, params: Optional[np.ndarray] = None) -> float:
        """Share of the fixed mask (or grid) that maps inside the moving image."""
        p = torch.as_tensor(self.model.identity() if params is None else params, dtype=torch.float64)
        with torch.no_grad():
            _, valid = self.warp(self.grid_of(p[None]))
        region = valid if self.prepared.fixed_mask is None else valid * self.prepared.fixed_mask
        total = valid.numel() if self.prepared.fixed_mask is None else float(self.prepared.fixed_mask.sum())
        return float(region.sum()) / max(total, 1.0)
