"""The probe-pressure model: a rigid pose plus the tissue compression under an ultrasound probe.

DISA (Ronchetti et al., MICCAI 2023, Sec. 4.3) registers abdominal ultrasound with "six parameters
to define the rigid pose and two parameters to describe the deformation caused by the ultrasound
probe pressure", optimized jointly; the paper does not write the deformation down. This module
uses the simplest smooth model with those two parameters. A fixed (ultrasound) point ``x`` maps
to the moving point

    T(x) = M ( x - a * exp(-max(d(x), 0) / lam) * u ),      d(x) = (x - p) . u

- ``p`` (LPS mm): a point of the probe's contact surface; ``u``: the unit probe axis, pointing
  into the tissue (the beam direction); ``d``: the depth below the contact surface.
- ``a`` (mm): how far the probe pushed the tissue at the contact surface. ``a > 0`` is
  compression: what the ultrasound shows at depth ``d`` lay ``a exp(-d/lam)`` closer to the probe
  before it was pressed on (in the uncompressed MR/CT).
- ``lam`` (mm): how deep the compression reaches; the displacement falls to 1/e at depth ``lam``.
- ``M``: the rigid pose (rotation vector in degrees, translation in mm about the fixed centre, as
  :class:`Rigid`) after the initial transform: ``M = initial @ Rigid(params[:6])``.

Why this form: it is smooth in the parameters (exact autograd gradients for L-BFGS), zero far
from the probe (deep tissue is aligned by the rigid pose alone), uniform across the beam (the
probe face covers the field of view) and invertible for ``a > -lam`` (the depth map
``d -> d - a exp(-d/lam)`` has slope ``1 + (a/lam) exp(-d/lam) > 0``), which the bounds keep.
The compression is applied in fixed space, before the rigid map: it happened while the
ultrasound was acquired, about that probe; the moving image is the uncompressed anatomy. With
``a = 0`` the model is exactly the rigid one.

The probe (``p``, ``u``) is given by the user or found from the ultrasound's field of view (its
non-zero mask, see :func:`find_probe`). Parameters: ``[r0, r1, r2, t0, t1, t2, a, lam]``
(degrees, mm); 3:6 is the translation, as in every model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import InputError
from .linear import Rigid

#: Bounds of the compression amplitude ``a`` (mm). A negative ``a`` (tissue pulled towards the
#: probe) is allowed a little so that an uncompressed case does not sit on a bound.
AMPLITUDE_RANGE_MM = (-5.0, 30.0)
#: Bounds of the decay depth ``lam`` (mm); ``lam >= 10 > -a`` keeps the map invertible.
DECAY_RANGE_MM = (10.0, 200.0)
#: Smallest |skewness| of the field of view along the probe axis for the probe to be found from
#: it: a cone or sector (narrow at the probe) gives 0.5-0.9, a box or a sphere about 0.
MIN_FAN_SKEWNESS = 0.2
#: Output field grid (see :meth:`Compression.field`): spacing along the probe axis, samples
#: across it and the margin around the fixed image box.
FIELD_DEPTH_SPACING_MM = 0.5
FIELD_LATERAL_SAMPLES = 5
FIELD_MARGIN_MM = 50.0
#: At most this many field-of-view voxels are used to find the probe (a regular subsample).
MAX_PROBE_VOXELS = 1 << 20


def _vector(value, name: str) -> np.ndarray:
    try:
        v = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise InputError(f"the {name} must be 3 numbers (LPS mm), got {value!r}") from None
    if v.shape != (3,) or not np.all(np.isfinite(v)):
        raise InputError(f"the {name} must be 3 finite numbers (LPS mm), got {value!r}")
    return v


def check_probe(transform: str, position=None, direction=None) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """(position, unit direction) as LPS arrays (None where not given), checked before any work."""
    if position is None and direction is None:
        return None, None
    if str(transform).lower() != "pressure":
        raise InputError("a probe position or direction applies only to the probe-pressure model "
                         "(transform 'pressure')")
    p = None if position is None else _vector(position, "probe position")
    u = None if direction is None else _vector(direction, "probe direction")
    if u is not None:
        norm = float(np.linalg.norm(u))
        if norm < 1e-9:
            raise InputError("the probe direction must not be zero")
        u = u / norm
    return p, u


def _skewness(values: np.ndarray) -> float:
    centred = values - values.mean()
    sd = float(np.sqrt((centred ** 2).mean()))
    return float((centred ** 3).mean()) / max(sd ** 3, 1e-12)


def _mask_points(image) -> Optional[np.ndarray]:
    """(N, 3) LPS points of a regular subsample of ``image``'s mask, or None without a mask."""
    if image.mask is None:
        return None
    mask = image.mask[0]
    step = max(1, int(np.ceil((float(mask.sum()) / MAX_PROBE_VOXELS) ** (1.0 / 3.0))))
    zyx = torch.nonzero(mask[::step, ::step, ::step]).cpu().numpy().astype(np.float64) * step
    if len(zyx) < 10:
        return None
    xyz1 = np.c_[zyx[:, ::-1], np.ones(len(zyx))]
    return (xyz1 @ image.index_to_world().T)[:, :3]


