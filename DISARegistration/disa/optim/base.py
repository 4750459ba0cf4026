"""What every optimizer returns, and the hooks it calls: progress reports and cancellation."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import numpy as np

from ..errors import CancelledError

#: progress(stage, fraction in [0, 1], message)
ProgressCallback = Callable[[str, float, str], None]


@dataclass
class OptimResult:
    x: np.ndarray
    cost: float
    n_evals: int
    message: str
    history: List[float] = field(default_factory=list)


class Monitor:
    """Counts objective evaluations, forwards progress and raises CancelledError on request.

    ``cancel`` is any callable returning True when the caller wants to stop (a
    ``threading.Event().is_set`` works); it is polled at every objective evaluation.
    """

    def __init__(self, progress: Optional[ProgressCallback] = None, cancel: Optional[Callable[[], bool]] = None):
        self.progress = progress
        self.cancel = cancel
        self.stage = ""
        self.fraction = (0.0, 1.0)
        self.budget = 1
        self.evals = 0
        self.best = np.inf
        self.started = time.perf_counter()
        self._last_report = 0.0

    def begin(self, stage: str, start: float, end: float, budget: int):
        self.stage, self.fraction, self.budget, self.evals, self.best = stage, (start, end), max(budget, 1), 0, np.inf
        self.report(force=True)

    def check(self):
        if self.cancel is not None and self.cancel():
            raise CancelledError("registration cancelled")

    def evaluated(self, cost: float):
        self.check()
        self.evals += 1
        self.best = min(self.best, float(cost))
        self.report()

    def report(self, force: bool = False):
        if self.progress is None:
            return
        now = time.perf_counter()
        if not force and now - self._last_report < 0.2:
            return
        self._last_report = now
        a, b = self.fraction
        frac = a + (b - a) * min(self.evals / self.budget, 1.0)
        best = "" if not np.isfinite(self.best) else f", best similarity {-self.best:.4f}"
        self.progress(self.stage, frac, f"{self.stage}: {self.evals} evaluations{best}, "
                                        f"{now - self.started:.1f} s")
