"""Optimizers over transform parameter vectors, with progress and cancel hooks."""

from .adam import Adam  # noqa: F401
from .base import OptimResult, Monitor  # noqa: F401
from .lbfgs import minimize_lbfgs  # noqa: F401
from .bobyqa import minimize_bobyqa  # noqa: F401
from .global_search import PoseSampler, best_first, score_poses  # noqa: F401

OPTIMIZERS = {"lbfgs": minimize_lbfgs, "bobyqa": minimize_bobyqa}
