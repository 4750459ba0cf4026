"""Patch pairs for the paper's recipe: sampling from unregistered volume pairs (Ronchetti et al.,
MICCAI 2023, Sect. 3) and the shard format; the LC² target itself is in :mod:`.targets`.

Roles (LC² is asymmetric): volume/patch **A** supplies the intensity ``a`` and its gradient
magnitude ``|grad a|``; volume/patch **B** supplies ``b``, the values that are fitted (the
ultrasound in US-MR). A stored pair is ``pairs[i, 0]`` = A patch, ``pairs[i, 1]`` = B patch.

Sampling (paper): draw a B centre with probability proportional to LC²'s weight (the local
variance of ``b``, mean over the radii); score it against candidate A centres; draw
``t ~ U[0, 1]``; keep the candidate whose similarity is closest to ``t``. Scoring all A
positions densely needs two (2r+1)^3 correlations of the whole volume per radius and draw
(seconds per draw on a CPU), so we score a random subset instead: ``candidates`` (2000)
centres drawn from a stride-2 grid of valid A centres, plus, when the two volumes share one
grid (synthetic pairs), the 5x5x5 stride-2 neighbourhood of the same position, so that the
well-matching end of the similarity range stays reachable. Candidates are scored with exact
LC² on axis-aligned cubes gathered from the volumes (no approximation besides the subset).

Patches: both patches get the same uniformly random 3-D rotation about their centres and are
resampled (trilinear) to 33^3 directly from the volumes (equivalent to rotating a 51^3 crop,
whose inscribed sphere covers the rotated cube except its corners; reading the volume instead
gives real data at the corners). The stored target is recomputed with :func:`lc2_target` on
the final float16 patches, so it is exact for what the network sees.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..errors import InputError
from ..spatial.filters import box_mean, gradient_magnitude
from ..spatial.sampling import grid_sample
from .targets import MIN_VARIANCE, RADII, RIDGE, lc2_cubes, lc2_from_moments, lc2_target

#: Side of a training patch (voxels); the network's centre output sits on its centre voxel.
PATCH_SIZE = 33
#: Side of the crop the rotated patch is cut from in the paper (documentation; see module doc).
CROP_SIZE = 51

ArrayLike = Union[np.ndarray, torch.Tensor]


# ---------------------------------------------------------------------------------------------
# patch pairs on disk
@dataclass
class PatchPairs:
    """Training pairs: ``pairs`` (N, 2, S, S, S) float16 (A patch, B patch), ``targets`` (N,)
    float32 LC², plus provenance: ``centres`` (N, 2, 3) voxel (z, y, x) of the A and B centres,
    ``sampled`` (N,) the candidate score at selection, ``t`` (N,) the drawn level, ``meta``."""

    pairs: np.ndarray
    targets: np.ndarray
    centres: Optional[np.ndarray] = None
    sampled: Optional[np.ndarray] = None
    t: Optional[np.ndarray] = None
    meta: Dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def save(self, path) -> str:
        """Write an uncompressed .npz shard atomically (``meta`` as a JSON string)."""
        path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        arrays = {"pairs": self.pairs.astype(np.float16), "targets": self.targets.astype(np.float32),
                  "meta": np.array(json.dumps(self.meta))}
        for name in ("centres", "sampled", "t"):
            value = getattr(self, name)
            if value is not None:
                arrays[name] = value
        tmp = path + ".tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path) -> "PatchPairs":
        path = os.fspath(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                pairs, targets = z["pairs"], z["targets"]
                extra = {k: z[k] for k in ("centres", "sampled", "t") if k in z.files}
                meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
        except (OSError, KeyError, ValueError) as exc:
            raise InputError(f"cannot read training shard {path}: {exc}") from exc
        if pairs.ndim != 5 or pairs.shape[1] != 2 or pairs.shape[0] != targets.shape[0]:
            raise InputError(f"training shard {path} has pairs {pairs.shape} and targets {targets.shape}; "
                             "expected (N, 2, S, S, S) and (N,)")
        return cls(pairs, targets, meta=meta, **extra)


# ---------------------------------------------------------------------------------------------
# sampling from a volume pair
def _unravel(idx: torch.Tensor, shape) -> torch.Tensor:
    """Flat C-order indices (N,) -> (N, 3) voxel (z, y, x)."""
    z = idx // (shape[1] * shape[2])
    y = (idx // shape[2]) % shape[1]
    x = idx % shape[2]
    return torch.stack([z, y, x], 1)


def _cube_view(volume: np.ndarray, k: int) -> np.ndarray:
    """Read-only view (Z-k+1, Y-k+1, X-k+1, k, k, k) of every k^3 cube, indexed by its corner:
    gathering cubes from it is several times faster than gathering with index arrays."""
    v = np.ascontiguousarray(volume, dtype=np.float32)
    shape = tuple(n - k + 1 for n in v.shape) + (k, k, k)
    return np.lib.stride_tricks.as_strided(v, shape=shape, strides=v.strides * 2, writeable=False)


def _a_moments(a: torch.Tensor, g: torch.Tensor, radii: Sequence[int], pool: torch.Tensor) -> torch.Tensor:
    """Per candidate centre (``pool`` (P, 3) z, y, x) and radius: mean a, mean g, var a, var g,
    cov(a, g) over the (2r+1)^3 cube, from box filters in float64: (P, len(radii), 5).
    With these, scoring a candidate against a B cube needs only two dot products."""
    x = torch.stack([a, g, a * a, a * g, g * g]).double()[None]
    out = []
    for r in radii:
        m = box_mean(x, r)[0][:, pool[:, 0], pool[:, 1], pool[:, 2]]  # (5, P)
        ma, mg = m[0], m[1]
        out.append(torch.stack([ma, mg, m[2] - ma * ma, m[4] - mg * mg, m[3] - ma * mg], 1))
    return torch.stack(out, 1)


def _b_templates(cube_b: torch.Tensor, radii: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """For one B cube (k, k, k): (k^3, nr) columns holding b minus its mean inside each radius'
    cube (zero outside), divided by that cube's voxel count, and the variances var(b) (nr,)."""
    k = cube_b.shape[-1]
    half = (k - 1) // 2
    cols, var = [], []
    for r in radii:
        sl = slice(half - r, half + r + 1)
        t = torch.zeros_like(cube_b, dtype=torch.float64)
        inner = cube_b[sl, sl, sl].double()
        centred = inner - inner.mean()
        t[sl, sl, sl] = centred / centred.numel()
        cols.append(t.reshape(-1))
        var.append((centred * centred).mean())
    return torch.stack(cols, 1), torch.stack(var)


