"""A whole mapping as one displacement field: what a grid transform (Slicer's
vtkMRMLGridTransformNode, an ITK displacement field) holds for a deformable result."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..errors import InputError
from ..spatial import Image


def grid_points(image: Image) -> np.ndarray:
    """LPS positions (Z, Y, X, 3) of every voxel of ``image``, float64."""
    nz, ny, nx = image.shape
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    idx = np.stack([i, j, k], -1).astype(np.float64)
    m = image.index_to_world()
    return idx @ m[:3, :3].T + m[:3, 3]


def mapping_displacement(field: Image, matrix, before: Optional[np.ndarray] = None) -> Image:
    """The mapping ``p -> matrix (q + d(q))`` with ``q = before p`` (identity if None), ``d`` the
    3-channel LPS displacement Image ``field``, as one displacement field ``p -> p + D(p)``
    sampled at ``field``'s grid nodes (moved into the frame of ``p``; ``before`` must be rigid
    so the grid stays a grid). Exact at the nodes; trilinear between them."""
    m = np.asarray(matrix, dtype=np.float64)
    b = np.eye(4) if before is None else np.asarray(before, dtype=np.float64)
    r = b[:3, :3]
    if np.abs(r.T @ r - np.eye(3)).max() > 1e-6:
        raise InputError("a grid transform can follow only a rigid parent transform; harden the scaling first")
    q = grid_points(field)
    d = np.moveaxis(field.data.detach().cpu().numpy().astype(np.float64), 0, -1)
    moved = (q + d) @ m[:3, :3].T + m[:3, 3]
    b_inv = np.linalg.inv(b)
    p = q @ b_inv[:3, :3].T + b_inv[:3, 3]
    origin = b_inv[:3, :3] @ np.asarray(field.origin, dtype=np.float64) + b_inv[:3, 3]
    data = torch.from_numpy(np.ascontiguousarray(np.moveaxis(moved - p, -1, 0)))
    return Image(data, np.asarray(field.spacing, dtype=np.float64).copy(), origin, b_inv[:3, :3] @ field.direction)
