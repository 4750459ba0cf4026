"""MIND-SSC descriptors (Heinrich et al., MICCAI 2013): self-similarity context.

For each voxel, 12 channels: the patch distances between the 12 pairs of points of the
6-neighbourhood (at distance ``dilation``) that lie sqrt(2) * dilation apart, box-filtered over
(2*radius+1)^3, minus their minimum, divided by their (clamped) mean and mapped by exp(-x).
Computed once per image on its working grid; registration warps the descriptors.
"""
from __future__ import annotations

import itertools
from typing import List, Tuple

import torch
import torch.nn.functional as F

from ..spatial.filters import box_mean

#: The 6-neighbourhood as offsets from the centre, in (z, y, x) order.
SIX_NEIGHBOURS = ((0, 0, -1), (0, 0, 1), (0, -1, 0), (0, 1, 0), (-1, 0, 0), (1, 0, 0))


def ssc_pairs() -> List[Tuple[Tuple[int, int, int], Tuple[int, int, int]]]:
    """The 12 pairs of 6-neighbours whose squared distance is 2 (the octahedron's edges)."""
    pairs = []
    for p, q in itertools.combinations(SIX_NEIGHBOURS, 2):
        if sum((a - b) ** 2 for a, b in zip(p, q)) == 2:
            pairs.append((p, q))
    return pairs


#: Channels of MIND-SSC: one per pair of ``ssc_pairs``.
CHANNELS = len(ssc_pairs())


def _shift(padded: torch.Tensor, offset, d: int, shape) -> torch.Tensor:
    z, y, x = (d + o * d for o in offset)
    return padded[..., z:z + shape[0], y:y + shape[1], x:x + shape[2]]


def mind_ssc(image: torch.Tensor, radius: int = 2, dilation: int = 2) -> torch.Tensor:
    """MIND-SSC of a (1, Z, Y, X) or (B, 1, Z, Y, X) image -> (12, Z, Y, X) or (B, 12, Z, Y, X)."""
    squeeze = image.dim() == 4
    x = image[None] if squeeze else image
    shape = x.shape[-3:]
    padded = F.pad(x, (dilation,) * 6, mode="replicate")
    dists = []
    for p, q in ssc_pairs():
        diff = _shift(padded, p, dilation, shape) - _shift(padded, q, dilation, shape)
        dists.append(diff * diff)
    d = box_mean(torch.cat(dists, dim=1), radius)
    d = d - d.min(dim=1, keepdim=True).values
    var = d.mean(dim=1, keepdim=True)
    mean_var = max(float(var.mean()), 1e-12)  # a constant image has no variance at all: all ones, no NaN
    var = var.clamp(mean_var * 1e-3, mean_var * 1e3)
    out = torch.exp(-d / var)
    return out[0] if squeeze else out


def shared_components(fixed: torch.Tensor, moving: torch.Tensor, components: int,
                      sample_step: int = 7) -> Tuple[torch.Tensor, torch.Tensor]:
    """Two (B, C, Z, Y, X) descriptor fields projected onto the top ``components`` principal
    axes of both together (one basis, so differences stay comparable), scaled so that the
    expected channel-mean squared difference keeps its size (the regularizer's balance holds).

    MIND-SSC's 12 channels are correlated and every dense iteration warps and compares each one,
    so fewer channels cost less (``DENSE_DEFAULTS.mind_components``). The basis comes from the
    eigenvectors of the C x C covariance of every ``sample_step``-th voxel, in float64, each axis
    signed so that its largest loading is positive (one answer on every machine).
    """
    c = fixed.shape[1]
    if components >= c:
        return fixed, moving
    x = torch.cat([fixed.transpose(0, 1).reshape(c, -1)[:, ::sample_step],
                   moving.transpose(0, 1).reshape(c, -1)[:, ::sample_step]], 1).double()
    mean = x.mean(1, keepdim=True)
    centred = x - mean
    values, vectors = torch.linalg.eigh(centred @ centred.T / max(centred.shape[1] - 1, 1))
    basis = vectors[:, -components:].flip(1)  # (C, K), largest variance first
    sign = torch.sign(basis.gather(0, basis.abs().argmax(0, keepdim=True)))
    kept = float(values[-components:].sum() / values.sum().clamp_min(1e-30))
    basis = (basis * sign * (components / (c * max(kept, 1e-6))) ** 0.5).to(fixed.dtype)
    mean = mean.to(fixed.dtype).view(1, c, 1, 1, 1)

    def project(f: torch.Tensor) -> torch.Tensor:
        return torch.einsum("ck,bczyx->bkzyx", basis, f - mean).contiguous()

    return project(fixed), project(moving)
