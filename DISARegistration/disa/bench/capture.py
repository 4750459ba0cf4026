"""``disa benchmark capture``: how far from the truth each method still converges (the DISA
paper's Table 3 and Fig. 2).

Cases: synthetic ultrasound-MR, CT-MR and T2-T1 pairs with exact truth (:mod:`disa.cases`,
rendered unperturbed), and RESECT Case 24. Each case is moved by rigid perturbations (a
header-only change of the moving image, so the truth stays exact) whose *initial error*, the
mean distance between the fixed landmarks and the moved moving landmarks, is drawn uniformly
in 0-100 mm (stratified: one draw per equal slice of the range). A perturbation rotates by up
to ``ROTATION_PER_MM`` degrees per mm of its size about a random axis (at most 30 degrees at
100 mm) and translates along a random direction, about the fixed centre; it must leave at least
``MIN_OVERLAP`` of the fixed content inside the moving volume. Case 24's small field of view
(MR and ultrasound share one 5 cm box) allows only the smaller perturbations: the others are
listed as skipped.

Every method registers every perturbed pair from the identity; a run *converges* when its TRE
(mean landmark error after registration) is below 15 mm, and separately below 5 mm. Per method
and initial-error bin (0-25 / 25-50 / 50-75 / 75-100 mm): the shares of converged runs; per
method: mean seconds and objective evaluations per registration. Runs are interleaved across
methods (run 1 of every method, then run 2, ...), so a change in the machine's load affects
all alike. Writes ``capture.json``, ``capture.md``, ``capture_rate.png`` and
``capture_errors.png`` (:mod:`.capture_report`).
"""
from __future__ import annotations

import datetime
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import numpy as np

from ..cases import KINDS as CASE_KINDS
from ..errors import InputError
from .records import CRASHED, call_runner, load_average, open_runners, report_files, warm_up_runners

BINS = ((0.0, 25.0), (25.0, 50.0), (50.0, 75.0), (75.0, 100.0))
MAX_ERROR_MM = BINS[-1][1]
#: A run converged when its TRE is below ``CONVERGED_MM``; "precise" below ``PRECISE_MM``.
CONVERGED_MM, PRECISE_MM = 15.0, 5.0
#: Rotation (degrees) per mm of perturbation size, times a uniform draw in [0, 1].
ROTATION_PER_MM = 0.3
#: Share of the fixed content that must stay inside the moving volume at the start.
MIN_OVERLAP = 0.3
#: Kinds of synthetic cases (each cycles through the templates of disa.train.synth.TEMPLATES).
KINDS = tuple(CASE_KINDS)
#: Synthetic case seeds start here (training draws its seeds at random, held-out pairs from 990001).
SEED_BASE = 880000


@dataclass
class CaptureCase:
    """A registration case at its truth: ``moving_points`` are the moving-space images of
    ``fixed_points`` (for Case 24: its expert landmarks; their error at the identity is
    ``floor``)."""

    name: str
    kind: str
    fixed: object
    moving: object
    fixed_points: np.ndarray
    moving_points: np.ndarray

    @property
    def floor(self) -> float:
        return float(np.linalg.norm(self.fixed_points - self.moving_points, axis=1).mean())


