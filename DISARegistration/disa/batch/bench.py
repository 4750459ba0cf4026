"""How much a worker pool gains: one synthetic cohort registered with ``workers`` processes
(``cores // workers`` threads each) and with one process using every core, one case after
another; writes the wall times and their ratio as JSON and Markdown.

    from disa.batch.bench import measure_speedup
    measure_speedup("bench-results")          # 6 cases, 2 workers vs 1; batch_speedup.json/.md

Not a test: the ratio depends on the machine and its load (on 2 cores shared with other jobs it
can stay near 1). The cases are textured volumes moved by known rigid poses, so the summary's
landmark errors also show that both runs register them.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np

from ..bench.records import load_average

#: Issue #13's target: the pool's wall time over the one-after-another time.
TARGET_RATIO = 0.6
#: Registration settings of the benchmark (cheap enough for a laptop, long enough to measure).
SETTINGS = {"metric": "mind", "search": "local", "spacings": [4.0, 2.0], "max_evals": 40}


def textured_volume(size: int, spacing: float, seed: int):
    """A size^3 volume of smooth random blobs centred at the origin (an Image)."""
    from scipy import ndimage

    from ..spatial import Image

    rng = np.random.default_rng(seed)
    data = ndimage.gaussian_filter(rng.standard_normal((size,) * 3), 2.0)
    grid = np.stack(np.meshgrid(*(np.arange(size),) * 3, indexing="ij"))
    for _ in range(10):
        centre = rng.uniform(0.2 * size, 0.8 * size, 3)[:, None, None, None]
        width = rng.uniform(0.05, 0.15) * size
        data += rng.uniform(0.5, 2.0) * np.exp(-((grid - centre) ** 2).sum(0) / (2 * width ** 2))
    origin = -np.full(3, spacing * (size - 1) / 2.0)
    return Image.from_array(data.astype(np.float32), spacing=(spacing,) * 3, origin=origin)


def write_cohort(folder: str, cases: int, size: int, spacing: float, seed: int) -> list:
    """``cases`` synthetic cases (volumes and landmarks) in ``folder``; their manifest rows."""
    from ..evaluate import Landmarks, write_csv
    from ..sample_data import move_image, random_rigid
    from ..spatial import save_image

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(cases):
        name = f"case{i + 1:02d}"
        os.makedirs(os.path.join(folder, name), exist_ok=True)
        fixed = textured_volume(size, spacing, seed + i)
        truth = random_rigid(rng, 5.0, 5.0, fixed.center())
        save_image(fixed, os.path.join(folder, name, "fixed.nii.gz"))
        save_image(move_image(fixed, truth), os.path.join(folder, name, "moving.nii.gz"))
        points = rng.uniform(-0.3, 0.3, (10, 3)) * size * spacing
        write_csv(os.path.join(folder, name, "fixed.csv"), Landmarks(points))
        write_csv(os.path.join(folder, name, "moving.csv"), Landmarks(points @ truth[:3, :3].T + truth[:3, 3]))
        rows.append({"case": name, "fixed": f"{name}/fixed.nii.gz", "moving": f"{name}/moving.nii.gz",
                     "fixed_landmarks": f"{name}/fixed.csv", "moving_landmarks": f"{name}/moving.csv"})
    return rows


def _run(rows, folder, out, workers, settings, quiet):
    from .cohort import register_cohort

    start = time.perf_counter()
    summary = register_cohort(rows, out, workers=workers, base_dir=folder, quiet=quiet, **settings)
    seconds = time.perf_counter() - start
    done = [r for r in summary.rows if r["status"] == "done"]
    return {"workers": summary.workers, "threads": summary.threads, "seconds": round(seconds, 2),
            "cases_done": len(done), "failed": [r["error"] for r in summary.failed],
            "mean_case_seconds": round(float(np.mean([r["seconds"] for r in done])), 2) if done else None,
            "max_tre_after_mm": max((r["tre_after_max"] for r in done), default=None)}


def measure_speedup(output_dir: str = "bench-results", cases: int = 6, workers: int = 2, size: int = 48,
                    spacing: float = 2.0, seed: int = 0, quiet: bool = False, **settings) -> dict:
    """Wall time of the cohort with ``workers`` processes vs one; writes
    ``output_dir/batch_speedup.json`` and ``.md`` and returns the record. ``settings``: register
    options replacing ``SETTINGS`` (no ``threads``: each run gets cores // its workers)."""
    from ..threads import machine_threads

    options = {**SETTINGS, **settings}
    root = os.path.abspath(os.path.join(output_dir, "batch_speedup"))
    inputs = os.path.join(root, "inputs")
    rows = write_cohort(inputs, cases, size, spacing, seed)
    sequential = _run(rows, inputs, os.path.join(root, "one_worker"), 1, options, quiet)
    parallel = _run(rows, inputs, os.path.join(root, f"{workers}_workers"), workers, options, quiet)
    record = {"cases": cases, "size": size, "spacing_mm": spacing, "cores": machine_threads(),
              "settings": {k: v for k, v in options.items()}, "one_after_another": sequential,
              "pool": parallel, "speedup": round(sequential["seconds"] / parallel["seconds"], 3),
              "load_average": load_average()}
    ratio = parallel["seconds"] / sequential["seconds"]
    # the ratio without start-up and summary costs, with even loads: what the per-case times allow
    per_case = (parallel["mean_case_seconds"], sequential["mean_case_seconds"])
    record["case_time_ratio"] = (round(per_case[0] / (workers * per_case[1]), 3) if all(per_case) else None)
    record["target"] = {"pool_over_sequential": round(ratio, 3), "at_most": TARGET_RATIO,
                        "verdict": "PASS" if ratio <= TARGET_RATIO else "FAIL"}
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "batch_speedup.json"), "w") as fh:
        json.dump(record, fh, indent=2)
    lines = ["# disa batch: worker pool vs one case after another", "",
             (f"{cases} synthetic cases ({size}^3 voxels at {spacing:g} mm), {record['cores']} cores, "
             f"settings {options}."), "",
             "| run | workers | threads each | wall s | mean s per case | max TRE after (mm) |",
             "|---|---|---|---|---|---|"]
    for name, run in (("one after another", sequential), ("pool", parallel)):
        tre = "" if run["max_tre_after_mm"] is None else f"{run['max_tre_after_mm']:.2f}"
        lines.append(f"| {name} | {run['workers']} | {run['threads']} | {run['seconds']:.1f} | "
                     f"{run['mean_case_seconds']} | {tre} |")
    lines += ["", f"Speed-up (one after another / pool): **{record['speedup']:.2f}x**; target (issue #13): the "
              f"pool takes at most {TARGET_RATIO:g}x the time of one after another: {ratio:.2f}x, "
              f"**{record['target']['verdict']}**. Load average at the start: {record['load_average']}.", ""]
    if record["case_time_ratio"] is not None:
        lines[-1:-1] = [f"From the mean seconds per case alone (no process start or summary, even loads) the "
                        f"ratio would be {record['case_time_ratio']:.2f}: a case with {parallel['threads']} "
                        f"thread(s) takes {per_case[0] / per_case[1]:.2f}x its time with {sequential['threads']}.", ""]
    with open(os.path.join(output_dir, "batch_speedup.md"), "w") as fh:
        fh.write("\n".join(lines))
    return record
