"""Small synthetic volumes for fast tests: smooth, textured, asymmetric, with exact geometry."""
from __future__ import annotations

import numpy as np
import torch

from disa.spatial import Image
from disa.spatial.image import gaussian_blur


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
