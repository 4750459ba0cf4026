"""Similarity maps (the paper's Fig. 1): how similar one point of image A is to every voxel of B.

``similarity_map(point, A, B, metric)`` returns a one-channel Image on B's grid. A sharp single
peak at the corresponding point means the measure can localize that structure; several peaks
or a plateau show the ambiguity an optimizer would face.

A is first resampled into B's frame (B's spacing and direction, covering A, with the point on a
grid node) so both images are described at the same scale and orientation. Per metric:

- ``"disa"``: dot product of A's descriptor at the point with B's descriptors (stride 4,
  trilinearly upsampled to B's grid). Needs a model, or the shipped weights.
- ``"mind"``: minus the channel-mean squared difference of MIND-SSC descriptors.
- ``"lc2"``: LC² of A's patch around the point (the fitted, "fixed" role) against B's
  intensity and gradient magnitude in the patch around every voxel, averaged over radii 3, 5, 7
  (B voxels), ridge 1e-3 as in training. The patch sums are cross-correlations of B with A's
  patch, computed by FFT, so the whole map costs a few FFTs of B's size instead of one
  least-squares fit per voxel. Patches reaching past B's border see zeros there.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import InputError
from ..features.descriptors import compute_descriptors, normalized_input
from ..features.mind import mind_ssc
from ..features.network import STRIDE
from ..spatial import Image
from ..spatial.filters import box_mean, gradient_magnitude
from ..spatial.image import gaussian_blur, resample_image

METRICS = ("disa", "lc2", "mind")


def frame_of(image_a: Image, image_b: Image, point_lps, align: int = STRIDE) -> Tuple[Image, tuple]:
    """``image_a`` resampled on a grid with B's spacing and direction that covers A and has
    ``point_lps`` on a node whose index is a multiple of ``align``; returns (image, index zyx)."""
    point = np.asarray(point_lps, dtype=np.float64).reshape(3)
    to_b = np.diag(1.0 / image_b.spacing) @ image_b.direction.T  # LPS offset -> B index offset
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=np.float64)
    corners = corners * (np.asarray(image_a.size, dtype=np.float64) - 1)
    world = (image_a.index_to_world() @ np.c_[corners, np.ones(8)].T)[:3].T
    rel = (world - point) @ to_b.T  # corners in B-index units relative to the point
    lo = np.floor(rel.min(0) / align).astype(int) * align
    hi = np.ceil(rel.max(0) / align).astype(int) * align
    size = hi - lo + 1  # x, y, z
    origin = point + image_b.direction @ (image_b.spacing * lo)
    factor = image_b.spacing / image_a.spacing  # anti-aliasing when B is coarser than A
    sigma = 0.5 * np.sqrt(np.maximum(factor ** 2 - 1.0, 0.0))
    a = image_a.same_geometry(gaussian_blur(image_a.data[:1].float(), sigma), image_a.mask)
    grid = Image(torch.zeros(1, *size[::-1].tolist()), image_b.spacing, origin, image_b.direction)
    out = resample_image(a, grid)
    index = tuple(int(v) for v in (-lo)[::-1])
    return out, index


def _check_point(image: Image, point) -> None:
    idx = (image.world_to_index() @ np.r_[np.asarray(point, dtype=np.float64).reshape(3), 1.0])[:3]
    if np.any(idx < -0.5) or np.any(idx > np.asarray(image.size) - 0.5):
        raise InputError(f"the point {tuple(np.round(point, 2))} (LPS mm) lies outside image A")


def _xcorr(volume: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """sum_o volume[v + o] * kernel[o + r] over the cube (zero outside), same size, by FFT."""
    r = [k // 2 for k in kernel.shape]
    shape = [n + k - 1 for n, k in zip(volume.shape, kernel.shape)]
    fv = torch.fft.rfftn(volume.double(), s=shape)
    fk = torch.fft.rfftn(torch.flip(kernel.double(), dims=(0, 1, 2)), s=shape)
    full = torch.fft.irfftn(fv * fk, s=shape)
    start = [k - 1 - h for k, h in zip(kernel.shape, r)]  # full[k-1-r+v] is output v
    n = volume.shape
    return full[start[0]:start[0] + n[0], start[1]:start[1] + n[1], start[2]:start[2] + n[2]].to(volume.dtype)


def lc2_patch_map(patch: torch.Tensor, a: torch.Tensor, g: torch.Tensor, ridge: float = 1e-3,
                  min_variance: float = 1e-4) -> torch.Tensor:
    """LC² of one fixed (2r+1)^3 ``patch`` (fitted) against the patches of (Z, Y, X) intensity
    ``a`` and gradient ``g`` around every voxel -> (Z, Y, X) in [0, 1]."""
    r = patch.shape[0] // 2
    k = float(patch.numel())
    pc = patch - patch.mean()
    var_b = float((pc * pc).mean())
    if var_b <= min_variance:
        return torch.zeros_like(a)
    cab = _xcorr(a, pc) / k
    cgb = _xcorr(g, pc) / k
    m = box_mean(torch.stack([a, g, a * a, a * g, g * g]), r)
    caa = m[2] - m[0] ** 2 + ridge
    cag = m[3] - m[0] * m[1]
    cgg = m[4] - m[1] ** 2 + ridge
    det = (caa * cgg - cag * cag).clamp_min(1e-12)
    explained = (cgg * cab * cab - 2 * cag * cab * cgb + caa * cgb * cgb) / det
    return (explained / var_b).clamp(0.0, 1.0)


def similarity_map(point_lps, image_a: Image, image_b: Image, metric: str = "disa",
                   model: Optional[torch.nn.Module] = None, radii: Sequence[int] = (3, 5, 7),
                   mind_radius: int = 2, mind_dilation: int = 2, cache=None) -> Image:
    """Similarity of ``image_a`` at ``point_lps`` (LPS mm) to every voxel of ``image_b``.

    Returns an Image on B's grid (higher = more similar; B's mask kept). ``model``: the DISA
    network (default: the shipped weights). ``cache``: a DescriptorCache for B's descriptors,
    which do not depend on the point (maps at many points of one pair run the CNN on B once).
    See the module docstring for each metric.
    """
    metric = metric.lower()
    if metric not in METRICS:
        raise InputError(f"unknown similarity map metric {metric!r}; choose one of {', '.join(METRICS)}")
    _check_point(image_a, point_lps)
    a_frame, idx = frame_of(image_a, image_b, point_lps, STRIDE if metric == "disa" else 1)
    b = image_b.same_geometry(image_b.data[:1].float(), image_b.mask)
    if metric == "disa":
        if model is None:
            from ..features.weights import load_weights

            model = load_weights()[0]
        da = compute_descriptors(a_frame, model)
        vec = da.data[:, idx[0] // STRIDE, idx[1] // STRIDE, idx[2] // STRIDE]
        db = compute_descriptors(b, model) if cache is None else cache.get(b, model)
        up = resample_image(db, b.same_geometry(b.data, None)).data
        out = (up * vec.view(-1, 1, 1, 1)).sum(0)
    elif metric == "mind":
        ma = mind_ssc(normalized_input(a_frame)[None], mind_radius, mind_dilation)
        vec = ma[:, idx[0], idx[1], idx[2]]
        mb = mind_ssc(normalized_input(b)[None], mind_radius, mind_dilation)
        out = -((mb - vec.view(-1, 1, 1, 1)) ** 2).mean(0)
    else:
        fa = normalized_input(a_frame)
        fb = normalized_input(b)
        g = gradient_magnitude(fb[None], b.spacing)[0]
        total = torch.zeros_like(fb)
        for r in radii:
            pad = torch.nn.functional.pad(fa[None, None], (r,) * 6, mode="replicate")[0, 0]
            z, y, x = idx
            patch = pad[z:z + 2 * r + 1, y:y + 2 * r + 1, x:x + 2 * r + 1]
            total = total + lc2_patch_map(patch, fb, g)
        out = total / len(radii)
    return image_b.same_geometry(out[None].float(), image_b.mask)
