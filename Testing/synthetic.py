"""Small synthetic volumes for fast tests: smooth, textured, asymmetric, with exact geometry."""
from __future__ import annotations

import numpy as np
import torch
from disa.deformable import field_image
from disa.deformable.fields import warp
from disa.spatial import Image
from disa.spatial.image import gaussian_blur, sample_field


def textured_image(size: int = 40, spacing: float = 2.0, seed: int = 0) -> Image:
    """A (size^3) volume of random Gaussian blobs on smooth noise, centred at the origin."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*(np.arange(size, dtype=np.float32),) * 3, indexing="ij"))
    data = np.zeros((size,) * 3, dtype=np.float32)
    for _ in range(12):
        centre = rng.uniform(0.2 * size, 0.8 * size, 3)[:, None, None, None]
        width = rng.uniform(0.05 * size, 0.15 * size)
        data += rng.uniform(0.5, 2.0) * np.exp(-((grid - centre) ** 2).sum(0) / (2 * width ** 2))
    noise = torch.as_tensor(rng.standard_normal((1, size, size, size)).astype(np.float32))
    data += 0.3 * gaussian_blur(noise, (1.5, 1.5, 1.5))[0].numpy()
    origin = -np.full(3, spacing * (size - 1) / 2.0)
    return Image.from_array(data, spacing=(spacing,) * 3, origin=origin)


# a known smooth deformation (dense registration tests) -------------------------------------------
#: Size (voxels), spacing (mm) and RMS displacement (mm) of ``deformed_pair``.
SIZE, SPACING, RMS_MM = 32, 3.0, 3.0


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def smooth_noise(shape, sigma: float, rng) -> torch.Tensor:
    x = gaussian_blur(torch.as_tensor(rng.standard_normal((1, *shape)), dtype=torch.float32), (sigma,) * 3)
    return (x / x.std())[0]


def deformed_pair(direction=None, seed: int = 0):
    """(fixed, moving, truth): fixed(x) shows the moving content at x + truth(x) (LPS mm), with
    another intensity mapping (multimodal) and noise in each image."""
    direction = np.eye(3) if direction is None else direction
    rng = np.random.default_rng(seed)
    shape = (SIZE,) * 3
    content = smooth_noise(shape, 3.0, rng)
    disp = torch.stack([smooth_noise(shape, 7.0, rng) for _ in range(3)])[None]  # voxels (x, y, z)
    disp = disp / disp.norm(dim=1).pow(2).mean().sqrt() * (RMS_MM / SPACING)
    seen = warp(content[None, None], disp, padding="border")[0, 0]

    def noise():
        return 0.05 * torch.as_tensor(rng.standard_normal(shape), dtype=torch.float32)

    fixed = torch.tanh(3 * seen) + 0.3 * seen + noise()
    moving = torch.tanh(3 * content) ** 2 - 0.3 * content + noise()
    origin = np.array([-50.0, -40.0, -30.0])
    fi = Image(fixed[None], np.full(3, SPACING), origin, direction)
    mi = Image(moving[None], np.full(3, SPACING), origin, direction)
    return fi, mi, field_image(disp, fi)


def inner_points(image: Image, margin: int = 4) -> np.ndarray:
    r = np.arange(margin, SIZE - margin)
    idx = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3).astype(np.float64)
    return idx @ (image.direction @ np.diag(image.spacing)).T + image.origin


def mean_error(result, truth: Image, points: np.ndarray) -> float:
    """Mean distance (mm) between the moving points of the result and of the truth."""
    true_moving = points + sample_field(truth, points)
    return float(np.linalg.norm(result.transform_points(points) - true_moving, axis=1).mean())


