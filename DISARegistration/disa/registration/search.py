"""The global search schedule: many starting poses, narrowed coarse to fine, the best few refined.

    starts = global_starts(coarse, finer, model, x0, sampler, starts=4, local=..., monitor=...)

1. **Round 1** on the coarsest level (or, with one level, on its measure's cheaper stand-in,
   ``Prepared.for_search``: DISA then keeps every second fixed descriptor). *Score* every pose
   of the sampler (the start, then a scrambled Sobol sequence within +-rotation /
   +-translation; ``optim.global_search.PoseSampler``) in batches: one vectorized evaluation
   scores many poses. *Refine* the best ``KEEP_FRACTION`` of them (at least ``KEEP_PER_START``
   per final start) with ``SHORT_EVALS`` L-BFGS evaluations each: with wide ranges the nearest
   pose is still far from the optimum, and a few steps tell a basin that leads to it from one
   that does not. Only poses that keep ``OVERLAP_SHARE`` of the
   start's overlap with the moving image compete: points pushed out of view score as "no
   information", and such a pose must not take a place from one that overlaps.
2. **Round 2**, the same around the best refined pose, within at most ``NARROW_RANGE`` and with
   ``NARROW`` times fewer poses, refining the best ``starts``: a local optimum a coarse voxel or
   two from a better one is common on noisy ultrasound.
3. **Re-score** every refined pose on the next level (or on the one level itself, when the
   rounds ran on a stand-in; otherwise their own costs rank them) and hand the best ``starts``
   distinct ones to the pipeline, which optimizes each through every level.

Deterministic: the poses come from the seed (round 2 from seed + 1), the local steps are
deterministic and ties keep their order. Only for differentiable measures (L-BFGS); exact LC²
alone stays local, as in the DISA paper (``pipeline.register`` falls back to a local search).
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from ..optim import Monitor, OptimResult, PoseSampler
from ..optim.global_search import best_first, score_poses
from .objective import Objective

#: Share of the scored poses that go on to the short local optimization, and the least number of
#: them per final start.
KEEP_FRACTION = 0.03
KEEP_PER_START = 4
#: Evaluations of that short local optimization, per pose.
SHORT_EVALS = 15
#: The second round searches at most these ranges (+- degrees, +- mm: a local optimum a coarse
#: voxel or two from a better one) with NARROW times fewer poses, around the best pose of the
#: first, and refines the best ``starts`` of them.
NARROW_RANGE = (5.0, 10.0)
NARROW = 4
#: A pose goes on only if at least this share of the start's overlap stays inside the moving image.
OVERLAP_SHARE = 0.5
#: Share of the progress bar the search takes (the levels' local optimizations take the rest).
SEARCH_PROGRESS = 0.3
#: Poses closer than this (degrees, mm, percent; largest parameter difference) count as one.
DISTINCT = 0.5


def distinct(results: Sequence[OptimResult], k: int, tolerance: float = DISTINCT) -> List[OptimResult]:
    """The first ``k`` of ``results`` (best first) whose parameters differ by more than ``tolerance``."""
    kept: List[OptimResult] = []
    for r in results:
        if all(np.abs(r.x - other.x).max() > tolerance for other in kept):
            kept.append(r)
        if len(kept) == k:
            break
    return kept


def search_bounds(bounds: Sequence, model, rotation: float, translation: float) -> list:
    """``bounds`` ((low, high) per parameter) widened so that every start the search samples
    and the local steps beyond it lie inside: rotations by ``rotation`` degrees, translations by
    ``translation`` mm, and an affine model's matrix entries (percent) by as much as such a
    rotation changes them. Other parameters (e.g. a probe's compression) keep their bounds."""
    widen = np.zeros(len(bounds))
    widen[:3] = rotation
    widen[3:6] = translation
    if model.name == "affine":
        widen[:3] = widen[6:] = 100.0 * math.sin(math.radians(min(90.0, math.sqrt(3.0) * rotation)))
    return [(low - w, high + w) for (low, high), w in zip(bounds, widen)]


def search_reach(box: np.ndarray, center: np.ndarray, rotation: float, translation: float) -> float:
    """The farthest (mm) any point of ``box`` (corners, (8, 3) LPS) moves under a pose the search
    samples: rotations of up to ``rotation`` degrees about each axis through ``center`` (together
    at most sqrt(3) times that angle) and translations of up to ``translation`` mm along each."""
    radius = float(np.linalg.norm(np.asarray(box) - np.asarray(center), axis=1).max())
    angle = math.radians(min(180.0, math.sqrt(3.0) * rotation))
    return math.sqrt(3.0) * translation + 2.0 * radius * math.sin(angle / 2.0)


def keep_count(n: int, starts: int) -> int:
    """How many of ``n`` scored poses go on to the short local optimization."""
    return min(n, max(KEEP_PER_START * starts, math.ceil(KEEP_FRACTION * n)))


def _round(coarse: Objective, poses: np.ndarray, keep: int, min_overlap: float, local, monitor: Monitor, name: str,
           span: Tuple[float, float]) -> List[OptimResult]:
    """One round on the coarsest level: score ``poses``, then briefly optimize the best ``keep``
    that overlap enough (the first pose, the round's centre, always qualifies)."""
    a, b = span
    monitor.begin(f"{name}: scoring", a, a + 0.4 * (b - a), len(poses), starts=len(poses))
    scores = score_poses(coarse.similarity, poses, monitor=monitor, batch=coarse.chunk)
    kept = []
    for i in best_first(scores):
        monitor.check()
        if i == 0 or coarse.overlap(poses[i]) >= min_overlap:
            kept.append(i)
        if len(kept) == keep:
            break
    monitor.begin(f"{name}: refining", a + 0.4 * (b - a), b, len(kept) * SHORT_EVALS, starts=len(kept))
    refined = []
    for i in kept:
        refined.append(local(coarse, poses[i], SHORT_EVALS))
        monitor.start_done()
    return refined


def global_starts(coarse: Objective, finer: Optional[Callable[[], Objective]], model, x0: np.ndarray,
                  sampler: PoseSampler, *, starts: int, local: Callable[..., OptimResult], monitor: Monitor,
                  labels: Sequence[str] = ("coarse", "fine")) -> List[np.ndarray]:
    """The best ``starts`` distinct starting poses, best first (see the module's schedule).

    ``coarse``: the objective both rounds run on (the coarsest level's, or its measure's search
    stand-in, ``Objective.for_search``); ``finer()``: the one that re-scores the refined poses
    (the next level's, prepared only then: until the rounds start, progress has nothing to
    report), or None to rank them by their coarse costs. ``local(objective, start,
    max_evals)``: a local optimization (the pipeline's L-BFGS with its bounds and tolerances);
    ``labels``: the two objectives' names on the progress line ("2 mm", "1 mm").
    """
    share = SEARCH_PROGRESS
    min_overlap = OVERLAP_SHARE * coarse.overlap(x0)
    # Round 1: the whole range around the start.
    refined = _round(coarse, sampler.poses(model, x0), keep_count(sampler.n, starts), min_overlap, local, monitor,
                     f"search 1/2 at {labels[0]}", (0.0, 0.5 * share))
    # Round 2: narrow ranges (and NARROW times fewer poses) around the best so far.
    best = min(refined, key=lambda r: r.cost)
    half = np.minimum(sampler.half_widths(), np.repeat(NARROW_RANGE, 3))
    narrow = PoseSampler(max(2, sampler.n // NARROW), tuple(half[:3]), tuple(half[3:]), sampler.seed + 1)
    refined += _round(coarse, narrow.poses(model, best.x), min(narrow.n, starts), min_overlap, local, monitor,
                      f"search 2/2 at {labels[0]}", (0.5 * share, 0.85 * share))

    # Re-score every refined pose on the finer objective, when there is one.
    candidates = np.stack([r.x for r in refined])
    if finer is not None:
        rescoring = finer()
        monitor.begin(f"search: re-scoring at {labels[1]}", 0.85 * share, share, len(candidates),
                      starts=len(candidates))
        costs = -score_poses(rescoring.similarity, candidates, monitor=monitor, batch=rescoring.chunk)
    else:
        costs = np.array([r.cost for r in refined])
    ranked = [OptimResult(candidates[i], float(costs[i]), 0, "") for i in best_first(-costs)]
    return [r.x for r in distinct(ranked, starts)]
