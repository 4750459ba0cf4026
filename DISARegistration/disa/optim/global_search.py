"""Global search: score hundreds of starting poses in batches and keep the best few.

The poses are a scrambled Sobol sequence over the rotation and translation ranges around the
start (the start itself included), so coverage is even and a seed makes it repeatable. Local
optimization from the best ``top_k`` of them widens the capture range well beyond that of a
single local run, at the cost of a few batched evaluations on the coarsest level.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from .base import Monitor


def sample_poses(n_params: int, x0: np.ndarray, n: int, rotation_deg: float, translation_mm: float,
                 seed: int = 0) -> np.ndarray:
    """(n, n_params) poses: ``x0`` first, then Sobol points in x0 +- ranges (rigid part only)."""
    from scipy.stats import qmc

    half = np.zeros(n_params)
    half[:3], half[3:6] = rotation_deg, translation_mm
    m = int(np.ceil(np.log2(max(n - 1, 2))))
    unit = qmc.Sobol(d=6, scramble=True, seed=seed).random_base2(m)[: n - 1]
    poses = np.tile(np.asarray(x0, dtype=np.float64), (n, 1))
    poses[1:, :6] += (2.0 * unit - 1.0) * half[:6]
    return poses


def global_search(similarity: Callable[[torch.Tensor], torch.Tensor], x0: np.ndarray, *, n: int = 256,
                  rotation_deg: float = 10.0, translation_mm: float = 15.0, top_k: int = 4, seed: int = 0,
                  monitor: Optional[Monitor] = None, batch: int = 8) -> np.ndarray:
    """The ``top_k`` best of ``n`` sampled poses, best first, as (top_k, n_params)."""
    poses = sample_poses(len(x0), x0, n, rotation_deg, translation_mm, seed)
    scores = []
    with torch.no_grad():
        # Batches of ``batch`` poses (pass the objective's own chunk, so scores are unchanged),
        # with a cancel check before each: 32 LC² poses at once take seconds on a busy CPU.
        for part in torch.as_tensor(poses).split(batch):
            if monitor is not None:
                monitor.check()
            s = similarity(part).cpu().numpy()
            scores.append(s)
            if monitor is not None:
                for v in s:
                    monitor.evaluated(-float(v))
    scores = np.concatenate(scores)
    order = np.argsort(-scores, kind="stable")
    return poses[order[:top_k]]