def synthetic_cases(n: int, kinds: Sequence[str], seed: int, data_dir: str,
                    progress: Callable[[str], None] = lambda m: None) -> List[CaptureCase]:
    """``n`` unperturbed synthetic cases, kinds in turn, templates in turn within a kind."""
    from ..cases.synthetic import build_case
    from ..train.synth import TEMPLATES

    out = []
    for i in range(int(n)):
        kind = kinds[i % len(kinds)]
        template = TEMPLATES[(i // len(kinds)) % len(TEMPLATES)]
        case_seed = SEED_BASE + 1000 * int(seed) + i
        progress(f"rendering synthetic case {i + 1}/{n}: {kind} from {template} (seed {case_seed}) ...")
        c = build_case(kind, template, case_seed, rotation=0.0, translation=0.0, data_dir=data_dir)
        out.append(CaptureCase(c.name, kind, c.fixed, c.moving, c.fixed_points, c.moving_points))
    return out


def case24_case(folder=None) -> CaptureCase:
    """RESECT Case 24: ultrasound (fixed), T1 MR (moving), the 16 tag landmarks."""
    from ..evaluate import read_landmarks
    from ..sample_data import case24
    from ..spatial import load_image

    c = case24(folder)
    return CaptureCase("case24", "case24", load_image(c.fixed, "fixed image"), load_image(c.moving, "moving image"),
                       read_landmarks(c.fixed_landmarks).points, read_landmarks(c.moving_landmarks).points)


def initial_error(case: CaptureCase, move: np.ndarray) -> float:
    """Mean landmark error at the identity after the moving image is moved by ``move``."""
    moved = case.moving_points @ move[:3, :3].T + move[:3, 3]
    return float(np.linalg.norm(case.fixed_points - moved, axis=1).mean())


def content_points(case: CaptureCase, n: int = 4000) -> np.ndarray:
    """Up to ``n`` LPS points of the fixed content (the automatic foreground mask)."""
    from ..spatial import foreground_mask

    mask = foreground_mask(case.fixed, "auto")
    vox = np.argwhere(np.ones(case.fixed.shape, bool) if mask is None else mask[0].numpy())[:, ::-1]
    vox = vox[:: max(1, len(vox) // n)].astype(np.float64)
    m = case.fixed.index_to_world()
    return vox @ m[:3, :3].T + m[:3, 3]


def overlap(case: CaptureCase, move: np.ndarray, points: np.ndarray) -> float:
    """Share of the fixed content ``points`` inside the moving volume moved by ``move``."""
    to_index = case.moving.world_to_index() @ np.linalg.inv(move)
    idx = points @ to_index[:3, :3].T + to_index[:3, 3]
    size = np.asarray(case.moving.size, dtype=np.float64)
    return float(np.all((idx >= -0.5) & (idx <= size - 0.5), axis=1).mean())


def perturbation(case: CaptureCase, target: float, rng: np.random.Generator, points: np.ndarray,
                 tries: int = 60) -> Optional[dict]:
    """A rigid move of the moving image whose initial error is ``target`` mm (within 0.05 mm),
    keeping ``MIN_OVERLAP``; None when ``tries`` random directions all fail."""
    from ..sample_data import rigid_matrix

    center = case.fixed.center()
    if target <= case.floor + 0.05:
        return {"matrix": np.eye(4), "rotation_vector_deg": [0.0] * 3, "translation_mm": [0.0] * 3,
                "initial_error": case.floor, "overlap": overlap(case, np.eye(4), points)}
    for _ in range(int(tries)):
        axis, direction = rng.standard_normal(3), rng.standard_normal(3)
        rot = axis / np.linalg.norm(axis) * ROTATION_PER_MM * rng.uniform()
        shift = direction / np.linalg.norm(direction)

        def move(s):
            return rigid_matrix(rot * s, shift * s, center)

        lo, hi = 0.0, max(target, 1.0)
        while initial_error(case, move(hi)) < target and hi < 1e4:
            hi *= 2.0
        for _ in range(60):  # bisection on the size of the move
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if initial_error(case, move(mid)) < target else (lo, mid)
        m = move(hi)
        err, ov = initial_error(case, m), overlap(case, m, points)
        if abs(err - target) < 0.05 and ov >= MIN_OVERLAP:
            return {"matrix": m, "rotation_vector_deg": (rot * hi).tolist(), "translation_mm": (shift * hi).tolist(),
                    "initial_error": err, "overlap": ov}
    return None


def target_errors(runs: int, rng: np.random.Generator) -> np.ndarray:
    """``runs`` initial errors uniform in [0, MAX_ERROR_MM): one in each equal slice."""
    return (np.arange(int(runs)) + rng.uniform(0.0, 1.0, int(runs))) * MAX_ERROR_MM / int(runs)


def bin_index(error: float) -> Optional[int]:
    for i, (lo, hi) in enumerate(BINS):
        if lo <= error < hi:
            return i
    return None


def summarize(runs: List[dict]) -> dict:
    """Per bin: runs, share converged (< 15 mm) and precise (< 5 mm); overall: the same, mean
    seconds and evaluations, median final error. Failed runs (TRE NaN) count as not converged;
    a value without runs is None."""
    def shares(rs):
        tre = np.array([r["tre"] for r in rs], dtype=np.float64)
        ok = np.where(np.isfinite(tre), tre, np.inf)
        n = len(rs)
        return {"runs": n, "converged": float((ok < CONVERGED_MM).mean()) if n else None,
                "precise": float((ok < PRECISE_MM).mean()) if n else None}

    bins = []
    for i, (lo, hi) in enumerate(BINS):
        bins.append({"bin_mm": [lo, hi], **shares([r for r in runs if bin_index(r["initial_error"]) == i])})
    secs = np.array([r["seconds"] for r in runs if np.isfinite(r.get("seconds", math.nan))], dtype=np.float64)
    evals = np.array([r["evaluations"] for r in runs if r.get("evaluations") is not None], dtype=np.float64)
    tre = np.array([r["tre"] for r in runs], dtype=np.float64)
    return {"bins": bins, "all": shares(runs), "failed": int((~np.isfinite(tre)).sum()),
            "mean_seconds": float(secs.mean()) if secs.size else None,
            "mean_evaluations": float(evals.mean()) if evals.size else None,
            "median_tre": float(np.median(np.where(np.isfinite(tre), tre, np.inf))) if tre.size else None}


def run_capture(cases: int = 6, runs: int = 8, methods: Optional[Sequence[str]] = None,
                output_dir="bench-capture", seed: int = 0, kinds: Sequence[str] = KINDS, case24: bool = True,
                data_dir: Optional[str] = None, device: str = "auto", threads: Optional[int] = None,
                image_spacing: Optional[float] = None, errors_mm: Optional[Sequence[float]] = None,
                log=None, print_fn: Callable[[str], None] = print) -> dict:
    """Run the benchmark and write its files; returns the JSON document.

    ``cases`` synthetic cases (``kinds`` in turn; none when 0) and Case 24 (``case24``), each
    with ``runs`` perturbations (``errors_mm``: explicit initial errors instead of the draw).
    ``image_spacing`` (mm): quick runs: every method gets both images reduced to it, and the
    engine registers on that one level. Progress lines go to ``log`` (default stderr).
    """
    from ..cases.synthetic import find_data_dir
    from ..evaluate import registration_errors
    from ..registration.options import MAX_SEED, check_int
    from ..registration.pipeline import resolve_device
    from ..sample_data import move_image
    from ..spatial import foreground_mask, resample_to_spacing
    from . import capture_report
    from .capture_methods import MethodRunner, check_methods

    log = sys.stderr if log is None else log
    chosen = check_methods(methods)
    cases, runs = check_int("--cases", cases, 0, 10000), check_int("--runs", runs, 1, 10000)
    seed = check_int("the seed", seed, 0, MAX_SEED)
    if threads is not None:
        threads = check_int("--threads", threads, 1, 4096)
    kinds = list(kinds)
    bad = [k for k in kinds if k not in CASE_KINDS]
    if bad or not kinds:
        raise InputError(f"unknown case kind(s) {', '.join(map(repr, bad))}; choose from {', '.join(CASE_KINDS)}")
    if cases == 0 and not case24:
        raise InputError("no cases: give --cases N > 0 or keep Case 24")
    if image_spacing is not None and not 0.1 <= float(image_spacing) <= 20.0:
        raise InputError(f"the image spacing must lie in [0.1, 20] mm, got {image_spacing!r}")
    resolve_device(device)
    outputs = report_files(output_dir, capture_report.FILES)  # checked before hours of runs
    data_dir = find_data_dir(data_dir) if cases else None
    spacings = None if image_spacing is None else [float(image_spacing)]

    def progress(msg: str):
        log.write(msg + "\n")
        log.flush()

    started = time.perf_counter()
    load_before = load_average()
    all_cases = synthetic_cases(cases, kinds, seed, data_dir, progress) if cases else []
    if case24:
        all_cases.append(case24_case())

    # the perturbed starts, drawn before any registration
    plan, skipped = [], []
    for ci, case in enumerate(all_cases):
        rng = np.random.default_rng([seed, ci])
        targets = np.asarray(errors_mm, dtype=np.float64) if errors_mm is not None else target_errors(runs, rng)
        points = content_points(case)
        for k, target in enumerate(targets):
            p = perturbation(case, float(target), rng, points)
            if p is None:
                skipped.append({"case": case.name, "target_error": float(target),
                                "why": f"no perturbation keeps {100 * MIN_OVERLAP:.0f}% of the fixed content "
                                       "inside the moving volume"})
                continue
            plan.append({"case": ci, "run": k + 1, "target_error": float(target), **p})
    if not plan:
        raise InputError("no perturbation fits the cases' fields of view")
    progress(f"{len(all_cases)} cases, {len(plan)} perturbed starts ({len(skipped)} skipped), "
             f"methods: {', '.join(chosen)}")

    prepared = []
    for case in all_cases:
        f, m = case.fixed, case.moving
        if image_spacing is not None:
            f, m = resample_to_spacing(f, image_spacing), resample_to_spacing(m, image_spacing)
            f.mask = m.mask = None
        mask = foreground_mask(f, "auto")
        prepared.append((f, m, None if mask is None else mask[0].cpu().numpy()))

    results, runners = {}, {}
    try:
        open_runners(chosen, lambda method: MethodRunner(method, device, threads, spacings, seed), progress,
                     results, runners, not_run="skipped")
        f, m, mask = prepared[plan[0]["case"]]
        first = move_image(m, plan[0]["matrix"])
        warm_up_runners(runners, results, lambda runner: runner.warm_up(f, first, mask), progress)  # first start
        for i, p in enumerate(plan):
            case = all_cases[p["case"]]
            f, m, mask = prepared[p["case"]]
            moved = move_image(m, p["matrix"])
            moving_points = case.moving_points @ p["matrix"][:3, :3].T + p["matrix"][:3, 3]
            for method, runner in list(runners.items()):
                record = {"case": case.name, "kind": case.kind, "run": p["run"], "initial_error": p["initial_error"]}

                def timed_run():
                    out = runner(f, moved, mask)
                    tre = float(registration_errors(out["matrix"], case.fixed_points, moving_points).mean())
                    record.update(tre=tre, seconds=float(out["seconds"]), evaluations=out["evaluations"],
                                  matrix=np.asarray(out["matrix"]).tolist(), info=out["info"])
                    progress(f"[{method}] {i + 1}/{len(plan)} {case.name} run {p['run']}: initial "
                             f"{p['initial_error']:.1f} mm -> TRE {tre:.2f} mm, {out['seconds']:.1f} s")

                error = call_runner(method, runners, results, progress, timed_run)
                if error is CRASHED:
                    continue
                if error is not None:
                    record.update(tre=math.nan, seconds=math.nan, evaluations=None, error=error)
                    progress(f"[{method}] {i + 1}/{len(plan)} {case.name} run {p['run']}: FAILED ({error})")
                results[method]["runs"].append(record)
    finally:
        for runner in runners.values():
            runner.close()
    for entry in results.values():
        if entry["runs"]:
            entry["summary"] = summarize(entry["runs"])

    doc = {
        "benchmark": "disa benchmark capture: capture range (DISA paper, Table 3 and Fig. 2)",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "settings": {"cases": cases, "runs": runs, "kinds": kinds, "case24": bool(case24), "seed": seed,
                     "methods": chosen, "device": str(resolve_device(device)), "threads": threads,
                     "image_spacing_mm": image_spacing, "errors_mm": None if errors_mm is None else list(errors_mm),
                     "bins_mm": [list(b) for b in BINS], "converged_mm": CONVERGED_MM, "precise_mm": PRECISE_MM,
                     "rotation_per_mm_deg": ROTATION_PER_MM, "min_overlap": MIN_OVERLAP},
        "cases": [{"name": c.name, "kind": c.kind, "landmarks": len(c.fixed_points), "floor_mm": c.floor,
                   "fixed_size": list(c.fixed.size), "moving_size": list(c.moving.size)} for c in all_cases],
        "perturbations": [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in p.items()} for p in plan],
        "skipped": skipped,
        "environment": {"cpu_count": os.cpu_count(), "load_average_before": load_before, "load_average_after": load_average(),
                        "total_seconds": time.perf_counter() - started, "platform": platform.platform()},
        "methods": results,
    }
    report = capture_report.write_report(doc, outputs)
    print_fn(report["markdown"])
    print_fn("\nwrote " + ", ".join(report["files"]))
    return doc



__all__ = ["BINS", "CONVERGED_MM", "PRECISE_MM", "KINDS", "CaptureCase", "synthetic_cases", "case24_case",
           "perturbation", "target_errors", "initial_error", "overlap", "summarize", "run_capture", "bin_index"]