def _score_candidates(cubes_a: torch.Tensor, cubes_g: torch.Tensor, moments: torch.Tensor,
                      cube_b: torch.Tensor, radii: Sequence[int]) -> torch.Tensor:
    """Exact LC² (mean over radii) of N candidate A cubes (N, k^3) against one B cube, from the
    candidates' precomputed moments (N, nr, 5): same formula as :func:`lc2_cubes`."""
    tmpl, vb = _b_templates(cube_b, radii)
    # (N, nr): sum (a - mean a)(b - mean b) / n = sum a (b - mean b) / n (float32 BLAS suffices)
    tmpl32 = tmpl.float()
    cab = (cubes_a @ tmpl32).double()
    cgb = (cubes_g @ tmpl32).double()
    sim = lc2_from_moments(moments[..., 2], moments[..., 3], moments[..., 4], cab, cgb, vb[None])
    return sim.mean(1)


def _valid_centres(shape, margin: int, mask: Optional[torch.Tensor], radius: int) -> torch.Tensor:
    """Bool (Z, Y, X): centres at least ``margin`` voxels inside the grid whose (2r+1)^3 cube lies
    inside ``mask`` (when given)."""
    ok = torch.zeros(shape, dtype=torch.bool)
    z, y, x = shape
    if min(shape) <= 2 * margin:
        raise InputError(f"volume of shape {tuple(shape)} is too small for {2 * margin + 1}^3 patches")
    ok[margin:z - margin, margin:y - margin, margin:x - margin] = True
    if mask is not None:
        inside = box_mean(mask.float()[None, None], radius)[0, 0] > 0.999
        ok &= inside
    return ok


