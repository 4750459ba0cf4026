"""Similarity measures. Each follows the contract in ``base.py``; ``make_similarity`` builds one
from a name or a weighted sum such as ``"0.5*lc2+0.5*mind"`` (the combined-metrics paper)."""
from __future__ import annotations

from .base import Prepared, Similarity  # noqa: F401
from .lc2 import LC2, lc2  # noqa: F401
from .mind import MIND  # noqa: F401
from .mi import MutualInformation  # noqa: F401
from .ncc import NCC, LNCC, ncc, lncc  # noqa: F401
from .ngf import NGF  # noqa: F401
from .mse import MSE  # noqa: F401
from .combined import Combined  # noqa: F401
from .disa import DISA  # noqa: F401
from .spec import METRIC_NAMES, REGISTRY, MetricSpec, parse_metric  # noqa: F401


def make_similarity(spec, **options) -> Similarity:
    """A similarity from ``"name"`` or ``"w1*name1+w2*name2..."``; ``options`` as
    :meth:`MetricSpec.build` (weights, precision, seed, cache)."""
    return parse_metric(spec).build(**options)
