"""Global search: score hundreds of starting poses in batches and keep the best few.

The poses are drawn in one physical parameterization for every transform model (rotation
vector in degrees, translation in mm, about the fixed image centre) and converted to the
model's parameters, so an affine search rotates as a rigid one does. They form a scrambled
Sobol sequence over the ranges around the start (the start itself included): coverage is even
and a seed makes it repeatable. ``score_poses`` scores them in batches and ``best_first`` ranks
them; the schedule that narrows and refines them is ``registration/search.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from .base import Monitor

Range = Union[float, Sequence[float]]


@dataclass(frozen=True)
class PoseSampler:
    """``n`` starting poses within +-``rotation_deg`` about and +-``translation_mm`` along each
    axis (one value or three per axis, x y z), the start first.

    Other search spaces (wider presets, probe-pressure models) plug in by overriding
    ``offsets`` or by a model's ``with_rigid_offsets``.
    """

    n: int = 256
    rotation_deg: Range = 10.0
    translation_mm: Range = 15.0
    seed: int = 0

    def half_widths(self) -> np.ndarray:
        """(6,) half ranges: three rotation components (degrees), three translations (mm)."""
        rot = np.broadcast_to(np.asarray(self.rotation_deg, dtype=np.float64), (3,))
        mm = np.broadcast_to(np.asarray(self.translation_mm, dtype=np.float64), (3,))
        return np.concatenate([rot, mm])

    def offsets(self) -> np.ndarray:
        """(n, 6) rigid offsets from the start: zeros first, then Sobol points in the ranges."""
        from scipy.stats import qmc

        m = int(np.ceil(np.log2(max(self.n - 1, 2))))
        unit = qmc.Sobol(d=6, scramble=True, seed=self.seed).random_base2(m)[: self.n - 1]
        return np.concatenate([np.zeros((1, 6)), (2.0 * unit - 1.0) * self.half_widths()])

    def poses(self, model, x0: np.ndarray) -> np.ndarray:
        """(n, model.n_params) parameters of the start followed by each offset."""
        return model.with_rigid_offsets(np.asarray(x0, dtype=np.float64), self.offsets())


def score_poses(similarity: Callable[[torch.Tensor], torch.Tensor], poses: np.ndarray, *,
                monitor: Optional[Monitor] = None, batch: int = 8) -> np.ndarray:
    """(n,) similarities of the (n, n_params) ``poses``, scored ``batch`` at a time (pass the
    objective's own chunk, so scores do not depend on the batch) with a cancel check before each:
    32 LC² poses at once take seconds on a busy CPU. Each scored pose counts as a start done."""
    poses = np.asarray(poses, dtype=np.float64)
    scores = []
    with torch.no_grad():
        for part in torch.as_tensor(poses).split(batch):
            if monitor is not None:
                monitor.check()
            s = similarity(part).cpu().numpy()
            scores.append(s)
            if monitor is not None:
                for v in s:
                    monitor.scored(-float(v))
    return np.concatenate(scores) if scores else np.zeros(0)


def best_first(scores: np.ndarray) -> np.ndarray:
    """Indices of ``scores`` from best to worst; ties keep their order (deterministic)."""
    return np.argsort(-np.asarray(scores), kind="stable")

