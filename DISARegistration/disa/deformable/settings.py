"""Checks of dense registration settings: one clear InputError line before any work starts."""
from __future__ import annotations

from typing import Optional, Tuple

from ..errors import InputError
from ..features.mind import CHANNELS as MIND_CHANNELS
from ..registration.options import check_choice, check_int, check_spacings, positive
from ..similarity.spec import MetricSpec, parse_metric
from .defaults import DENSE_DEFAULTS as D
from .defaults import (
    DENSE_METHODS,
    DENSE_METRICS,
    INTEGRATORS,
    LINEAR_TRANSFORMS,
    STRIDES,
)

MAX_ITERATIONS = 100_000
MAX_LEVELS = 5
DEFAULT_LR = {"deformable": D.lr, "diffeomorphic": D.dense_lr, "neural-ode": D.ode_lr}
#: Finest-level iterations by method (the diffeomorphic models' are at most: they stop once converged).
DEFAULT_ITERATIONS = {"deformable": D.iterations, "diffeomorphic": D.dense_iterations, "neural-ode": D.ode_iterations}
#: Iterations of each coarser level by method (the diffeomorphic models' are at most).
DEFAULT_COARSE_ITERATIONS = {"deformable": D.coarse_iterations, "diffeomorphic": D.dense_coarse_iterations,
                             "neural-ode": D.ode_coarse_iterations}
MAX_GRID_SPACING_MM = 100.0
MAX_SEARCH_RADIUS_MM = 200.0
MAX_LINEARIZE = 100.0


def check_metric(metric) -> Tuple[MetricSpec, Tuple[Tuple[float, str], ...]]:
    """The parsed metric and its terms with weights summing to one; only dense measures."""
    spec = parse_metric(metric)
    for _, name in spec.terms:
        if name not in DENSE_METRICS:
            raise InputError(f"similarity {name!r} has no dense form here; use {', '.join(DENSE_METRICS)} "
                             "or a weighted sum of them")
    total = sum(w for w, _ in spec.terms)
    return spec, tuple((w / total, name) for w, name in spec.terms)


def check_dense_settings(transform: str, spacing: Optional[float], grid_spacing_mm, stride, search_radius_mm,
                         iterations: Optional[int], lr: Optional[float], smoothness: Optional[float],
                         jacobian_weight, integrator: str, time_steps, seed, linear_transform: str,
                         levels=D.levels, coarse_iterations: Optional[int] = None,
                         mind_components=D.mind_components, linearize=D.linearize) -> dict:
    """Checked settings; None values take the method's default (``DENSE_DEFAULTS``)."""
    transform = check_choice("dense transform", transform, DENSE_METHODS)
    dense = transform != "deformable"
    out = {"transform": transform,
           "spacing": None if spacing is None else check_spacings([spacing], "working spacing")[0],
           "grid_spacing_mm": positive("the control grid spacing (mm)", grid_spacing_mm, MAX_GRID_SPACING_MM),
           "stride": int(stride) if stride in STRIDES else None,
           "search_radius_mm": positive("the search radius (mm)", search_radius_mm, MAX_SEARCH_RADIUS_MM),
           "iterations": check_int("iterations", DEFAULT_ITERATIONS[transform] if iterations is None else iterations,
                                   0, MAX_ITERATIONS),
           "levels": check_int("dense levels", levels, 1, MAX_LEVELS),
           "coarse_iterations": check_int("coarse-level iterations", DEFAULT_COARSE_ITERATIONS[transform]
                                          if coarse_iterations is None else coarse_iterations, 0, MAX_ITERATIONS),
           "lr": positive("the learning rate", DEFAULT_LR[transform] if lr is None else lr, 1e3),
           "smoothness": positive("the smoothness weight", (D.dense_smoothness if dense else D.smoothness)
                                  if smoothness is None else smoothness, 1e6, allow_zero=True),
           "jacobian_weight": positive("the Jacobian penalty weight", jacobian_weight, 1e6, allow_zero=True),
           "integrator": check_choice("integrator", integrator, INTEGRATORS),
           "time_steps": check_int("time steps", time_steps, 1, 1000),
           "seed": check_int("seed", seed, 0, 2 ** 32 - 1),
           "linear_transform": check_choice("linear transform", linear_transform, LINEAR_TRANSFORMS),
           "mind_components": check_int("MIND-SSC components", mind_components, 1, MIND_CHANNELS),
           "linearize": positive("the linearization radius (working voxels)", linearize, MAX_LINEARIZE,
                                 allow_zero=True)}
    if out["stride"] is None:
        raise InputError(f"the descriptor stride must be one of {', '.join(map(str, STRIDES))}, got {stride!r}")
    return out