def grid_corners(image) -> np.ndarray:
    """(8, 3) LPS corners of ``image``'s voxel box (the outer faces of the outer voxels)."""
    size = np.asarray(image.size, dtype=np.float64)
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=np.float64)
    idx = corners * size - 0.5
    return (np.c_[idx, np.ones(8)] @ image.index_to_world().T)[:, :3]


def find_probe(image, position: Optional[np.ndarray] = None,
               direction: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray, float]:
    """(contact point p, unit axis u into the tissue, depth of the field of view along u in mm).

    From the field of view (``image.mask``, the ultrasound's non-zero voxels) where not given:
    - direction: a fan (sector or cone) is narrow at the probe and wide at depth, so the mask's
      extent along its axis is skewed, with the long tail towards the probe. Among the mask's
      principal axes and the image axes, the one with the largest |skewness| is the probe axis,
      and ``u`` points away from the tail. Given only a position, ``u`` points from it to the
      mask's centroid. A field of view without such a shape (a box) is refused: give the probe.
    - position: the top of the mask along ``u`` through its centroid (only its depth matters).
    Without a mask, the image box stands in for the field of view (for the position and depth).
    """
    points = _mask_points(image)
    region = points if points is not None else grid_corners(image)
    centroid = region.mean(axis=0)
    if direction is None and position is not None:
        v = centroid - position
        if np.linalg.norm(v) < 1e-6:
            raise InputError("the probe position is the field of view's centre: give --probe-direction too")
        direction = v / np.linalg.norm(v)
    if direction is None:
        if points is None:
            raise InputError("cannot find the ultrasound probe: the fixed image has no field-of-view mask "
                             "(no zero background); give the probe position and direction")
        rel = points - centroid
        _, axes = np.linalg.eigh(rel.T @ rel / len(rel))
        candidates = list(axes.T) + list(np.asarray(image.direction, dtype=np.float64).T)
        skews = [_skewness(rel @ v) for v in candidates]
        best = int(np.argmax(np.abs(skews)))
        if abs(skews[best]) < MIN_FAN_SKEWNESS:
            raise InputError(f"cannot find the ultrasound probe from the field of view: it is not fan-shaped "
                             f"(skewness {abs(skews[best]):.2f} < {MIN_FAN_SKEWNESS}); give the probe position "
                             "and direction")
        v = candidates[best] / np.linalg.norm(candidates[best])
        direction = -np.sign(skews[best]) * v
    if position is None:
        position = centroid + float(((region - centroid) @ direction).min()) * direction
    depth = float(((region - position) @ direction).max())
    return np.asarray(position, dtype=np.float64), np.asarray(direction, dtype=np.float64), max(depth, 1.0)


def compression_displacement(points: torch.Tensor, position, direction, amplitude: torch.Tensor,
                             decay: torch.Tensor) -> torch.Tensor:
    """Fixed-space displacements (B, ..., 3) in mm of LPS ``points`` (..., 3) for B values of
    ``amplitude`` and ``decay`` (B,): ``-a exp(-max(d, 0) / lam) u``. Differentiable."""
    p = torch.as_tensor(np.asarray(position), dtype=points.dtype, device=points.device)
    u = torch.as_tensor(np.asarray(direction), dtype=points.dtype, device=points.device)
    depth = ((points - p) * u).sum(-1).clamp(min=0.0)
    shape = (-1,) + (1,) * depth.dim()
    a = amplitude.to(points.dtype).reshape(shape)
    lam = decay.to(points.dtype).reshape(shape)
    return (-a * torch.exp(-depth[None] / lam))[..., None] * u


