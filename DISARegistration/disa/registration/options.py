"""Checks of registration settings, shared by ``register`` and the command line's parser, so a
bad value is refused with one clear line before any work starts, whichever entry point got it."""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

from ..errors import InputError
from .defaults import DEFAULTS, PRECISIONS, SEARCH_PRESETS, SEARCHES, TRANSFORMS

#: Working spacings above this (mm) leave too few voxels for any medical volume.
MAX_SPACING_MM = 100.0
#: Largest seed (numpy and SciPy generators take 32-bit seeds everywhere).
MAX_SEED = 2 ** 32 - 1
#: Upper bounds that keep a run finite; far beyond any useful value.
MAX_SEARCH_SAMPLES = 1 << 20
MAX_EVALS = 1_000_000
MAX_ROTATION_DEG = 180.0
MAX_TRANSLATION_MM = 1000.0


def _number(name: str, value) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise InputError(f"{name} must be a finite number, got {value!r}")
    return x


def check_spacings(values: Sequence, name: str = "spacings") -> List[float]:
    """Working spacings in mm: positive, finite, at most ``MAX_SPACING_MM``."""
    values = list(values)
    if not values:
        raise InputError("give at least one working spacing in mm")
    out = []
    for v in values:
        x = _number(name, v)
        if not 0 < x <= MAX_SPACING_MM:
            raise InputError(f"{name} must lie in (0, {MAX_SPACING_MM:g}] mm, got {v!r}")
        out.append(x)
    return out


def check_int(name: str, value, low: int, high: int) -> int:
    """An integer in [low, high] (a float with an integer value is accepted)."""
    x = _number(name, value)
    if x != int(x):
        raise InputError(f"{name} must be a whole number, got {value!r}")
    if not low <= x <= high:
        raise InputError(f"{name} must lie in [{low}, {high}], got {int(x)}")
    return int(x)


def check_range(name: str, value, high: float) -> float:
    """A search half-range: finite, in [0, high]."""
    x = _number(name, value)
    if not 0 <= x <= high:
        raise InputError(f"{name} must lie in [0, {high:g}], got {value!r}")
    return x


def positive(name: str, value, high: float = math.inf, allow_zero: bool = False) -> float:
    """A finite number in (0, high] (or [0, high] with ``allow_zero``)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}") from None
    low_ok = x >= 0 if allow_zero else x > 0
    if not math.isfinite(x) or not low_ok or x > high:
        bound = "0 or more" if allow_zero else "positive"
        raise InputError(f"{name} must be {bound} and finite" + (f", at most {high:g}" if math.isfinite(high) else "")
                         + f", got {value!r}")
    return x


def check_choice(name: str, value, choices: Sequence[str]) -> str:
    text = str(value).lower()
    if text not in choices:
        raise InputError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
    return text


def search_ranges(preset, rotation=None, translation=None) -> Tuple[float, float]:
    """(+- degrees, +- mm) of a global search: the preset's, each overridden when given."""
    name = check_choice("search preset", preset, tuple(SEARCH_PRESETS))
    rot, mm = SEARCH_PRESETS[name]
    return (check_range("search rotation", rot if rotation is None else rotation, MAX_ROTATION_DEG),
            check_range("search translation", mm if translation is None else translation, MAX_TRANSLATION_MM))


def check_settings(transform, search, search_rotation, search_translation, search_samples, search_starts,
                   spacings: Optional[Sequence], max_evals, seed, precision,
                   search_preset=DEFAULTS.search_preset) -> dict:
    """Every setting of ``register`` that has a valid range, checked and normalized; the search
    ranges resolved (``search_rotation``/``search_translation`` None: the preset's)."""
    search_rotation, search_translation = search_ranges(search_preset, search_rotation, search_translation)
    return dict(
        transform=check_choice("transform", transform, TRANSFORMS),
        search=check_choice("search", search, SEARCHES),
        search_preset=str(search_preset).lower(),
        search_rotation=search_rotation,
        search_translation=search_translation,
        search_samples=check_int("search samples", search_samples, 1, MAX_SEARCH_SAMPLES),
        search_starts=check_int("search starts", search_starts, 1, MAX_SEARCH_SAMPLES),
        spacings=None if spacings is None else check_spacings(spacings),
        max_evals=None if max_evals is None else check_int("max evaluations", max_evals, 1, MAX_EVALS),
        seed=check_int("seed", seed, 0, MAX_SEED),
        precision=check_choice("precision", precision, PRECISIONS),
    )
