"""Instance optimization with a combined similarity (combined_similarity_metrics.md, Sect. 2).

Adam on a dense voxel displacement, starting from a given one (the discrete step's, or zero),
minimizing Eq. 1: equally weighted similarity terms (weights summing to one) in both
directions plus ``smoothness`` times the first-order regularizer.

Units. The paper's settings (30 iterations, learning rate 1e-3, smoothness weight 1) come from
a VoxelMorph-style implementation, whose flow is in voxels: Adam moves each displacement by
about ``lr`` voxels per step, so 30 steps at 1e-3 refine by at most 0.03 voxels, a polish of a
network's output. ``instance_optimize`` keeps the paper's defaults; the dense pipeline, which
starts from a coarse discrete field instead of a trained network, uses ``DENSE_DEFAULTS.lr``
(0.1 voxels per step) and ``DENSE_DEFAULTS.iterations``.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from ..optim import Adam, Monitor
from .fields import smooth
from .linearized import LinearizedLoss
from .losses import DenseTerm

#: The paper's instance-optimization settings (voxel units, see the module notes).
PAPER_ITERATIONS = 30
PAPER_LR = 1e-3
PAPER_SMOOTHNESS = 1.0


def instance_optimize(terms: Sequence[Tuple[float, DenseTerm]], initial: Optional[torch.Tensor] = None,
                      iterations: int = PAPER_ITERATIONS, lr: float = PAPER_LR,
                      smoothness: float = PAPER_SMOOTHNESS, bidirectional: bool = True,
                      smoothing_passes: int = 0, monitor: Optional[Monitor] = None,
                      linearize: float = 0.0) -> Tuple[torch.Tensor, list]:
    """Refine a (1, 3, Z, Y, X) voxel displacement (None: zero) by Adam on ``combined_loss``.

    ``smoothing_passes``: box-smooth the parameters this many times before each evaluation
    (ConvexAdam's implicit regularization; 0 for the paper's plain form). ``linearize``: the
    squared-difference terms by their Gauss-Newton model, rebuilt once the field has moved this
    many voxels (``linearized.LinearizedLoss``; 0: exact every iteration). Returns the
    displacement and the loss of each iteration.
    """
    first = terms[0][1]
    shape = first.fixed.shape[-3:]
    start = torch.zeros(1, 3, *shape, device=first.fixed.device) if initial is None else initial.detach()
    param = start.clone().float().requires_grad_(True)
    optimizer = Adam([param], lr=lr)
    history = []
    objective = LinearizedLoss(terms, linearize, bidirectional)

    def field() -> torch.Tensor:
        return smooth(param, smoothing_passes) if smoothing_passes else param

    for _ in range(int(iterations)):
        optimizer.zero_grad()
        loss = objective(field(), smoothness)
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
        if monitor is not None:
            monitor.evaluated(history[-1])
    with torch.no_grad():
        return field().detach(), history