@dataclass
class Compression:
    """A probe compression found by a registration: what it is and the fixed-space map it makes.

    ``position``/``direction``: the probe (LPS mm, unit axis into the tissue); ``amplitude`` and
    ``decay`` (mm): ``a`` and ``lam`` of the module docstring; ``region``: LPS points the output
    field must cover (the fixed image's corners); ``found``: whether the probe came from the field
    of view (else the user gave it).
    """

    position: np.ndarray
    direction: np.ndarray
    amplitude: float
    decay: float
    region: np.ndarray
    found: bool = True

    def displacement(self, points: torch.Tensor) -> torch.Tensor:
        """(..., 3) fixed-space displacement (mm) of LPS ``points`` (..., 3), a torch tensor."""
        a = torch.tensor([self.amplitude], dtype=torch.float64)
        lam = torch.tensor([self.decay], dtype=torch.float64)
        return compression_displacement(points, self.position, self.direction, a, lam)[0]

    def apply(self, points) -> np.ndarray:
        """(N, 3) LPS fixed points moved by the compression (before the rigid map), float64."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        return pts + self.displacement(torch.as_tensor(pts)).numpy()

    def field(self):
        """The displacement as a 3-channel float64 Image (LPS mm) on a grid aligned with the probe.

        The field varies only with depth, so the grid is fine along ``u`` (0.5 mm, a node at the
        contact surface) and coarse across it; linear interpolation then reproduces the model to
        a few micrometres. It covers the fixed image box plus 50 mm; beyond it, ITK and Slicer
        apply no displacement (deep tissue has none anyway).
        """
        from ..spatial import Image

        u = self.direction
        helper = np.eye(3)[int(np.argmin(np.abs(u)))]
        e1 = np.cross(u, helper)
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(u, e1)
        axes = np.stack([e1, e2, u], axis=1)  # columns: index x, y, z directions
        local = (np.asarray(self.region) - self.position) @ axes
        low, high = local.min(axis=0) - FIELD_MARGIN_MM, local.max(axis=0) + FIELD_MARGIN_MM
        h = FIELD_DEPTH_SPACING_MM
        low[2], high[2] = np.floor(low[2] / h) * h, np.ceil(high[2] / h) * h  # a node at depth 0
        n = np.array([FIELD_LATERAL_SAMPLES, FIELD_LATERAL_SAMPLES, int(round((high[2] - low[2]) / h)) + 1])
        spacing = np.array([(high[0] - low[0]) / (n[0] - 1), (high[1] - low[1]) / (n[1] - 1), h])
        origin = self.position + axes @ low
        depth = torch.as_tensor(low[2] + h * np.arange(n[2]), dtype=torch.float64)
        along = self.displacement(torch.as_tensor(self.position) + depth[:, None] * torch.as_tensor(u))  # (nz, 3)
        data = along.T[:, :, None, None].expand(3, int(n[2]), int(n[1]), int(n[0])).contiguous()
        return Image(data, spacing, origin, axes)

    def as_dict(self) -> dict:
        return {"amplitude_mm": self.amplitude, "decay_mm": self.decay,
                "probe_position_lps": self.position.tolist(), "probe_direction_lps": self.direction.tolist(),
                "probe_found_from_field_of_view": self.found}


class ProbePressure(Rigid):
    """8 parameters: the rigid pose (rotation vector in degrees, translation in mm about the
    centre) plus the compression amplitude ``a`` and decay depth ``lam`` (mm) of the probe at
    ``position`` looking along ``direction`` (see the module docstring).

    ``matrix(params)`` is the rigid part; :meth:`displacement` the fixed-space compression,
    applied before it. ``decay`` is the starting ``lam``; the compression starts at 0.
    """

    name = "pressure"
    n_params = 8

    def __init__(self, center, position, direction, decay: float, region: np.ndarray, found: bool = True):
        super().__init__(center)
        self.position = np.asarray(position, dtype=np.float64).reshape(3)
        self.direction = np.asarray(direction, dtype=np.float64).reshape(3)
        self.decay = float(np.clip(decay, *DECAY_RANGE_MM))
        self.region = np.asarray(region, dtype=np.float64)
        self.found = found

    @classmethod
    def for_image(cls, fixed, position=None, direction=None) -> "ProbePressure":
        """The model for the fixed ultrasound ``fixed`` (an Image with its field-of-view mask);
        the probe is found from the mask where not given. The starting decay depth is a third of
        the field of view's depth."""
        p, u, depth = find_probe(fixed, position, direction)
        return cls(fixed.center(), p, u, depth / 3.0, grid_corners(fixed),
                   found=position is None or direction is None)

    def identity(self) -> np.ndarray:
        return np.concatenate([np.zeros(6), [0.0, self.decay]])

    def params_from_matrix(self, matrix) -> np.ndarray:
        """The rigid pose of ``matrix`` with no compression (a matrix holds none)."""
        return np.concatenate([super().params_from_matrix(matrix), self.identity()[6:]])

    def params_from_matrices(self, matrices) -> np.ndarray:
        rigid = self.rigid_params(matrices)
        return np.concatenate([rigid, np.tile(self.identity()[6:], (len(rigid), 1))], axis=1)

    def with_rigid_offsets(self, x0: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """The rigid part moved by each offset as :class:`Rigid` does; the compression of ``x0``
        (0 at the start of a registration) is kept."""
        x0 = np.asarray(x0, dtype=np.float64)
        rigid = Rigid(self.center).with_rigid_offsets(x0[:6], offsets)
        return np.concatenate([rigid, np.broadcast_to(x0[6:], (len(rigid), 2))], axis=1)

    def compression_bounds(self) -> List[Tuple[float, float]]:
        """Bounds of ``a`` and ``lam`` (the optimizers' bounds of parameters 6 and 7)."""
        return [AMPLITUDE_RANGE_MM, DECAY_RANGE_MM]

    def displacement(self, params: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """(B, ..., 3) fixed-space displacement (mm) of LPS ``points`` (..., 3) for (B, 8) params."""
        params = params if params.dim() == 2 else params[None]
        return compression_displacement(points, self.position, self.direction, params[:, 6], params[:, 7])

    def compression(self, params: Sequence[float]) -> Compression:
        """The compression of one parameter vector, for the result and its output files."""
        x = np.asarray(params, dtype=np.float64).reshape(-1)
        return Compression(self.position.copy(), self.direction.copy(), float(x[6]), float(x[7]),
                           self.region.copy(), self.found)
