"""Diffeomorphic models optimized per case.

- ``"diffeomorphic"``: a stationary velocity field v on a grid ``velocity_grid`` working voxels
  apart, exponentiated there by scaling and squaring and interpolated to the working grid.
- ``"neural-ode"`` (after NODEO, Wu et al. CVPR 2022, and node_mind_diffeomorphic.md): v is the
  output of a small convolutional network of a fixed coordinate input (plus, by default, the
  discrete step's displacement as a fixed offset); the map phi solves d phi / dt = v(phi(t))
  over t in [0, 1], integrated by Euler or RK4 steps.

Both minimize the (combined) similarity of ``losses.combined_loss`` (forward, and backward
through the negated displacement), a diffusion regularizer on the velocity, and a penalty on
Jacobian determinants below a floor, with Adam, coarse to fine: the velocity (or the network)
lives on one grid fixed in space, and only the similarity is evaluated on finer working grids
level after level, so most iterations cost a fraction of a fine one. Each level stops after its
iterations or once the loss has changed by less than ``tolerance`` (relative) over ``patience``
iterations.
"""
from __future__ import annotations

import time
from typing import Callable, Optional, Sequence, Tuple

import torch
from torch import nn

from ..optim import Adam, Monitor
from ..spatial.sampling import grid_sample
from .fields import (
    folding_penalty,
    identity_grid,
    resize_field,
    scaling_and_squaring,
    smoothness_loss,
    voxel_scale,
)
from .linearized import LinearizedLoss
from .losses import DenseTerm


