"""Cubic B-spline sampling of feature volumes, as 8 trilinear lookups.

Why: a measure that compares features sampled by trilinear interpolation is biased towards
poses where the sampled points fall on the source lattice. The 2x2x2 trilinear weights of a
point at sub-voxel offset t have a spread of t(1 - t) per axis: none on a lattice node, the
most halfway between nodes, so sampled features are sharp at the nodes and blurred between
them, and a dot product of sharp features scores higher. With parallel fixed and moving grids of
equal spacing this moves the optimum to lattice coincidence (2.6 mm off on held-out pairs).
Cubic B-spline weights (no prefilter: an approximating spline) reproduce polynomials up to
degree 3, so their spread is 1/3 voxel² per axis at every offset: every point gets the same
blur, wherever it falls.

The 4x4x4 taps are computed as 8 trilinear ``grid_sample`` lookups (Sigg & Hadwiger, "Fast
third-order texture filtering", GPU Gems 2, 2005): per axis, the weights of taps -1, 0 and of
taps +1, +2 are positive and are folded into one linear lookup each. Outside the source the
features read 0, as with ``padding_mode="zeros"``. One ``grid_sample`` call does all 8.
Differentiable with respect to the grid (the spline is C², the lookups are exact for every
offset inside a cell).
"""
from __future__ import annotations

import torch

from .sampling import grid_sample


def _axis_lookups(x: torch.Tensor):
    """For voxel coordinates ``x`` along an axis: the two lookup positions (voxel units) and
    their weights."""
    i = torch.floor(x)
    t = x - i
    t2, t3 = t * t, t * t * t
    w0 = (1 - 3 * t + 3 * t2 - t3) / 6
    w1 = (4 - 6 * t2 + 3 * t3) / 6
    w2 = (1 + 3 * t + 3 * t2 - 3 * t3) / 6
    w3 = t3 / 6
    g0, g1 = w0 + w1, w2 + w3
    h0 = i - 1 + w1 / g0
    h1 = i + 1 + w3 / g1
    return (h0, g0), (h1, g1)


def sample_cubic(source: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Cubic B-spline samples (B, C, Z, Y, X) of (C, z, y, x) or (B, C, z, y, x) ``source`` at
    normalized ``grid`` (B, Z, Y, X, 3) (x, y, z order, ``align_corners=True`` convention)."""
    b = grid.shape[0]
    src = source[None].expand(b, *source.shape) if source.dim() == 4 else source
    sizes = (src.shape[4], src.shape[3], src.shape[2])  # x, y, z
    grid = grid.to(src.dtype)
    axes = []
    for k, n in enumerate(sizes):
        scale = (n - 1) / 2.0
        x = (grid[..., k] + 1) * scale  # voxel units
        axes.append([((h / scale) - 1 if n > 1 else h * 0, g) for h, g in _axis_lookups(x)])
    # the 8 lookups in one grid_sample call (stacked along z), then their weighted sum
    coords, weights = [], []
    for hx, gx in axes[0]:
        for hy, gy in axes[1]:
            for hz, gz in axes[2]:
                coords.append(torch.stack([hx, hy, hz], dim=-1))
                weights.append(gx * gy * gz)
    z = grid.shape[1]
    values = grid_sample(src, torch.cat(coords, dim=1), mode="bilinear", padding_mode="zeros",
                         align_corners=True)
    values = values.unflatten(2, (8, z))  # (B, C, 8, Z, Y, X)
    return (values * torch.stack(weights, dim=1)[:, None]).sum(dim=2)
