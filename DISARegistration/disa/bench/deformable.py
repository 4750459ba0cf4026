"""``disa benchmark deformable``: dense registration against elastix B-spline, ANTs SyN and
ConvexAdam on synthetic pairs with known deformations and label maps (issue #12).

Cases: synthetic T2-T1 (``t2-t1``) and CT-T1 (``ct-mr``) pairs of :mod:`disa.cases.synthetic`,
the templates with label maps in turn (MNI, then the VoxelMorph atlas), each with a rigid
perturbation of ``ROTATION_DEG`` degrees and ``TRANSLATION_MM`` mm and a smooth deformation of at
most ``--deform`` mm. Rendered cases are written (``disa.cases.synthetic.write_case``) into
``<output-dir>/cases/`` and reused by later runs with the same settings; ``case_dirs`` runs
folders of the same layout instead (``disa synth --deform`` writes them).

Every method maps fixed LPS points to moving LPS points (a SimpleITK transform) and is measured
the same way: TRE over the case's landmarks (:func:`disa.evaluate.registration_errors`), Dice
per label and HD95 of the moving label map resampled on the fixed one through the transform
(nearest neighbour, :func:`disa.evaluate.warp_labels` and ``label_statistics``), and folding
(voxels with det J <= 0 of the whole mapping sampled on the fixed grid,
:func:`disa.deformable.jacobian_statistics`). Methods run case by case, all methods on a case
before the next case, so a change in the machine's load affects all alike. Writes
``deformable.json``, ``deformable.md`` and ``deformable.png`` (:mod:`.deformable_report`).
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from ..errors import CancelledError, InputError
from .records import load_average, open_runners, report_files

#: Case kinds of the issue: T2-T1 and CT-T1.
KINDS = ("t2-t1", "ct-mr")
#: Templates with label maps, in turn within a kind.
TEMPLATES = ("mni", "vxm")
#: Rigid perturbation of every case (degrees about a random axis, mm along a random direction).
ROTATION_DEG, TRANSLATION_MM = 5.0, 5.0
DEFORM_MM = 6.0
#: Synthetic case seeds start here (capture: 880000, held-out pairs: 990001).
SEED_BASE = 770000
CASE_FILES = ("fixed", "moving", "fixed_labels", "moving_labels", "fixed_landmarks", "moving_landmarks")


@dataclass
class DeformableCase:
    """A case on disk (``files`` by role, as ``write_case`` names them) and loaded."""

    name: str
    kind: str
    files: Dict[str, str]
    fixed: object
    moving: object
    fixed_points: np.ndarray
    moving_points: np.ndarray


def load_case(folder, name: Optional[str] = None, kind: Optional[str] = None) -> DeformableCase:
    """A case folder in the layout of ``disa synth`` (fixed/moving images and label maps,
    fixed/moving landmarks; ``truth_deformed.h5`` optional)."""
    from ..cases.synthetic import FILES
    from ..evaluate import read_landmarks
    from ..spatial import load_image

    folder = os.fspath(folder)
    files = {role: os.path.join(folder, FILES[role]) for role in CASE_FILES + ("truth_deformed", "case")}
    missing = [FILES[r] for r in CASE_FILES if not os.path.isfile(files[r])]
    if missing:
        raise InputError(f"case folder {folder} lacks {', '.join(missing)}")
    files = {r: p for r, p in files.items() if os.path.isfile(p)}
    if kind is None and "case" in files:
        with open(files["case"], encoding="utf-8") as fh:
            kind = json.load(fh).get("kind")
    f, m = read_landmarks(files["fixed_landmarks"]).points, read_landmarks(files["moving_landmarks"]).points
    if len(f) != len(m) or not len(f):
        raise InputError(f"case folder {folder}: the fixed and moving landmarks must pair up")
    return DeformableCase(name or os.path.basename(folder.rstrip(os.sep)), kind or "unknown", files,
                          load_image(files["fixed"], "fixed image"), load_image(files["moving"], "moving image"),
                          f, m)


def case_plan(n: int, kinds: Sequence[str], seed: int, deform: float) -> List[dict]:
    """The synthetic cases: ``n`` per kind, templates in turn."""
    out = []
    for kind in kinds:
        for i in range(int(n)):
            template = TEMPLATES[i % len(TEMPLATES)]
            case_seed = SEED_BASE + 1000 * int(seed) + i
            out.append({"kind": kind, "template": template, "seed": case_seed,
                        "folder": f"{kind}-{template}-{case_seed}-rot{ROTATION_DEG:g}-shift{TRANSLATION_MM:g}"
                                  f"-deform{deform:g}"})
    return out


def synthetic_cases(n: int, kinds: Sequence[str], seed: int, deform: float, data_dir: Optional[str], cache_dir: str,
                    progress: Callable[[str], None] = lambda m: None) -> List[DeformableCase]:
    """The rendered cases, from ``cache_dir`` where a run wrote them before."""
    from ..cases.synthetic import build_case, find_data_dir, write_case

    out = []
    for k, p in enumerate(case_plan(n, kinds, seed, deform)):
        folder = os.path.join(cache_dir, p["folder"])
        name = f"{p['kind']}-{p['template']}-{p['seed']}"
        if not os.path.isfile(os.path.join(folder, "case.json")):
            data_dir = find_data_dir(data_dir)
            progress(f"rendering case {k + 1}: {p['kind']} from {p['template']} (seed {p['seed']}, "
                     f"deformation up to {deform:g} mm) ...")
            c = build_case(p["kind"], p["template"], p["seed"], rotation=ROTATION_DEG, translation=TRANSLATION_MM,
                           deform=deform, data_dir=data_dir)
            if c.fixed_labels is None:
                raise InputError(f"template {p['template']} has no label map")
            write_case(c, folder, overwrite=True, command="disa benchmark deformable")
        else:
            progress(f"case {k + 1}: {name} from {folder}")
        out.append(load_case(folder, name, p["kind"]))
    return out


def evaluate(case: DeformableCase, tx) -> dict:
    """TRE, Dice, HD95 and folding of the fixed -> moving SimpleITK transform ``tx`` on ``case``."""
    import SimpleITK as sitk

    from ..deformable import jacobian_statistics
    from ..evaluate import (
        error_statistics,
        label_statistics,
        registration_errors,
        warp_labels,
    )
    from ..spatial import Image
    from .deformable_methods import field_on_grid

    def mapped(points):
        return np.array([tx.TransformPoint([float(v) for v in p]) for p in points], dtype=np.float64)

    tre = error_statistics(registration_errors(mapped, case.fixed_points, case.moving_points))
    fixed, warped, spacing = warp_labels(case.files["moving_labels"], case.files["fixed_labels"], tx)
    labels = label_statistics(fixed, warped, spacing)
    ref = sitk.ReadImage(case.files["fixed_labels"])
    disp = field_on_grid(tx, ref)
    field = Image.from_array(np.moveaxis(disp, -1, 0), ref.GetSpacing(), ref.GetOrigin(),
                             np.array(ref.GetDirection()).reshape(3, 3))
    jac = jacobian_statistics(field)
    return {"tre_mean": tre["mean"], "tre_median": tre["median"], "tre_max": tre["max"],
            "dice_mean": labels["dice_mean"], "dice_p25": labels["dice_p25"], "dice_p50": labels["dice_p50"],
            "dice_p75": labels["dice_p75"], "hd95_mean": labels["hd95_mean"],
            "dice_per_label": {int(k): float(v["dice"]) for k, v in labels["labels"].items()},
            "folding_voxels": jac["nonpositive"], "folding_percent": jac["percent_nonpositive"],
            "jacobian_min": jac["min"], "std_log_jacobian": jac["std_log_jacobian"]}


def run_deformable(cases: int = 2, kinds: Sequence[str] = KINDS, deform: float = DEFORM_MM,
                   methods: Optional[Sequence[str]] = None, seed: int = 0, data_dir: Optional[str] = None,
                   threads: Optional[int] = None, output_dir="bench-results/deformable",
                   case_dirs: Optional[Sequence[str]] = None, dense: Optional[dict] = None,
                   spacings: Optional[Sequence[float]] = None, log=None,
                   print_fn: Callable[[str], None] = print) -> dict:
    """Run the benchmark and write its files; returns the JSON document.

    ``cases`` synthetic cases per kind (``kinds``) with deformations up to ``deform`` mm, or the
    case folders ``case_dirs`` instead. ``dense``: settings of the engine's dense modes
    (``register_deformable``'s, e.g. ``{"spacing": 3.0, "iterations": 20}``); ``spacings``: the
    linear stage's levels. ``threads``: every method's CPU threads (default: the engine's,
    ``$DISA_THREADS`` else every CPU). Progress lines go to ``log`` (default stderr).
    """
    from ..cases import KINDS as CASE_KINDS
    from ..cases.synthetic import MAX_DEFORM_MM
    from ..registration.options import MAX_SEED, check_int
    from ..threads import machine_threads
    from . import deformable_report
    from .deformable_methods import MethodRunner, check_methods

    log = sys.stderr if log is None else log
    chosen = check_methods(methods)
    seed = check_int("the seed", seed, 0, MAX_SEED)
    threads = machine_threads() if threads is None else check_int("--threads", threads, 1, 4096)
    kinds = list(kinds)
    if not case_dirs:
        cases = check_int("--cases", cases, 1, 1000)
        bad = [k for k in kinds if k not in CASE_KINDS]
        if bad or not kinds:
            raise InputError(f"unknown case kind(s) {', '.join(map(repr, bad))}; choose from {', '.join(KINDS)}")
        if not (isinstance(deform, (int, float)) and 0.0 < float(deform) <= MAX_DEFORM_MM):
            raise InputError(f"--deform must lie in (0, {MAX_DEFORM_MM:g}] mm, got {deform!r}")
    outputs = report_files(output_dir, deformable_report.FILES)  # checked before the runs

    def progress(msg: str):
        log.write(msg + "\n")
        log.flush()

    started = time.perf_counter()
    load_before = load_average()
    if case_dirs:
        all_cases = [load_case(d) for d in case_dirs]
    else:
        all_cases = synthetic_cases(cases, kinds, seed, float(deform), data_dir,
                                    os.path.join(os.fspath(output_dir), "cases"), progress)
    progress(f"{len(all_cases)} cases, methods: {', '.join(chosen)}, {threads} threads")

    results, runners = {}, {}
    try:
        open_runners(chosen, lambda method: MethodRunner(method, threads, seed, dense, spacings), progress,
                     results, runners)
        if any(m in runners for m in ("rigid", "deformable", "diffeomorphic", "neural-ode")):
            MethodRunner("rigid", threads).warm_up(all_cases[0])
        for i, case in enumerate(all_cases):
            for method, runner in runners.items():
                record = {"case": case.name, "kind": case.kind}
                try:
                    out = runner(case)
                    record.update(seconds=out.seconds, info=out.info, **evaluate(case, out.transform))
                    secs = "" if out.seconds is None else f", {out.seconds:.1f} s"
                    progress(f"[{method}] {i + 1}/{len(all_cases)} {case.name}: Dice {record['dice_mean']:.3f}, "
                             f"TRE {record['tre_mean']:.2f} mm, folding {record['folding_percent']:.3f}%{secs}")
                except (KeyboardInterrupt, CancelledError):
                    raise
                except Exception as exc:  # noqa: BLE001  (one failed run is a row of the report, not the end of the run)
                    record.update(seconds=None, error=f"{type(exc).__name__}: {exc}")
                    progress(f"[{method}] {i + 1}/{len(all_cases)} {case.name}: FAILED ({record['error']})")
                results[method]["runs"].append(record)
    finally:
        for runner in runners.values():
            runner.close()

    doc = {
        "benchmark": "disa benchmark deformable: dense registration against elastix B-spline, ANTs SyN and "
                     "ConvexAdam (issue #12)",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "settings": {"cases_per_kind": None if case_dirs else cases, "kinds": None if case_dirs else kinds,
                     "deform_mm": None if case_dirs else float(deform), "rotation_deg": ROTATION_DEG,
                     "translation_mm": TRANSLATION_MM, "seed": seed, "methods": chosen, "threads": threads,
                     "dense": dict(dense or {}), "linear_spacings": None if spacings is None else list(spacings),
                     "case_dirs": None if not case_dirs else [os.fspath(d) for d in case_dirs]},
        "cases": [{"name": c.name, "kind": c.kind, "landmarks": len(c.fixed_points), "fixed_size": list(c.fixed.size),
                   "fixed_spacing": [float(v) for v in c.fixed.spacing], "folder": os.path.dirname(c.files["fixed"])}
                  for c in all_cases],
        "environment": {"cpu_count": os.cpu_count(), "load_average_before": load_before,
                        "load_average_after": load_average(), "total_seconds": time.perf_counter() - started,
                        "platform": platform.platform()},
        "methods": results,
    }
    report = deformable_report.write_report(doc, outputs)
    print_fn(report["markdown"])
    print_fn("\nwrote " + ", ".join(report["files"]))
    return doc


__all__ = [
    "DEFORM_MM",
    "KINDS",
    "ROTATION_DEG",
    "TEMPLATES",
    "TRANSLATION_MM",
    "DeformableCase",
    "case_plan",
    "evaluate",
    "load_case",
    "run_deformable",
    "synthetic_cases",
]