def coarse_shape(shape, step: int):
    """A grid ``step`` working voxels apart spanning the same corners (at least 4 per axis)."""
    return tuple(max(4, (int(n) - 1) // max(int(step), 1) + 1) for n in shape)


def integrate(velocity: torch.Tensor, steps: int, integrator: str) -> torch.Tensor:
    """Displacement of the flow d phi/dt = v(phi) over t in [0, 1] (``steps`` Euler or RK4 steps),
    v a (1, 3, Z, Y, X) voxel velocity sampled trilinearly along the trajectories."""
    shape = velocity.shape[-3:]
    scale = voxel_scale(shape, velocity.device, velocity.dtype)
    base = identity_grid(shape, velocity.device, velocity.dtype)

    def v_at(disp: torch.Tensor) -> torch.Tensor:
        grid = base + disp.permute(0, 2, 3, 4, 1) * scale
        return grid_sample(velocity, grid, mode="bilinear", padding_mode="border", align_corners=True)

    h = 1.0 / steps
    disp = torch.zeros_like(velocity)
    for _ in range(steps):
        if integrator == "euler":
            disp = disp + h * v_at(disp)
        else:
            k1 = v_at(disp)
            k2 = v_at(disp + 0.5 * h * k1)
            k3 = v_at(disp + 0.5 * h * k2)
            k4 = v_at(disp + h * k3)
            disp = disp + h / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    return disp


class VelocityNet(nn.Module):
    """A small CNN from a fixed coordinate input (1, 3, z, y, x) to a velocity (1, 3, z, y, x);
    its last layer starts at zero (identity map), the others from ``generator``."""

    def __init__(self, width: int = 16, generator: Optional[torch.Generator] = None):
        super().__init__()
        self.body = nn.Sequential(nn.Conv3d(3, width, 3, padding=1), nn.LeakyReLU(0.2),
                                  nn.Conv3d(width, width, 3, padding=1), nn.LeakyReLU(0.2),
                                  nn.Conv3d(width, 3, 3, padding=1))
        with torch.no_grad():
            for layer in self.body:
                if isinstance(layer, nn.Conv3d):
                    fan_in = layer.weight[0].numel()
                    layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
                    layer.bias.zero_()
            self.body[-1].weight.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


#: One level of a coarse-to-fine run: its similarity terms, working-grid shape and iterations.
Level = Tuple[Sequence[Tuple[float, DenseTerm]], Tuple[int, int, int], int]


def optimize_loop(parameters, displacement: Callable[[tuple], Tuple[torch.Tensor, torch.Tensor]],
                  levels: Sequence[Level], lr: float, smoothness: float, jacobian_weight: float,
                  jacobian_floor: float, tolerance: float, patience: int, bidirectional: bool,
                  monitor: Optional[Monitor], linearize: float = 0.0) -> Tuple[torch.Tensor, list]:
    """Adam on ``parameters``, level after level (coarse to fine); ``displacement(shape)``
    returns (displacement, velocity) in voxels of a working grid of ``shape``. The parameters
    live on a grid fixed in space, so they carry over from level to level unchanged; each level
    stops after its iterations or once converged. ``linearize``: the squared-difference terms
    by their Gauss-Newton model in the displacement, rebuilt once it has moved this many voxels
    (``linearized.LinearizedLoss``; 0: exact every iteration). Returns the finest displacement
    and, per level, the losses of its iterations and its seconds."""
    optimizer = Adam(parameters, lr=lr)
    history = []
    for terms, shape, iterations in levels:
        level, started = [], time.perf_counter()
        objective = LinearizedLoss(terms, linearize, bidirectional)
        for _ in range(int(iterations)):
            optimizer.zero_grad()
            disp, velocity = displacement(shape)
            loss = objective(disp, smoothness, regularizer=smoothness_loss(velocity))
            if jacobian_weight:
                loss = loss + jacobian_weight * folding_penalty(disp, jacobian_floor)
            loss.backward()
            optimizer.step()
            level.append(float(loss.detach()))
            if monitor is not None:
                monitor.evaluated(level[-1])
            if len(level) > patience:
                old = level[-1 - patience]
                if abs(old - level[-1]) <= tolerance * max(abs(old), 1e-12):
                    break
        history.append((level, time.perf_counter() - started))
    with torch.no_grad():
        disp, _ = displacement(levels[-1][1])
    return disp.detach(), history


def register_svf(levels: Sequence[Level], lr: float, smoothness: float, jacobian_weight: float,
                 jacobian_floor: float, squaring_steps: int, velocity_grid: int, tolerance: float,
                 patience: int, bidirectional: bool = True, monitor: Optional[Monitor] = None,
                 initial: Optional[torch.Tensor] = None, linearize: float = 0.0):
    """Stationary velocity field registration over ``levels`` (coarse to fine); the velocity
    lives on a grid ``velocity_grid`` voxels of the finest level apart and starts at zero or,
    given ``initial`` (a voxel displacement of any working grid), at that displacement.
    ``linearize``: see ``optimize_loop``. Returns (voxel displacement on the finest grid,
    (losses, seconds) per level)."""
    device = levels[-1][0][0][1].fixed.device
    small = coarse_shape(levels[-1][1], velocity_grid)
    # exp(v) = u to first order: a given displacement is the velocity's start
    velocity = (torch.zeros(1, 3, *small, device=device) if initial is None
                else resize_field(initial.detach().float(), small)).requires_grad_(True)

    def displacement(shape):
        # exponentiated on the velocity's own grid (as the neural-ODE flow is integrated), then
        # interpolated: the squarings cost the same at every level
        return resize_field(scaling_and_squaring(velocity, squaring_steps), shape), resize_field(velocity, shape)

    return optimize_loop([velocity], displacement, levels, lr, smoothness, jacobian_weight, jacobian_floor,
                         tolerance, patience, bidirectional, monitor, linearize)


def register_neural_ode(levels: Sequence[Level], lr: float, smoothness: float, jacobian_weight: float,
                        jacobian_floor: float, integrator: str, time_steps: int, velocity_grid: int,
                        tolerance: float, patience: int, seed: int = 0, bidirectional: bool = True,
                        monitor: Optional[Monitor] = None, initial: Optional[torch.Tensor] = None):
    """Neural-ODE registration over ``levels`` (coarse to fine); the network's velocity and the
    flow live on a grid ``velocity_grid`` voxels of the finest level apart. Given ``initial`` (a
    voxel displacement of any working grid), the velocity is that displacement (its first-order
    logarithm, as for the stationary field) plus the network's output, which starts at zero.
    Returns (voxel displacement on the finest grid, (losses, seconds) per level)."""
    device = levels[-1][0][0][1].fixed.device
    small = coarse_shape(levels[-1][1], velocity_grid)
    generator = torch.Generator().manual_seed(int(seed))
    net = VelocityNet(generator=generator).to(device)
    coords = identity_grid(small, device).permute(0, 4, 1, 2, 3).contiguous()
    offset = None if initial is None else resize_field(initial.detach().float(), small)

    def displacement(shape):
        v_small = net(coords) if offset is None else offset + net(coords)  # voxels of the velocity grid
        disp_small = integrate(v_small, time_steps, integrator)
        return resize_field(disp_small, shape), resize_field(v_small, shape)

    return optimize_loop(list(net.parameters()), displacement, levels, lr, smoothness, jacobian_weight,
                         jacobian_floor, tolerance, patience, bidirectional, monitor)
