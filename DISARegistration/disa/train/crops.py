"""Crop pairs for dense DISA training, cut from a pool of volume pairs in one batched call.

The pool's volumes live in one tensor on the training device (an *atlas*: fixed-size slots
stacked along z), so all crops of a batch, from any volumes, with their own rotation,
reflection and scale, come from a single ``grid_sample`` call: no Python loop per crop and no
copy of a volume per crop. Points that fall outside their own volume read 0 (the crop leaves
the volume; neighbouring slots never leak in).

A crop pair is two cubes cut with the same rotation/scale: B around ``c`` from volume B and
A around ``c + d`` from volume A. For pairs on one grid, ``d = 0`` (aligned) or a random shift
(misaligned); for unregistered pairs, the A centre is an unrelated content voxel.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import torch

from ..errors import InputError
from ..spatial.sampling import grid_sample
from .patches import random_rotations

#: Zero voxels between atlas slots (bilinear reads at a slot's border see zeros).
SLOT_GAP = 2


class VolumeAtlas:
    """``slots`` volumes of at most ``shape`` voxels in one (1, 1, slots*(Z+gap), Y, X) tensor."""

    def __init__(self, slots: int, shape: Sequence[int], device="cpu", dtype=torch.float32):
        self.slot_shape = tuple(int(s) for s in shape)
        self.pitch = self.slot_shape[0] + SLOT_GAP
        self.data = torch.zeros(1, 1, slots * self.pitch, *self.slot_shape[1:], device=device, dtype=dtype)
        self.shapes = np.zeros((slots, 3), np.int64)
        self.slots = slots

    @property
    def device(self) -> torch.device:
        return self.data.device

    def put(self, slot: int, volume) -> None:
        v = torch.as_tensor(np.asarray(volume, np.float32))
        if v.dim() != 3 or any(s > m for s, m in zip(v.shape, self.slot_shape)):
            raise InputError(f"volume of shape {tuple(v.shape)} does not fit an atlas slot {self.slot_shape}")
        z0 = slot * self.pitch
        self.data[0, 0, z0:z0 + self.pitch - SLOT_GAP].zero_()
        self.data[0, 0, z0:z0 + v.shape[0], :v.shape[1], :v.shape[2]] = v.to(self.data)
        self.shapes[slot] = v.shape

    def crops(self, slots: np.ndarray, centres: np.ndarray, matrices: np.ndarray, size: int) -> torch.Tensor:
        """(N, 1, size, size, size) cubes: crop i has voxel offsets ``matrices[i] @ o`` (z, y, x)
        around ``centres[i]`` (voxel z, y, x) of the volume in ``slots[i]``."""
        dev, n = self.device, len(slots)
        o = torch.arange(size, dtype=torch.float32, device=dev) - size // 2
        offsets = torch.stack(torch.meshgrid(o, o, o, indexing="ij"), -1).reshape(-1, 3)
        m = torch.as_tensor(np.asarray(matrices, np.float32), device=dev)
        c = torch.as_tensor(np.asarray(centres, np.float32), device=dev)
        pts = torch.einsum("pj,nij->npi", offsets, m) + c[:, None, :]  # (N, P, 3) zyx in volume
        shape = torch.as_tensor(self.shapes[slots], dtype=torch.float32, device=dev)[:, None, :]
        inside = ((pts > -1.0) & (pts < shape)).all(-1)
        z0 = torch.as_tensor(slots * self.pitch, dtype=torch.float32, device=dev)[:, None]
        full = torch.tensor(self.data.shape[2:], dtype=torch.float32, device=dev)
        pts = torch.stack([pts[..., 0] + z0, pts[..., 1], pts[..., 2]], -1)
        grid = (2.0 * pts / (full - 1.0) - 1.0).flip(-1).reshape(1, n * size, size, size, 3)
        out = grid_sample(self.data, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        return (out.reshape(n, 1, -1) * inside[:, None].to(out.dtype)).reshape(n, 1, size, size, size)


@dataclass
class PoolEntry:
    """One volume pair in the atlas: slots of A and B, candidate crop centres, scale, name."""

    slot_a: int
    slot_b: int
    centres_a: np.ndarray
    centres_b: np.ndarray
    same_grid: bool
    scale: float
    name: str


def random_frames(n: int, rng: np.random.Generator, scales: np.ndarray) -> np.ndarray:
    """(n, 3, 3) uniformly random rotations, reflected half of the time (LC² is mirror
    invariant), times the crop's voxel step ``scales``."""
    r = random_rotations(n, rng)
    flip = np.where(rng.uniform(size=n) < 0.5, -1.0, 1.0)
    r[:, :, 0] *= flip[:, None]
    return r * np.asarray(scales, np.float64)[:, None, None]


def sample_crop_pairs(atlas: VolumeAtlas, pool: List[PoolEntry], n: int, rng: np.random.Generator,
                      size: int = 64, max_offset: float = 12.0, aligned_fraction: float = 0.4,
                      intensity: Optional[dict] = None, with_index: bool = False):
    """``n`` crop pairs ``(A, B)``, each (n, 1, size^3), on the atlas device, with random
    intensity augmentation per crop (``intensity``: sign flip probability, log-scale range,
    offset range; None: the defaults of :func:`augment_intensity`). ``with_index``: also return
    the pool index each pair was cut from (n,)."""
    index = rng.integers(len(pool), size=n)
    entries = [pool[i] for i in index]
    scales = np.array([e.scale for e in entries])
    frames = random_frames(n, rng, scales)
    cb = np.stack([e.centres_b[rng.integers(len(e.centres_b))] for e in entries]).astype(np.float64)
    ca = np.empty_like(cb)
    for i, e in enumerate(entries):
        if e.same_grid:
            d = np.zeros(3)
            if rng.uniform() >= aligned_fraction:
                v = rng.normal(size=3)
                d = v / np.linalg.norm(v) * rng.uniform(0.5, max_offset) * e.scale
            ca[i] = cb[i] + d
        else:
            ca[i] = e.centres_a[rng.integers(len(e.centres_a))]
    slots = np.array([[e.slot_a for e in entries], [e.slot_b for e in entries]]).reshape(-1)
    crops = atlas.crops(slots, np.concatenate([ca, cb]), np.concatenate([frames, frames]), size)
    crops = augment_intensity(crops, rng, **(intensity or {}))
    return (crops[:n], crops[n:], index) if with_index else (crops[:n], crops[n:])


def augment_intensity(x: torch.Tensor, rng: np.random.Generator, sign: float = 0.5,
                      log_scale: float = math.log(1.5), offset: float = 0.5) -> torch.Tensor:
    """Per crop ``s * x + o`` with a random sign (probability ``sign`` of -1), ``|s|`` log-uniform
    in exp(+-log_scale) and ``o`` uniform in +-offset (LC² is invariant to all three)."""
    k = x.shape[0]
    s = np.where(rng.uniform(size=k) < sign, -1.0, 1.0) * np.exp(rng.uniform(-log_scale, log_scale, k))
    o = rng.uniform(-offset, offset, k)
    view = (k,) + (1,) * (x.dim() - 1)
    return x * torch.as_tensor(s, dtype=x.dtype, device=x.device).view(view) + \
        torch.as_tensor(o, dtype=x.dtype, device=x.device).view(view)


__all__ = ["VolumeAtlas", "PoolEntry", "sample_crop_pairs", "augment_intensity", "random_frames", "SLOT_GAP"]
