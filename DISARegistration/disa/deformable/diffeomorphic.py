"""Diffeomorphic models optimized per case.

- ``"diffeomorphic"``: a stationary velocity field v on a grid ``velocity_grid`` working voxels
  of each level apart, exponentiated there by scaling and squaring and interpolated to the
  level's working grid.
- ``"neural-ode"`` (after NODEO, Wu et al. CVPR 2022, and node_mind_diffeomorphic.md): v is the
  output of a small convolutional network of a fixed coordinate input (plus, by default, the
  discrete step's displacement as a fixed offset); the map phi solves d phi / dt = v(phi(t))
  over t in [0, 1], integrated by Euler or RK4 steps.

Both minimize the (combined) similarity of ``losses.combined_loss`` (forward, and backward
through the negated displacement), a diffusion regularizer on the velocity, and a penalty on
Jacobian determinants below a floor, with Adam, coarse to fine. The regularizers are taken on
the grid the parameters live on (the velocity's, where the field is exponentiated or
integrated); only the similarity is evaluated on the level's working grid. The neural-ODE's
network lives on one grid fixed in space for every level; the stationary velocity starts each
level on that level's own grid, refined from the one before with Adam's moments carried along
(``refined_adam``), so its coarse iterations cost an eighth of the fine ones. Each level stops
after its iterations or once the loss has changed by less than ``tolerance`` (relative) over
``patience`` iterations.
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
    grid_ratios,
    identity_grid,
    interpolate_to,
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


def optimize_loop(optimizer: Adam, displacement: Callable[[], Tuple[torch.Tensor, torch.Tensor]],
                  levels: Sequence[Level], smoothness: float, jacobian_weight: float, jacobian_floor: float,
                  tolerance: float, patience: int, bidirectional: bool, monitor: Optional[Monitor],
                  linearize: float = 0.0) -> Tuple[torch.Tensor, list]:
    """``optimizer`` (Adam over the parameters) level after level (coarse to fine);
    ``displacement()`` returns (displacement, velocity) in voxels of the parameters' own grid:
    the regularizers are taken there and only the similarity on the level's working grid (the
    displacement interpolated to it), so a fine level's smoothness and Jacobian penalty cost what
    a coarse one's do (mean squared differences per voxel and determinants do not depend on the
    voxel size to first order; on both tuning sets, session 24: Dice 0.9239 against 0.9225, TRE
    0.426 against 0.437 mm, the stationary field's finest level 1.5 instead of 2.6 s). Each level
    stops after its iterations or once converged. ``linearize``: the squared-difference terms by
    their Gauss-Newton model in the displacement, rebuilt once it has moved this many voxels
    (``linearized.LinearizedLoss``; 0: exact every iteration). Returns the finest displacement
    and, per level, the losses of its iterations and its seconds."""
    history = []
    for terms, shape, iterations in levels:
        level, started = [], time.perf_counter()
        objective = LinearizedLoss(terms, linearize, bidirectional)
        for _ in range(int(iterations)):
            optimizer.zero_grad()
            disp, velocity = displacement()
            loss = objective(resize_field(disp, shape), smoothness, regularizer=smoothness_loss(velocity))
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
        disp, _ = displacement()
    return resize_field(disp, levels[-1][1]).detach(), history


def refined_adam(previous: Optional[Adam], velocity: torch.Tensor, lr: float) -> Adam:
    """Adam over ``velocity`` (1, 3, z, y, x), refined from the velocity ``previous`` optimized
    on a coarser grid: its step count and moments carried, interpolated to the new grid and
    scaled as the gradient scales (a finer node moves 1 / (r_x r_y r_z) of the voxels a coarser
    one did, and component c is counted in voxels 1 / r_c as large: the first moment times
    1 / (r_x r_y r_z r_c), the second by its square). A fresh Adam instead moves every node by
    about ``lr`` in its first steps, noise included: on both tuning sets (session 24, finest
    level restarted) Dice 0.9184 against 0.9243 with the moments carried; a learning rate 0.25x
    to 4x for the restarted level did not help (0.9163-0.9190). ``previous`` None: a fresh Adam."""
    optimizer = Adam([velocity], lr=lr)
    if previous is None:
        return optimizer
    new = velocity.shape[-3:]
    ratio = grid_ratios(previous.params[0].shape[-3:], new)  # x, y, z
    volume = ratio[0] * ratio[1] * ratio[2]
    scale = torch.tensor([1.0 / (volume * r) for r in ratio], dtype=velocity.dtype,
                         device=velocity.device).view(1, 3, 1, 1, 1)
    optimizer.steps = previous.steps
    optimizer.m = [interpolate_to(previous.m[0], new) * scale]
    optimizer.v = [interpolate_to(previous.v[0], new).clamp_min(0.0) * scale * scale]
    return optimizer


def register_svf(levels: Sequence[Level], lr: float, smoothness: float, jacobian_weight: float,
                 jacobian_floor: float, squaring_steps: int, velocity_grid: int, tolerance: float,
                 patience: int, bidirectional: bool = True, monitor: Optional[Monitor] = None,
                 initial: Optional[torch.Tensor] = None, linearize: float = 0.0):
    """Stationary velocity field registration over ``levels`` (coarse to fine); at each level the
    velocity lives on a grid ``velocity_grid`` voxels of that level apart, refined from the
    level before (``resize_field``; Adam's moments by ``refined_adam``), and starts at zero or,
    given ``initial`` (a voxel displacement of any working grid), at that displacement. The
    coarse levels' velocity on their own grid instead of the finest one's (session 24, both
    tuning sets, with the moments carried): Dice 0.9243 against 0.9239, TRE 0.433 against
    0.426 mm, the coarse level 0.6 instead of 2.2 s. ``linearize``: see ``optimize_loop``.
    Returns (voxel displacement on the finest grid, (losses, seconds) per level)."""
    device = levels[-1][0][0][1].fixed.device
    velocity, optimizer, history, disp = None, None, [], None
    for level in levels:
        small = coarse_shape(level[1], velocity_grid)
        if velocity is not None:
            start = resize_field(velocity.detach(), small)
        elif initial is not None:  # exp(v) = u to first order: a given displacement is the velocity's start
            start = resize_field(initial.detach().float(), small)
        else:
            start = torch.zeros(1, 3, *small, device=device)
        velocity = start.requires_grad_(True)
        optimizer = refined_adam(optimizer, velocity, lr)

        def displacement(v=velocity):
            # exponentiated on the velocity's own grid (as the neural-ODE flow is integrated)
            return scaling_and_squaring(v, squaring_steps), v

        disp, h = optimize_loop(optimizer, displacement, [level], smoothness, jacobian_weight, jacobian_floor,
                                tolerance, patience, bidirectional, monitor, linearize)
        history += h
    return disp, history


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

    def displacement():
        v_small = net(coords) if offset is None else offset + net(coords)  # voxels of the velocity grid
        return integrate(v_small, time_steps, integrator), v_small

    return optimize_loop(Adam(list(net.parameters()), lr=lr), displacement, levels, smoothness, jacobian_weight,
                         jacobian_floor, tolerance, patience, bidirectional, monitor)
