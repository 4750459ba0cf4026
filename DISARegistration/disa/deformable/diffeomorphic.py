"""Diffeomorphic models optimized per case.

- ``"diffeomorphic"``: a stationary velocity field v on a grid ``velocity_grid`` working voxels
  apart (interpolated to the working grid), exponentiated by scaling and squaring.
- ``"neural-ode"`` (after NODEO, Wu et al. CVPR 2022, and node_mind_diffeomorphic.md): v is the
  output of a small convolutional network of a fixed coordinate input; the map phi solves
  d phi / dt = v(phi(t)) over t in [0, 1], integrated by Euler or RK4 steps.

Both minimize the (combined) similarity of ``losses.combined_loss`` (forward, and backward
through the negated displacement), a diffusion regularizer on the velocity, and a penalty on
Jacobian determinants below a floor, with Adam; they stop after ``iterations`` or once the loss
has changed by less than ``tolerance`` (relative) over ``patience`` iterations.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import torch
from torch import nn

from ..optim import Monitor
from .fields import (
    folding_penalty,
    identity_grid,
    resize_field,
    scaling_and_squaring,
    smoothness_loss,
    voxel_scale,
)
from .losses import DenseTerm, combined_loss


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
        return nn.functional.grid_sample(velocity, grid, mode="bilinear", padding_mode="border", align_corners=True)

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


def optimize_loop(parameters, displacement: Callable[[], Tuple[torch.Tensor, torch.Tensor]],
                  terms: Sequence[Tuple[float, DenseTerm]], iterations: int, lr: float, smoothness: float,
                  jacobian_weight: float, jacobian_floor: float, tolerance: float, patience: int,
                  bidirectional: bool, monitor: Optional[Monitor]) -> Tuple[torch.Tensor, list]:
    """Adam on ``parameters``; ``displacement()`` returns (working displacement, velocity)."""
    optimizer = torch.optim.Adam(parameters, lr=lr)
    history = []
    for _ in range(int(iterations)):
        optimizer.zero_grad()
        disp, velocity = displacement()
        loss = combined_loss(terms, disp, smoothness, bidirectional, regularizer=smoothness_loss(velocity))
        if jacobian_weight:
            loss = loss + jacobian_weight * folding_penalty(disp, jacobian_floor)
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
        if monitor is not None:
            monitor.evaluated(history[-1])
        if len(history) > patience:
            old = history[-1 - patience]
            if abs(old - history[-1]) <= tolerance * max(abs(old), 1e-12):
                break
    with torch.no_grad():
        disp, _ = displacement()
    return disp.detach(), history


def register_svf(terms, shape, iterations: int, lr: float, smoothness: float, jacobian_weight: float,
                 jacobian_floor: float, squaring_steps: int, velocity_grid: int, tolerance: float,
                 patience: int, bidirectional: bool = True, monitor: Optional[Monitor] = None):
    """Stationary velocity field registration; returns (voxel displacement, loss history)."""
    device = terms[0][1].fixed.device
    small = coarse_shape(shape, velocity_grid)
    velocity = torch.zeros(1, 3, *small, device=device, requires_grad=True)

    def displacement():
        v = resize_field(velocity, shape)
        return scaling_and_squaring(v, squaring_steps), v

    return optimize_loop([velocity], displacement, terms, iterations, lr, smoothness, jacobian_weight,
                         jacobian_floor, tolerance, patience, bidirectional, monitor)


def register_neural_ode(terms, shape, iterations: int, lr: float, smoothness: float, jacobian_weight: float,
                        jacobian_floor: float, integrator: str, time_steps: int, velocity_grid: int,
                        tolerance: float, patience: int, seed: int = 0, bidirectional: bool = True,
                        monitor: Optional[Monitor] = None):
    """Neural-ODE registration; returns (voxel displacement, loss history)."""
    device = terms[0][1].fixed.device
    small = coarse_shape(shape, velocity_grid)
    generator = torch.Generator().manual_seed(int(seed))
    net = VelocityNet(generator=generator).to(device)
    coords = identity_grid(small, device).permute(0, 4, 1, 2, 3).contiguous()

    def displacement():
        v_small = net(coords)  # in voxels of the velocity grid
        disp_small = integrate(v_small, time_steps, integrator)
        return resize_field(disp_small, shape), resize_field(v_small, shape)

    return optimize_loop(list(net.parameters()), displacement, terms, iterations, lr, smoothness,
                         jacobian_weight, jacobian_floor, tolerance, patience, bidirectional, monitor)
