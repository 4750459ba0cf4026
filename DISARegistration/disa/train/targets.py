"""The LC² training target of DISA-LC² (Ronchetti et al., MICCAI 2023, Sect. 3).

Roles (LC² is asymmetric): patch **A** supplies the intensity ``a`` and its gradient magnitude
``|grad a|``; patch **B** supplies ``b``, the values that are fitted (the ultrasound in US-MR).

For the centred (2r+1)^3 cube, fit ``b ~ c1 a + c2 |grad a| + c3`` by ridge least squares: the
intercept is not penalized (the fit is done on centred values), the two slopes get ridge
``1e-3`` on their normal equations, as in the engine's exact LC² (``disa.similarity.lc2``), so
the network learns the measure the engine computes and the target is exactly invariant to a
shift of ``b``. ``var(b) - residual = c . cov([a, g], b)``; the similarity is that divided by
``max(var(b), 1e-2)`` and clamped to [0, 1]; the target is the mean over r = 3, 5, 7.

Two evaluations of the same formula:

- :func:`lc2_target` for centred patch pairs (the paper's layout: one target per pair);
- :func:`dense_targets` for every stride-4 output voxel of a pair of crops, from box means of
  the cube moments (one pooling per radius instead of one fit per cube: what lets a trainer
  supervise hundreds of outputs per crop on a GPU without a loop).
"""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..spatial.filters import gradient_magnitude

#: Radii (voxels) of the LC² cubes averaged into the target.
RADII: Tuple[int, ...] = (3, 5, 7)
#: Ridge on the normal equations of the two slopes.
RIDGE = 1e-3
#: Floor of var(b) in the denominator: flat B patches score ~0 instead of noise ratios.
MIN_VARIANCE = 1e-2

ArrayLike = Union[np.ndarray, torch.Tensor]


def lc2_from_moments(caa, cgg, cag, cab, cgb, vb, ridge: float = RIDGE,
                     min_variance: float = MIN_VARIANCE) -> torch.Tensor:
    """LC² of one radius from the (co)variances of a, g = |grad a| and b over the cube."""
    caa = caa + ridge
    cgg = cgg + ridge
    det = caa * cgg - cag * cag
    c1 = (cgg * cab - cag * cgb) / det
    c2 = (caa * cgb - cag * cab) / det
    # residual = vb - 2 c.v + c'Cc + ridge |c|^2 and (C + ridge I) c = v give var(b) - residual = c.v
    return ((c1 * cab + c2 * cgb) / vb.clamp_min(min_variance)).clamp(0.0, 1.0)


def lc2_cubes(a: torch.Tensor, g: torch.Tensor, b: torch.Tensor, radii: Sequence[int] = RADII,
              ridge: float = RIDGE, min_variance: float = MIN_VARIANCE) -> torch.Tensor:
    """Mean LC² over ``radii`` of centred cubes: ``a``, ``g`` (N, k, k, k), ``b`` (N or 1, k, k, k).

    ``k`` must be odd and at least 2*max(radii)+1; each radius uses the centre (2r+1)^3 cube.
    Returns (N,) in [0, 1]. Computed with centred (two-pass) moments for float32 accuracy.
    """
    k = a.shape[-1]
    half = (k - 1) // 2
    if k % 2 == 0 or half < max(radii):
        raise InputError(f"LC² cubes must have odd side >= {2 * max(radii) + 1}, got {k}")
    n = a.shape[0]
    total = torch.zeros(n, dtype=a.dtype, device=a.device)
    for r in radii:
        sl = slice(half - r, half + r + 1)
        av = a[:, sl, sl, sl].reshape(n, -1)
        gv = g[:, sl, sl, sl].reshape(n, -1)
        bv = b[:, sl, sl, sl].reshape(b.shape[0], -1)
        av = av - av.mean(1, keepdim=True)
        gv = gv - gv.mean(1, keepdim=True)
        bv = bv - bv.mean(1, keepdim=True)
        total = total + lc2_from_moments((av * av).mean(1), (gv * gv).mean(1), (av * gv).mean(1),
                                         (av * bv).mean(1), (gv * bv).mean(1), (bv * bv).mean(1),
                                         ridge, min_variance)
    return total / len(radii)


def _as_batch(x: ArrayLike) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.dim() == 3:
        t = t[None]
    if t.dim() == 5 and t.shape[1] == 1:
        t = t[:, 0]
    if t.dim() != 4 or not (t.shape[1] == t.shape[2] == t.shape[3]):
        raise InputError(f"patches must be (N, S, S, S) cubes, got shape {tuple(t.shape)}")
    return t


