"""Discrete displacement search with coupled convex smoothing (Heinrich et al., WBIR 2014;
ConvexAdam), as in the DISA paper's MR-CT experiment (Sect. 4.2, Table 2).

1. Features of both images on the working grid are averaged over the cells of a control grid
   ``cell`` working voxels apart (about 8 mm): the fixed ones per cell, the moving ones per
   cell-sized window every ``stride`` voxels.
2. Cost volume: for every control point and every candidate displacement (multiples of
   ``stride`` voxels within ``radius`` steps per axis) the mean squared feature difference,
   normalized by its mean over the volume and summed over the terms with their weights.
3. Coupled convex optimization: alternately a smooth field (box-filtered) and the per-point
   argmin of ``cost + alpha * |d - smooth|^2``, with increasing coupling ``alpha``.
"""
from __future__ import annotations

import itertools
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..optim import Monitor
from .fields import control_to_working, smooth
from .losses import DenseTerm


def candidates(radius: int, stride: int, device=None) -> torch.Tensor:
    """(K, 3) candidate displacements (x, y, z) in working voxels: multiples of ``stride`` up to
    ``radius`` steps along each axis."""
    r = range(-radius, radius + 1)
    steps = [(x, y, z) for z, y, x in itertools.product(r, r, r)]
    return torch.tensor(steps, dtype=torch.float32, device=device) * stride


def cost_volume(fixed: torch.Tensor, moving: torch.Tensor, cell: int, stride: int, radius: int) -> torch.Tensor:
    """(K, Gz, Gy, Gx) mean squared difference of cell-averaged features for each candidate of
    :func:`candidates` (``fixed``/``moving``: (1, C, Z, Y, X) on the working grid)."""
    fixed_cells = F.avg_pool3d(fixed, cell, stride=cell)[0]  # (C, Gz, Gy, Gx)
    g = fixed_cells.shape[1:]
    pad = radius * stride
    padded = F.pad(moving, (pad,) * 6, mode="replicate")
    windows = F.avg_pool3d(padded, cell, stride=stride)[0]  # window j starts at working voxel j*stride - pad
    step = cell // stride
    costs = []
    r = range(-radius, radius + 1)
    for kz, ky, kx in itertools.product(r, r, r):
        z0, y0, x0 = kz + radius, ky + radius, kx + radius
        view = windows[:, z0:z0 + step * g[0]:step, y0:y0 + step * g[1]:step, x0:x0 + step * g[2]:step]
        costs.append(((fixed_cells - view) ** 2).mean(0))
    return torch.stack(costs)


def coupled_convex(cost: torch.Tensor, cands: torch.Tensor, coupling: Sequence[float], cell: int,
                   monitor: Optional[Monitor] = None) -> torch.Tensor:
    """Control-grid voxel displacement (1, 3, Gz, Gy, Gx) from a (K, Gz, Gy, Gx) cost volume:
    the argmin, smoothed, then argmins of the cost coupled to the smooth field with weights
    ``coupling`` (per squared control-grid spacing)."""
    k, gz, gy, gx = cost.shape
    flat = cost.reshape(k, -1)
    c = cands.to(cost.dtype) / cell  # (K, 3) in control-grid spacings
    c2 = (c * c).sum(1, keepdim=True)  # (K, 1)

    def field_of(index: torch.Tensor) -> torch.Tensor:
        return cands[index].T.reshape(1, 3, gz, gy, gx)

    soft = smooth(field_of(flat.argmin(0)))
    for alpha in coupling:
        if monitor is not None:
            monitor.evaluated(float(flat.min(0).values.mean()))
        s = soft.reshape(3, -1) / cell  # (3, N)
        # |c - s|^2 = |c|^2 - 2 c.s + |s|^2 (the last is constant per point)
        coupled = flat + alpha * (c2 - 2.0 * (c @ s))
        soft = smooth(field_of(coupled.argmin(0)))
    return soft


def discrete_search(terms: Sequence[Tuple[float, DenseTerm]], cell: int, stride: int, radius: int,
                    coupling: Sequence[float], monitor: Optional[Monitor] = None) -> torch.Tensor:
    """Working-grid voxel displacement (1, 3, Z, Y, X) of the discrete + convex step."""
    shape = terms[0][1].fixed.shape[-3:]
    total = None
    for weight, term in terms:
        if weight == 0:
            continue
        f, m = term.discrete_features()
        cost = cost_volume(f, m, cell, stride, radius)
        cost = cost / cost.mean().clamp_min(1e-12)
        total = weight * cost if total is None else total + weight * cost
        if monitor is not None:
            monitor.check()
    cands = candidates(radius, stride, total.device)
    control = coupled_convex(total, cands, coupling, cell, monitor)
    return control_to_working(control, cell, shape)
