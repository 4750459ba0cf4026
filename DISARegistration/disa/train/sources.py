"""Volume pairs for dense DISA training: an endless, seeded stream, and the held-out pairs of
the learning curve.

Three kinds of pairs (``mix``):

- *synthetic*: two random appearances of one template on one grid (one of them simulated
  ultrasound a third of the time; :mod:`disa.train.synth`);
- *us-self*: a real RESECT ultrasound (B) and an intensity-remapped, smoothed copy of it (A) on
  one grid: the aligned end of LC² with real speckle and anatomy;
- *us-template*: a real ultrasound (B) against an unrelated template appearance (A): the low
  end of LC² with real speckle.

Each pair is rendered at a crop scale (voxel step of the crops cut from it: 1, 1.5 or 2 mm
per voxel, band-limited first) and comes with crop centres: mostly content voxels drawn in
proportion to LC²'s weight (local variance, capped), as the paper draws its B patches, plus a
share drawn anywhere in the grid (air, flat background, borders), where registration also
evaluates the network and LC² is 0.

Never used for training: RESECT Case 24 (evaluation case, refused by
:func:`disa.train.synth.check_not_held_out`), the ultrasound files of the learning curve
(``CURVE_US``) and the seeds of the held-out registration check.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from ..spatial.image import anti_alias_sigma
from ..threads import torch_threads
from .heldout import HELDOUT_PAIRS, HELDOUT_SEED
from .synth import (A_APPEARANCES, SPACING, TEMPLATES, PairSpec, VolumePair, corrupt, load_ultrasound, make_pair,
                    normalize, random_curve, ultrasound_files)
from .targets import RADII

#: Real ultrasound files kept for the learning curve (never trained on).
CURVE_US = ("Case26", "Case27")
#: Kinds of pairs and their default shares; crop scales (mm per crop voxel) and their shares.
KINDS = ("synthetic", "us-self", "us-template")
DEFAULT_MIX = (0.7, 0.15, 0.15)
DEFAULT_SCALES = ((1.0, 0.5), (1.5, 0.25), (2.0, 0.25))
#: Voxel size (mm) of the fine us-self pairs (``fine_share``): RESECT's own, where Case 24's LC²
#: optimum moves from 2.5 to 1.9 mm; their crops are cut at that step (crop scale 0.5 mm).
FINE_US_SPACING = 0.5
#: Crop centres per pair, and the share of them drawn anywhere (background, borders).
CENTRES, ANYWHERE = 4096, 0.15


def pair_kind(name: str) -> str:
    """The kind (``KINDS``) of a rendered pair from its name: ``[curve-]us-self-...`` is us-self,
    ``[curve-]us-...`` (a real ultrasound against a template) us-template, anything else synthetic."""
    base = name[len("curve-"):] if name.startswith("curve-") else name
    return "us-self" if base.startswith("us-self-") else "us-template" if base.startswith("us-") else "synthetic"


@dataclass
class RenderedPair:
    """Normalized volumes A and B (float32, (Z, Y, X)), crop centres (K, 3) voxel (z, y, x) of
    each, whether the two share one grid (aligned crops possible), the crop scale and a name."""

    a: np.ndarray
    b: np.ndarray
    centres_a: np.ndarray
    centres_b: np.ndarray
    same_grid: bool
    scale: float
    name: str


def self_pair(path: str, seed: int, spacing: float = SPACING) -> VolumePair:
    """Real ultrasound (B) and an intensity-remapped, smoothed copy of it (A) on one grid of
    ``spacing`` mm."""
    rng = np.random.default_rng(seed)
    b, fan = load_ultrasound(path, spacing)
    smooth = ndimage.gaussian_filter(b, rng.uniform(0.7, 2.0))
    a = random_curve(smooth, rng, monotone=rng.uniform() < 0.5) * fan
    a, _ = normalize(corrupt(a, rng, mask=fan), fan)
    return VolumePair(a, b, fan, fan, True, {"kind": "us-self", "path": path, "seed": seed})


def crop_centres(volume: np.ndarray, mask: Optional[np.ndarray], rng: np.random.Generator,
                 k: int = CENTRES, anywhere: float = ANYWHERE) -> np.ndarray:
    """``k`` crop centres (z, y, x): content voxels in proportion to the local variance (capped
    at 2, LC²'s weight), and a share ``anywhere`` drawn uniformly over the whole grid."""
    inside = mask if mask is not None else volume != 0
    if not inside.any():
        inside = np.ones_like(volume, dtype=bool)
    r = 2 * RADII[len(RADII) // 2] + 1
    mean = ndimage.uniform_filter(volume, r)
    var = np.clip(ndimage.uniform_filter(volume * volume, r) - mean * mean, 0.0, 2.0)[inside] + 1e-3
    where = np.argwhere(inside)
    n_any = int(round(anywhere * k))
    content = where[rng.choice(len(where), min(k - n_any, len(where)), replace=False, p=var / var.sum())]
    spread = (rng.uniform(size=(n_any, 3)) * np.asarray(volume.shape)).astype(np.int64)
    return np.concatenate([content, spread]).astype(np.int64)


def band_limit(volume: np.ndarray, scale: float) -> np.ndarray:
    """Anti-alias a volume before crops with a voxel step of ``scale`` are cut from it."""
    if scale <= 1.0:
        return volume
    return ndimage.gaussian_filter(volume, float(anti_alias_sigma(scale)))


def _template_spec(rng: np.random.Generator, seed: int, path: str) -> PairSpec:
    return PairSpec("us", seed, str(rng.choice(list(TEMPLATES))), str(rng.choice(A_APPEARANCES)), None, None, path)


def _synthetic_spec(rng: np.random.Generator, seed: int) -> PairSpec:
    tpl = str(rng.choice(list(TEMPLATES)))
    if rng.uniform() < 1.0 / 3.0:
        return PairSpec("synthetic", seed, tpl, str(rng.choice(A_APPEARANCES)), "us")
    a, b = (str(x) for x in rng.choice(A_APPEARANCES, 2, replace=False))
    return PairSpec("synthetic", seed, tpl, a, b)


def render_pair(data_dir: str, seed: int, index: int, us_files: Sequence[str], mix=DEFAULT_MIX,
                scales=DEFAULT_SCALES, fine_share: float = 0.0) -> RenderedPair:
    """Pair ``index`` of the stream ``seed``: a pure function of its arguments (background
    processes can render it), on one thread so that it does not depend on the trainer's count
    (parallel sums round differently, and the crop centres are drawn from those values).
    ``fine_share``: the share of us-self pairs rendered at ``FINE_US_SPACING`` (crops at 0.5 mm
    per voxel instead of 1-2 mm)."""
    with torch_threads(1):
        return _render_pair(data_dir, seed, index, us_files, mix, scales, fine_share)


def _render_pair(data_dir, seed, index, us_files, mix, scales, fine_share=0.0) -> RenderedPair:
    rng = np.random.default_rng([int(seed), int(index)])
    sub = int(rng.integers(2 ** 31))
    if HELDOUT_SEED <= sub < HELDOUT_SEED + len(HELDOUT_PAIRS):
        sub += len(HELDOUT_PAIRS)  # never the held-out check's own recipes
    kind = KINDS[int(rng.choice(3, p=mix))] if us_files else "synthetic"
    fine = False
    if kind == "synthetic":
        spec = _synthetic_spec(rng, sub)
        pair, name = make_pair(spec, data_dir), spec.name()
    elif kind == "us-self":
        path = us_files[int(rng.integers(len(us_files)))]
        fine = fine_share > 0 and rng.uniform() < fine_share  # drawn only when asked: the default stream stays
        pair = self_pair(path, sub, FINE_US_SPACING if fine else SPACING)
        name = f"us-self-{os.path.basename(path).split('.')[0]}-{sub}" + ("-fine" if fine else "")
    else:
        spec = _template_spec(rng, sub, us_files[int(rng.integers(len(us_files)))])
        pair, name = make_pair(spec, data_dir), spec.name()
    values, probs = zip(*scales)
    scale = float(rng.choice(values, p=np.asarray(probs) / sum(probs)))
    if fine:  # the volume is at 0.5 mm already: crops at its own voxel step
        scale = 1.0
    return RenderedPair(band_limit(pair.a, scale).astype(np.float32), band_limit(pair.b, scale).astype(np.float32),
                        crop_centres(pair.a, pair.mask_a, rng), crop_centres(pair.b, pair.mask_b, rng),
                        bool(pair.same_grid), scale, f"{name}@{scale:g}")


def training_us_files(data_dir: str) -> list:
    """Real ultrasound files training may use (all of ``resect/us_only`` but ``CURVE_US``)."""
    return [f for f in ultrasound_files(data_dir) if not os.path.basename(f).startswith(CURVE_US)]


def curve_pairs(data_dir: str, n: int = 8, seed: int = 4242) -> list:
    """The held-out volume pairs of the learning curve: synthetic pairs from their own seed
    range, and every fourth an ultrasound self pair of ``CURVE_US`` (at crop scale 1). Rendered
    here; :func:`curve_pair_jobs` renders the same pairs in a process pool."""
    return [curve_pair(data_dir, i, seed) for i in range(n)]


def curve_pair_jobs(data_dir: str, executor, n: int = 8, seed: int = 4242) -> list:
    """The curve's pairs submitted to ``executor`` (futures, in order), so that the caller can
    queue other renders behind them before it waits."""
    return [executor.submit(curve_pair, data_dir, i, seed) for i in range(n)]


def curve_pair(data_dir: str, i: int, seed: int = 4242) -> RenderedPair:
    """Pair ``i`` of the learning curve (a pure function of its arguments, on one thread so
    that it does not depend on the caller's thread count; see :func:`render_pair`)."""
    with torch_threads(1):
        us = [f for f in ultrasound_files(data_dir) if os.path.basename(f).startswith(CURVE_US)]
        rng = np.random.default_rng([seed, i])
        if i % 4 == 3 and us:
            path = us[(i // 4) % len(us)]
            pair, name = self_pair(path, 500 + i), f"curve-us-self-{os.path.basename(path).split('.')[0]}"
        else:
            spec = _synthetic_spec(rng, 880000 + i)
            pair, name = make_pair(spec, data_dir), "curve-" + spec.name()
        return RenderedPair(pair.a, pair.b, crop_centres(pair.a, pair.mask_a, rng),
                            crop_centres(pair.b, pair.mask_b, rng), bool(pair.same_grid), 1.0, name)


__all__ = ["RenderedPair", "pair_kind", "render_pair", "curve_pairs", "curve_pair", "curve_pair_jobs", "crop_centres", "self_pair", "band_limit",
           "training_us_files", "CURVE_US", "KINDS", "DEFAULT_MIX", "DEFAULT_SCALES"]
