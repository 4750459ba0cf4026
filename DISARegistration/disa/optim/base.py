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
        #: Objective evaluations of the whole run (``evals`` restarts with every stage).
        self.total = 0
        self.best = np.inf
        self.starts = self.starts_done = 0
        self.started = time.perf_counter()
        self._last_report = 0.0

    def begin(self, stage: str, start: float, end: float, budget: int, starts: int = 0):
        """A new stage over progress ``start``..``end`` with ``budget`` evaluations; ``starts``: the
        poses it handles (scored or optimized), reported as "done/starts" (``start_done``)."""
        self.stage, self.fraction, self.budget, self.evals, self.best = stage, (start, end), max(budget, 1), 0, np.inf
        self.starts, self.starts_done = starts, 0
        self.report(force=True)

    def start_done(self, count: int = 1):
        self.starts_done += count
        self.report(force=self.starts_done == self.starts)  # a stage's last state always shows

    def check(self):
        if self.cancel is not None and self.cancel():
            raise CancelledError("registration cancelled")

    def _count(self, cost: float):
        self.check()
        self.evals += 1
        self.total += 1
        self.best = min(self.best, float(cost))

    def evaluated(self, cost: float):
        self._count(cost)
        self.report()

    def scored(self, cost: float):
        """One pose of a scoring stage: an evaluation that is also a start done (one report; the
        last pose of the stage always reports, however fast the stage went)."""
        self._count(cost)
        self.start_done()

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
        done = f"{self.starts_done}/{self.starts} starts" if self.starts else ""
        evals = "" if self.starts == self.budget else f"{self.evals} evaluations"  # scoring: one per start
        self.progress(self.stage, frac, f"{self.stage}: {', '.join(filter(None, (done, evals)))}{best}, "
                                        f"{now - self.started:.1f} s")
