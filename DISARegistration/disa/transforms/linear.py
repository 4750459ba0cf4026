"""Rigid and affine transform models as batched, differentiable parameter vectors.

All models act about a fixed centre ``c`` (the fixed image's centre by default), so rotations
and translations are decoupled for the optimizer:  x -> A (x - c) + c + t.
Parameter units are chosen so that one unit moves a point ~0.25-0.5 mm at 25 mm from the centre:
rotations in degrees (rotation vector), translations in mm, affine matrix entries in percent.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import InputError


def _skew(w: torch.Tensor) -> torch.Tensor:
    z = torch.zeros_like(w[..., 0])
    return torch.stack([
        torch.stack([z, -w[..., 2], w[..., 1]], -1),
        torch.stack([w[..., 2], z, -w[..., 0]], -1),
        torch.stack([-w[..., 1], w[..., 0], z], -1),
    ], -2)


def rotation_matrix(rotvec_deg: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) from rotation vectors in degrees (axis * angle).

    Rodrigues' formula ``I + a S + b S^2`` with ``a = sin t / t``, ``b = (1 - cos t) / t^2``
    (the closed form of ``matrix_exp(S)``, several times cheaper per optimizer call); below
    1e-3 rad their Taylor series keep values and gradients exact at t = 0.
    """
    s = _skew(rotvec_deg * (math.pi / 180.0))
    t2 = (rotvec_deg * (math.pi / 180.0)).square().sum(-1)[..., None, None]
    small = t2 < 1e-6
    t2_safe = torch.where(small, torch.ones_like(t2), t2)
    t = t2_safe.sqrt()
    a = torch.where(small, 1.0 - t2 / 6.0, torch.sin(t) / t)
    b = torch.where(small, 0.5 - t2 / 24.0, (1.0 - torch.cos(t)) / t2_safe)
    eye = torch.eye(3, dtype=s.dtype, device=s.device)
    return eye + a * s + b * (s @ s)


def _rotvec_deg(rotation: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(rotation).as_rotvec() * 180.0 / math.pi


class LinearModel:
    """Base of the parametric linear models: ``matrix(params)`` and its exact inverse."""

    name = "linear"
    n_params = 0

    def __init__(self, center=(0.0, 0.0, 0.0)):
        self.center = np.asarray(center, dtype=np.float64).reshape(3)

    def identity(self) -> np.ndarray:
        return np.zeros(self.n_params)

    def linear_part(self, params: torch.Tensor) -> torch.Tensor:  # (B, 3, 3)
        raise NotImplementedError

    def matrix(self, params: torch.Tensor) -> torch.Tensor:
        """(B, n) parameters -> (B, 4, 4) homogeneous matrices (differentiable)."""
        params = torch.as_tensor(params, dtype=torch.float64)
        if params.dim() == 1:
            params = params[None]
        a = self.linear_part(params)
        c = torch.as_tensor(self.center, dtype=a.dtype, device=a.device)
        t = params[:, 3:6]
        offset = c + t - (a @ c)
        top = torch.cat([a, offset[:, :, None]], dim=2)
        bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=a.dtype, device=a.device).expand(a.shape[0], 1, 4)
        return torch.cat([top, bottom], dim=1)

    def params_from_matrix(self, matrix: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def with_rigid_offsets(self, x0: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """(n, n_params) parameters of ``model(x0)`` followed by each rigid offset.

        ``offsets`` (n, 6): rotation vectors in degrees and translations in mm about the centre,
        applied in fixed space first. One physical parameterization serves every model, so a
        global search rotates an affine pose as it rotates a rigid one.
        """
        offsets = np.asarray(offsets, dtype=np.float64).reshape(-1, 6)
        start = self.matrix(torch.as_tensor(x0, dtype=torch.float64)[None])[0]
        moves = Rigid(self.center).matrix(torch.as_tensor(offsets))
        return self.params_from_matrices((start @ moves).numpy())

    def params_from_matrices(self, matrices: np.ndarray) -> np.ndarray:
        """(n, n_params) ``params_from_matrix`` of each of (n, 4, 4) ``matrices``."""
        return np.stack([self.params_from_matrix(m) for m in matrices])

    def _translation(self, matrix: np.ndarray) -> np.ndarray:
        a = matrix[:3, :3]
        return matrix[:3, 3] - self.center + a @ self.center


class Rigid(LinearModel):
    """6 parameters: rotation vector (degrees) and translation (mm) about the centre."""

    name = "rigid"
    n_params = 6

    def linear_part(self, params):
        return rotation_matrix(params[:, :3])

    def params_from_matrix(self, matrix):
        return self.rigid_params(np.asarray(matrix, dtype=np.float64)[None])[0]

    def params_from_matrices(self, matrices):
        return self.rigid_params(matrices)

    def rigid_params(self, matrices) -> np.ndarray:
        """(n, 6) rotation vectors and translations of (n, 4, 4) rigid ``matrices``, all at once
        (one rotation conversion for a global search's hundreds of poses: a loop over them took
        40 ms of a 1.2 s registration)."""
        m = np.asarray(matrices, dtype=np.float64).reshape(-1, 4, 4)
        r = m[:, :3, :3]
        orthogonal = np.abs(np.swapaxes(r, 1, 2) @ r - np.eye(3)).max(axis=(1, 2)) <= 1e-4
        if not np.all(orthogonal & (np.linalg.det(r) >= 0)):
            raise InputError("the matrix is not a rigid transform (rotation + translation)")
        return np.concatenate([_rotvec_deg(r), m[:, :3, 3] - self.center + r @ self.center], axis=1)


class Affine(LinearModel):
    """12 parameters: 3 rotation-free translation (mm) after 9 matrix entries in percent.

    Layout: ``[a00-1, a01, a02 | t0, t1, t2 | a10, a11-1, a12, a20, a21, a22-1]`` * 100 for the
    matrix entries, so that parameters 3:6 are the translation in every model.
    """

    name = "affine"
    n_params = 12
    _entries = (0, 1, 2, 6, 7, 8, 9, 10, 11)  # positions of the 9 matrix entries, row-major

    def linear_part(self, params):
        idx = torch.as_tensor(self._entries, device=params.device)
        a = params.index_select(1, idx).view(-1, 3, 3) / 100.0
        return a + torch.eye(3, dtype=params.dtype, device=params.device)

    def params_from_matrix(self, matrix):
        matrix = np.asarray(matrix, dtype=np.float64)
        p = np.zeros(12)
        p[list(self._entries)] = ((matrix[:3, :3] - np.eye(3)) * 100.0).ravel()
        p[3:6] = self._translation(matrix)
        return p


MODELS = {"rigid": Rigid, "affine": Affine}


def make_model(name: str, center) -> LinearModel:
    try:
        return MODELS[name](center)
    except KeyError:
        raise InputError(f"unknown transform model {name!r}; choose one of {', '.join(MODELS)}") from None