def random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` rotation matrices uniform on SO(3) (from normalized Gaussian quaternions)."""
    q = rng.standard_normal((n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], 1)


def extract_patches(volume: torch.Tensor, centres: torch.Tensor, rotations: np.ndarray,
                    size: int = PATCH_SIZE) -> torch.Tensor:
    """Rotated cubes (N, size, size, size) sampled trilinearly around voxel ``centres`` (N, 3)
    (z, y, x) of a (Z, Y, X) volume; points past the border read the border value."""
    n = centres.shape[0]
    h = (size - 1) / 2.0
    t = torch.arange(size, dtype=torch.float64) - h
    # local offsets in (x, y, z) order, laid out (z, y, x) like the output
    off = torch.stack(torch.meshgrid(t, t, t, indexing="ij")[::-1], -1).reshape(-1, 3)
    rot = torch.as_tensor(rotations, dtype=torch.float64)
    pts = torch.einsum("nij,pj->npi", rot, off) + centres.flip(1).double()[:, None, :]  # xyz
    zs, ys, xs = volume.shape
    scale = torch.tensor([2.0 / max(xs - 1, 1), 2.0 / max(ys - 1, 1), 2.0 / max(zs - 1, 1)], dtype=torch.float64)
    grid = (pts * scale - 1.0).reshape(1, n * size, size, size, 3).float()
    out = grid_sample(volume[None, None].float(), grid, mode="bilinear", padding_mode="border",
                      align_corners=True)
    return out.reshape(n, size, size, size)


def sample_patch_pairs(vol_a: ArrayLike, vol_b: ArrayLike, n_pairs: int, seed: int = 0,
                       mask_a: Optional[ArrayLike] = None, mask_b: Optional[ArrayLike] = None,
                       same_grid: bool = False, candidates: int = 2000, candidate_stride: int = 2,
                       patch_size: int = PATCH_SIZE, rotate: bool = True, radii: Sequence[int] = RADII,
                       chunk: int = 64, meta: Optional[dict] = None) -> PatchPairs:
    """Draw ``n_pairs`` patch pairs from volumes A and B (normalized (Z, Y, X) arrays, ~1 mm).

    The volumes need not be registered or share a grid; ``same_grid=True`` says they do (the
    same voxel is the same point), which adds the neighbourhood of the B centre to the
    candidates. ``mask_a``/``mask_b`` mark voxels with content (an ultrasound fan): centres
    are kept where the largest LC² cube lies inside. Deterministic for a given ``seed``.
    """
    rng = np.random.default_rng(seed)
    a = torch.as_tensor(np.asarray(vol_a, dtype=np.float32))
    b = torch.as_tensor(np.asarray(vol_b, dtype=np.float32))
    if a.dim() != 3 or b.dim() != 3:
        raise InputError("sample_patch_pairs needs two 3-D (Z, Y, X) volumes")
    ma = None if mask_a is None else torch.as_tensor(np.asarray(mask_a)).bool()
    mb = None if mask_b is None else torch.as_tensor(np.asarray(mask_b)).bool()
    R = max(radii)
    k = 2 * R + 1
    margin = max(R + 1, (patch_size - 1) // 2)

    # B centres: probability proportional to LC²'s weight (local variance of b, mean over radii)
    ok_b = _valid_centres(b.shape, margin, mb, R)
    bb = b[None, None]
    mbf = torch.ones_like(bb) if mb is None else mb.float()[None, None]
    weight = torch.zeros_like(b)
    for r in radii:
        s = box_mean(torch.cat([mbf, mbf * bb, mbf * bb * bb], 1), r)[0]
        cnt = s[0].clamp_min(1e-6)
        weight += (s[2] / cnt - (s[1] / cnt) ** 2).clamp_min(0.0)
    weight = torch.where(ok_b, weight, torch.zeros_like(weight)).reshape(-1).double()
    if float(weight.sum()) <= 0:
        raise InputError("volume B has no textured region where a patch fits: nothing to sample")
    p = (weight / weight.sum()).numpy()
    b_idx = torch.as_tensor(rng.choice(p.size, size=n_pairs, p=p))

    # A candidates: valid centres on a stride grid, with precomputed cube moments
    ok_a = _valid_centres(a.shape, margin, ma, R)
    grid_ok = torch.zeros_like(ok_a)
    st = max(1, int(candidate_stride))
    grid_ok[::st, ::st, ::st] = ok_a[::st, ::st, ::st]
    pool = torch.nonzero(grid_ok)
    if pool.shape[0] == 0:
        raise InputError("volume A has no position where a patch fits: nothing to sample")
    g = gradient_magnitude(a[None])[0]
    moments = _a_moments(a, g, radii, pool)
    view_a, view_g, view_b = _cube_view(a.numpy(), k), _cube_view(g.numpy(), k), _cube_view(b.numpy(), k)
    pool_np = pool.numpy() - R  # cube corners
    hood = None
    if same_grid:
        if tuple(a.shape) != tuple(b.shape):
            raise InputError("same_grid=True needs volumes of the same shape")
        o = torch.arange(-2, 3) * 2
        hood = torch.stack(torch.meshgrid(o, o, o, indexing="ij"), -1).reshape(-1, 3)
        lo, hi = torch.tensor([margin] * 3), torch.tensor(a.shape) - margin - 1

    b_centres = _unravel(b_idx, b.shape)
    a_centres = torch.zeros_like(b_centres)
    sampled = np.zeros(n_pairs, np.float32)
    levels = rng.uniform(0.0, 1.0, n_pairs)
    n_cand = min(int(candidates), pool.shape[0])
    for i in range(n_pairs):
        # with replacement: O(candidates) per draw; a duplicate only repeats a score
        pick = rng.integers(0, pool.shape[0], size=n_cand)
        cz, cy, cx = pool_np[pick].T
        bz, by, bx = (b_centres[i] - R).tolist()
        cube_b = torch.from_numpy(np.array(view_b[bz, by, bx]))
        sim = _score_candidates(torch.from_numpy(view_a[cz, cy, cx].reshape(n_cand, -1)),
                                torch.from_numpy(view_g[cz, cy, cx].reshape(n_cand, -1)),
                                moments[torch.from_numpy(pick)], cube_b, radii)
        cand = pool[torch.from_numpy(pick)]
        if hood is not None:
            near = b_centres[i][None] + hood
            near = near[((near >= lo) & (near <= hi)).all(1)]
            near = near[ok_a[near[:, 0], near[:, 1], near[:, 2]]]
            if near.shape[0]:
                nz, ny, nx = (near - R).numpy().T
                near_sim = lc2_cubes(torch.from_numpy(np.array(view_a[nz, ny, nx])),
                                     torch.from_numpy(np.array(view_g[nz, ny, nx])), cube_b[None], radii)
                sim = torch.cat([sim.float(), near_sim])
                cand = torch.cat([cand, near])
        j = int(torch.argmin((sim.float() - float(levels[i])).abs()))
        a_centres[i] = cand[j]
        sampled[i] = float(sim[j])

    rotations = random_rotations(n_pairs, rng) if rotate else np.repeat(np.eye(3)[None], n_pairs, 0)
    pairs = np.zeros((n_pairs, 2, patch_size, patch_size, patch_size), np.float16)
    for s in range(0, n_pairs, chunk):
        e = min(n_pairs, s + chunk)
        pairs[s:e, 0] = extract_patches(a, a_centres[s:e], rotations[s:e], patch_size).numpy()
        pairs[s:e, 1] = extract_patches(b, b_centres[s:e], rotations[s:e], patch_size).numpy()
    targets = np.zeros(n_pairs, np.float32)
    for s in range(0, n_pairs, 256):
        e = min(n_pairs, s + 256)
        pa = torch.from_numpy(pairs[s:e, 0].astype(np.float32))
        pb = torch.from_numpy(pairs[s:e, 1].astype(np.float32))
        targets[s:e] = lc2_target(pa, pb, radii).numpy()
    centres = torch.stack([a_centres, b_centres], 1).numpy().astype(np.int32)
    info = dict(meta or {})
    info.update({"seed": int(seed), "candidates": n_cand, "candidate_stride": st, "same_grid": bool(same_grid),
                 "patch_size": patch_size, "rotate": bool(rotate), "radii": list(radii), "ridge": RIDGE,
                 "min_variance": MIN_VARIANCE})
    return PatchPairs(pairs, targets, centres, sampled, levels.astype(np.float32), info)


def target_histogram(targets: np.ndarray, bins: int = 10) -> list:
    """Counts of ``targets`` in ``bins`` equal bins over [0, 1] (for reports)."""
    counts, _ = np.histogram(np.clip(targets, 0, 1), bins=bins, range=(0.0, 1.0))
    return [int(c) for c in counts]


__all__ = ["PATCH_SIZE", "PatchPairs", "sample_patch_pairs", "extract_patches", "random_rotations",
           "target_histogram"]