def lc2_target(patch_a: ArrayLike, patch_b: ArrayLike, radii: Sequence[int] = RADII,
               ridge: float = RIDGE, min_variance: float = MIN_VARIANCE) -> torch.Tensor:
    """LC² training target (N,) of centred patch pairs (N, S, S, S) (or (N, 1, S, S, S)).

    ``patch_a`` gives intensity and central-difference gradient magnitude (per voxel, computed on
    the whole patch, so the cube border sees its true neighbours), ``patch_b`` is fitted.
    """
    a = _as_batch(patch_a).float()
    b = _as_batch(patch_b).float()
    if a.shape != b.shape:
        raise InputError(f"patch shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    s = a.shape[-1]
    half = (s - 1) // 2
    R = max(radii)
    if s % 2 == 0 or half < R + 1:
        raise InputError(f"patches must have an odd side of at least {2 * R + 3}, got {s}")
    sl = slice(half - R - 1, half + R + 2)  # one voxel of context for the central differences
    ac = a[:, sl, sl, sl]
    g = gradient_magnitude(ac[:, None])[:, 0, 1:-1, 1:-1, 1:-1]
    inner = slice(1, -1)
    return lc2_cubes(ac[:, inner, inner, inner], g, b[:, sl, sl, sl][:, inner, inner, inner],
                     radii, ridge, min_variance)


def dense_targets(crops_a: torch.Tensor, crops_b: torch.Tensor, first: int, last: int, stride: int = 4,
                  radii: Sequence[int] = RADII, weight_radius: int = RADII[len(RADII) // 2]):
    """LC² targets and LC²'s weights at the output voxels ``first..last`` (inclusive, per axis)
    of (N, 1, S, S, S) crop pairs; output k sits on crop voxel ``stride * k``.

    Returns ``(targets, weights)``, each (N, 1, K, K, K) with K = last - first + 1: the same
    values as :func:`lc2_target` on the cube around each output voxel (the cubes' gradient
    magnitudes see the crop around them), and the variance of B over the ``weight_radius`` cube
    (LC²'s patch weight). Moments are pooled in float64 (no cancellation worries, tiny cost).
    """
    if crops_a.shape != crops_b.shape or crops_a.dim() != 5:
        raise InputError(f"crop pairs must be two (N, 1, S, S, S) tensors, got {tuple(crops_a.shape)} "
                         f"and {tuple(crops_b.shape)}")
    R = max(max(radii), weight_radius)
    lo, hi = stride * first - R, stride * last + R + 1
    if lo < 1 or hi > crops_a.shape[-1] - 1:
        raise InputError(f"outputs {first}..{last} need {R + 1} voxels of context inside the crop")
    a = crops_a.double()
    g = gradient_magnitude(a[..., lo - 1:hi + 1, lo - 1:hi + 1, lo - 1:hi + 1])[..., 1:-1, 1:-1, 1:-1]
    a, b = a[..., lo:hi, lo:hi, lo:hi], crops_b.double()[..., lo:hi, lo:hi, lo:hi]
    # centre per crop: moments are shift invariant and float64 keeps the rest exact
    a = a - a.mean((2, 3, 4), keepdim=True)
    g = g - g.mean((2, 3, 4), keepdim=True)
    b = b - b.mean((2, 3, 4), keepdim=True)
    x = torch.cat([a, g, b, a * a, g * g, b * b, a * g, a * b, g * b], 1)

    def pooled(r: int) -> torch.Tensor:
        off = R - r  # the cube of output k starts at crop voxel stride*k - r
        end = x.shape[-1] - off
        return F.avg_pool3d(x[..., off:end, off:end, off:end], 2 * r + 1, stride=stride)

    total = 0.0
    for r in radii:
        m = pooled(r)
        ma, mg, mb = m[:, 0:1], m[:, 1:2], m[:, 2:3]
        total = total + lc2_from_moments(m[:, 3:4] - ma * ma, m[:, 4:5] - mg * mg, m[:, 6:7] - ma * mg,
                                         m[:, 7:8] - ma * mb, m[:, 8:9] - mg * mb, m[:, 5:6] - mb * mb)
    m = pooled(weight_radius)
    var_b = (m[:, 5:6] - m[:, 2:3] ** 2).clamp_min(0.0)
    return (total / len(radii)).float(), var_b.float()


__all__ = ["RADII", "RIDGE", "MIN_VARIANCE", "lc2_from_moments", "lc2_cubes", "lc2_target", "dense_targets"]
