"""Similarity measures. Each follows the contract in ``base.py``; ``make_similarity`` builds one
from a name or a weighted sum such as ``"0.5*lc2+0.5*mind"`` (the combined-metrics paper)."""
from __future__ import annotations

import re

from ..errors import InputError
from .base import Prepared, Similarity  # noqa: F401
from .lc2 import LC2, lc2  # noqa: F401
from .mind import MIND  # noqa: F401
from .mi import MutualInformation  # noqa: F401
from .ncc import NCC, LNCC, ncc, lncc  # noqa: F401
from .ngf import NGF  # noqa: F401
from .mse import MSE  # noqa: F401
from .combined import Combined  # noqa: F401
from .disa import DISA  # noqa: F401

REGISTRY = {"lc2": LC2, "mind": MIND, "mi": MutualInformation, "ncc": NCC, "lncc": LNCC, "ngf": NGF, "mse": MSE,
            "disa": DISA}


def make_similarity(spec: str) -> Similarity:
    """A similarity from ``"name"`` or ``"w1*name1+w2*name2..."``."""
    spec = spec.strip().lower().replace(" ", "")
    terms = spec.split("+")
    if len(terms) == 1 and "*" not in spec:
        if spec not in REGISTRY:
            raise InputError(f"unknown similarity {spec!r}; choose one of {', '.join(sorted(REGISTRY))} "
                             "or a weighted sum like 0.5*lc2+0.5*mind")
        return REGISTRY[spec]()
    parts = []
    for term in terms:
        match = re.fullmatch(r"(?:([0-9.eE+-]+)\*)?([a-z0-9]+)", term)
        if not match or match.group(2) not in REGISTRY:
            raise InputError(f"cannot read similarity term {term!r} in {spec!r}; write e.g. 0.5*lc2+0.5*mind")
        parts.append((float(match.group(1) or 1.0), REGISTRY[match.group(2)]()))
    return Combined(parts)
