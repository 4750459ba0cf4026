"""L-BFGS-B (SciPy) over a differentiable torch objective."""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy.optimize import minimize

from .base import Monitor, OptimResult


def minimize_lbfgs(cost: Callable[[torch.Tensor], torch.Tensor], x0: np.ndarray, *,
                   max_evals: int = 200, bounds: Optional[Sequence[Tuple[float, float]]] = None,
                   gtol: float = 1e-6, ftol: float = 1e-9, monitor: Optional[Monitor] = None,
                   **_ignored) -> OptimResult:
    """Minimize ``cost`` ((1, n) float64 tensor -> (1,) tensor) with exact autograd gradients.

    Stops when the projected gradient falls under ``gtol``, the relative decrease under
    ``ftol``, or after ``max_evals`` evaluations.
    """
    monitor = monitor or Monitor()
    history = []

    def fun(x):
        p = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        c = cost(p[None])[0]
        (g,) = torch.autograd.grad(c, p)
        value = float(c.detach())
        history.append(value)
        monitor.evaluated(value)
        return value, g.detach().cpu().numpy().astype(np.float64)

    res = minimize(fun, np.asarray(x0, dtype=np.float64), jac=True, method="L-BFGS-B", bounds=bounds,
                   options={"maxfun": max_evals, "maxiter": max_evals, "gtol": gtol, "ftol": ftol})
    return OptimResult(np.asarray(res.x), float(res.fun), int(res.nfev), str(res.message), history)
