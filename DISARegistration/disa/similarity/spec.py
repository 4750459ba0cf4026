"""Metric expressions: ``"mind"``, ``"LC2"``, ``"0.5*lc2 + 0.5*mind"``, parsed once.

``parse_metric(text)`` returns a :class:`MetricSpec` that the command line, the pipeline and the
Slicer logic share: names are case-insensitive, a term is ``[weight*]name`` with a positive
finite weight, terms are joined by ``+``. Anything else is refused with the list of valid names,
so a typo never runs a different measure or a different optimizer.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple, Union

from ..errors import InputError
from .base import Similarity
from .combined import Combined
from .disa import DISA
from .lc2 import LC2
from .mi import MutualInformation
from .mind import MIND
from .mse import MSE
from .ncc import LNCC, NCC
from .ngf import NGF

#: Every measure by its name in metric expressions.
REGISTRY = {"disa": DISA, "lc2": LC2, "mind": MIND, "mi": MutualInformation, "ncc": NCC, "lncc": LNCC,
            "ngf": NGF, "mse": MSE}
METRIC_NAMES = tuple(REGISTRY)

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?|[-+]?(?:nan|inf(?:inity)?)"
_TERM = re.compile(rf"\s*(?:(?P<weight>{_NUMBER})\s*\*\s*)?(?P<name>[a-z_][a-z0-9_]*)\s*")


def _refuse(text: str, why: str) -> InputError:
    return InputError(f"cannot use similarity {text!r}: {why}; valid names: {', '.join(METRIC_NAMES)}, or a "
                      "weighted sum such as 0.5*lc2+0.5*mind")


def _format_weight(w: float) -> str:
    return str(int(w)) if w.is_integer() and abs(w) < 1e15 else repr(w)


@dataclass(frozen=True)
class MetricSpec:
    """A parsed metric: ``terms`` are (weight, name) pairs, names lower case and distinct."""

    terms: Tuple[Tuple[float, str], ...]

    @property
    def names(self) -> Tuple[str, ...]:
        return tuple(name for _, name in self.terms)

    @property
    def base(self) -> str:
        """The measure's name when there is one term, else "combined" (chooses the optimizer)."""
        return self.terms[0][1] if len(self.terms) == 1 else "combined"

    def __str__(self) -> str:
        return "+".join(name if w == 1.0 else f"{_format_weight(w)}*{name}" for w, name in self.terms)

    def build(self, weights: Union[str, Path, None] = None, precision: str = "float32", seed: int = 0,
              cache=None) -> Similarity:
        """The Similarity. ``weights``, ``precision`` and ``cache`` go to DISA terms (a weights
        file, descriptor precision, a DescriptorCache); ``seed`` to mutual information's sampling."""
        if weights is not None and "disa" not in self.names:
            raise InputError(f"a weights file applies to the disa measure only, not to {self}")
        parts = []
        for w, name in self.terms:
            if name == "disa":
                sim = DISA(weights=weights, precision=precision, cache=cache)
            elif name == "mi":
                sim = MutualInformation(seed=seed)
            else:
                sim = REGISTRY[name]()
            parts.append((w, sim))
        if len(parts) == 1 and parts[0][0] == 1.0:
            return parts[0][1]
        return Combined(parts)


def parse_metric(text: Union[str, MetricSpec]) -> MetricSpec:
    """The MetricSpec of ``text`` (a spec passes through); InputError on anything malformed."""
    if isinstance(text, MetricSpec):
        return text
    if not isinstance(text, str):
        raise InputError(f"a similarity is given by name, e.g. mind or 0.5*lc2+0.5*mind, not {text!r}")
    lowered = text.lower()
    if not lowered.strip():
        raise _refuse(text, "it names no measure")
    weights = {}  # name -> summed weight, in order of first appearance
    pos = 0
    while True:
        match = _TERM.match(lowered, pos)
        if match is None:
            rest = text[pos:].strip()
            raise _refuse(text, f"cannot read {rest!r}" if rest else "a term is missing at the end")
        name = match.group("name")
        if name not in REGISTRY:
            raise InputError(f"unknown similarity {name!r} in {text!r}; choose one of {', '.join(METRIC_NAMES)} "
                             "or a weighted sum such as 0.5*lc2+0.5*mind")
        weight = float(match.group("weight") or 1.0)
        if not math.isfinite(weight) or weight <= 0:
            raise _refuse(text, f"the weight of {name} must be a positive finite number, got {match.group('weight')}")
        weights[name] = weights.get(name, 0.0) + weight
        pos = match.end()
        if pos == len(lowered):
            break
        if lowered[pos] != "+":
            raise _refuse(text, f"unexpected {text[pos:].strip()!r} (join terms with +)")
        pos += 1
    return MetricSpec(tuple((w, name) for name, w in weights.items()))

