"""Cubic B-spline sampling of descriptor volumes (``disa.spatial.bspline``) and what it is for:
the DISA objective no longer snaps to poses where the fixed and moving lattices coincide."""
from __future__ import annotations

import numpy as np
import torch

from disa.spatial.bspline import sample_cubic


def bspline(u: float) -> float:
    u = abs(u)
    return 2 / 3 - u ** 2 + u ** 3 / 2 if u < 1 else ((2 - u) ** 3 / 6 if u < 2 else 0.0)


def direct(src: torch.Tensor, points: torch.Tensor) -> np.ndarray:
    """The 4x4x4-tap definition, zero outside the source, point by point."""
    c, nz, ny, nx = src.shape
    out = []
    for p in points.view(-1, 3):
        x, y, z = [(float(p[k]) + 1) * (n - 1) / 2 for k, n in enumerate((nx, ny, nz))]
        wx = np.array([bspline(x - i) for i in range(nx)])
        wy = np.array([bspline(y - j) for j in range(ny)])
        wz = np.array([bspline(z - k) for k in range(nz)])
        w = wz[:, None, None] * wy[None, :, None] * wx[None, None, :]
        out.append((src.numpy() * w).sum(axis=(1, 2, 3)))
    return np.array(out).T


def test_eight_lookups_equal_the_64_tap_spline_inside_and_at_the_border():
    torch.manual_seed(0)
    src = torch.randn(2, 5, 6, 7, dtype=torch.float64)
    points = torch.rand(1, 1, 1, 60, 3, dtype=torch.float64) * 2.5 - 1.25  # some outside the grid
    out = sample_cubic(src, points)[0, :, 0, 0].numpy()
    assert np.abs(out - direct(src, points)).max() < 1e-12


def test_gradient_with_respect_to_the_points_is_exact():
    torch.manual_seed(1)
    src = torch.randn(1, 4, 5, 6, dtype=torch.float64)
    points = (torch.rand(1, 1, 1, 12, 3, dtype=torch.float64) * 1.6 - 0.8).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda q: sample_cubic(src, q), (points,))


def test_the_blur_is_the_same_at_every_sub_voxel_offset():
    """Sampling a sharp feature (one nonzero voxel) keeps the same energy whether the point sits
    on a node or between nodes; trilinear sampling keeps all of it on a node and half of it
    halfway, the cause of the lattice-coincidence optimum."""
    import torch.nn.functional as F

    src = torch.zeros(1, 9, 9, 9, dtype=torch.float64)
    src[0, 4, 4, 4] = 1.0
    offsets = np.linspace(-3, 3, 61)  # voxels along x, through the spike
    x = torch.tensor(offsets / 4.0, dtype=torch.float64)  # normalized: 8 voxels span [-1, 1]
    grid = torch.zeros(1, 1, 1, len(x), 3, dtype=torch.float64)
    grid[..., 0] = x
    cubic = (sample_cubic(src, grid)[0, 0, 0, 0] ** 2).numpy()
    linear = (F.grid_sample(src[None], grid, align_corners=True)[0, 0, 0, 0] ** 2).numpy()
    on_node, halfway = 30, 35  # offsets 0 and 0.5 voxel
    assert linear[on_node] / linear[halfway] > 3.9  # 1 against 0.25
    # a comb of points one voxel apart: the energy it reads back barely depends on where it
    # starts with cubic weights (0.50 on the nodes, 0.46 halfway), by 2x with linear ones
    energies = [cubic[s::10].sum() for s in range(10)]
    assert max(energies) / min(energies) < 1.1
    lin_energies = [linear[s::10].sum() for s in range(10)]
    assert max(lin_energies) / min(lin_energies) > 1.9
