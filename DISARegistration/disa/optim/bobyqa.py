"""BOBYQA (Powell's derivative-free trust-region method, via the Py-BOBYQA library).

Used for LC², whose exact evaluation is not differentiated; Py-BOBYQA is a maintained,
tested implementation with bound constraints, so we do not hand-write one.
"""
from __future__ import annotations

import logging
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch

from .base import Monitor, OptimResult


def minimize_bobyqa(cost: Callable[[torch.Tensor], torch.Tensor], x0: np.ndarray, *,
                    max_evals: int = 300, bounds: Optional[Sequence[Tuple[float, float]]] = None,
                    rhobeg: float = 2.0, rhoend: float = 0.02, monitor: Optional[Monitor] = None,
                    **_ignored) -> OptimResult:
    """Minimize ``cost`` ((1, n) tensor -> (1,) tensor) without gradients.

    ``rhobeg``/``rhoend`` are the initial and final trust-region radii in parameter units
    (degrees, mm, percent): the search starts with steps of about ``rhobeg`` and stops when the
    radius falls below ``rhoend`` or after ``max_evals`` evaluations.
    """
    import pybobyqa

    logging.getLogger("pybobyqa").setLevel(logging.WARNING)
    monitor = monitor or Monitor()
    history = []
    x0 = np.asarray(x0, dtype=np.float64)

    def fun(x):
        with torch.no_grad():
            value = float(cost(torch.as_tensor(x, dtype=torch.float64)[None])[0])
        history.append(value)
        monitor.evaluated(value)
        return value

    if bounds is None:
        lower, upper = x0 - 1e3, x0 + 1e3
    else:
        lower, upper = (np.array(b, dtype=np.float64) for b in zip(*bounds))
    res = pybobyqa.solve(fun, x0, bounds=(lower, upper), rhobeg=rhobeg, rhoend=rhoend, maxfun=max_evals,
                         objfun_has_noise=False, scaling_within_bounds=False,
                         user_params={"logging.save_diagnostic_info": False,
                                      # no draws from numpy's global generator: a run's result
                                      # must not depend on what else the process does
                                      "init.random_initial_directions": False,
                                      "restarts.use_restarts": False})
    if res.x is None:  # Py-BOBYQA reports input errors in the result, not as exceptions
        raise RuntimeError(f"BOBYQA failed: {res.msg}")
    return OptimResult(np.asarray(res.x), float(res.f), int(res.nf), str(res.msg), history)
