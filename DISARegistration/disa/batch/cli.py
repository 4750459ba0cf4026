"""``disa batch``: register every case of a manifest. Options are declared with argparse only, so
the top-level command line lists them without importing torch."""
from __future__ import annotations

import argparse

from ..cli import COUNT, add_registration_options


def add_batch_parser(sub) -> argparse.ArgumentParser:
    """Declare ``disa batch`` on the top-level subparsers ``sub``."""
    p = sub.add_parser(
        "batch", help="register a whole cohort from a manifest (locally or on a Dask cluster), resumable",
        description="Registers every case of MANIFEST (CSV, one row per case; columns: case, fixed, moving, "
                    "and optionally initial_transform, fixed_landmarks, moving_landmarks, fixed_labels, "
                    "moving_labels, options; paths relative to the manifest's folder; options: per-case "
                    "registration options such as \"--metric ncc --transform affine\", over the ones given "
                    "here). Writes OUTPUT_DIR/<case>/ (transform.h5, moving_resampled.nii.gz, result.json, "
                    "evaluation.json, done.json) and OUTPUT_DIR/summary.csv, summary.md and errors.png. A re-run "
                    "skips the finished cases whose inputs and options did not change; a failing case is "
                    "recorded in the summary and the others go on (exit code 1 if any failed).")
    p.add_argument("manifest", metavar="MANIFEST", help="the cohort's CSV manifest")
    p.add_argument("--output-dir", required=True, metavar="DIR", help="folder of the case folders and summary")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run on this Dask cluster (e.g. tcp://head:8786; needs dask[distributed]) instead of a "
                        "local process pool; inputs and DIR must be on a file system the workers share; each "
                        "case uses --threads threads (default 1)")
    p.add_argument("--workers", type=COUNT, default=None, metavar="N",
                   help="local cases at once (default: what the cores and the memory allow); each gets "
                        "cores // N threads unless --threads is given")
    add_registration_options(p)
    p.set_defaults(func=run_batch)
    return p


def run_batch(args) -> int:
    from ..cli import registration_kwargs
    from .cohort import register_cohort

    summary = register_cohort(args.manifest, args.output_dir, scheduler=args.scheduler, workers=args.workers,
                              quiet=args.quiet, **registration_kwargs(args))
    print(summary.line())
    for row in summary.failed:
        print(f"failed: {row['case']}: {row['error']}")
    for note in summary.notes:
        print(f"note: {note}")
    for path in summary.files.values():
        print(f"wrote {path}")
    return 1 if summary.failed else 0


def add_batch_bench_parser(suites) -> argparse.ArgumentParser:
    """Declare ``disa benchmark batch`` (the worker pool's speed-up) on the benchmark suites."""
    p = suites.add_parser(
        "batch", help="cohort speed-up: a synthetic cohort with a worker pool vs one case after another",
        description="Writes a synthetic cohort (textured volumes moved by known rigid poses, with landmarks), "
                    "registers it with one worker, then with --workers workers (cores // workers threads each), "
                    "and writes the wall times, their ratio and the issue's target (pool at most 0.6x) to "
                    "OUTPUT_DIR/batch_speedup.json and .md.")
    p.add_argument("--cases", type=COUNT, default=6, help="cases of the cohort (default 6)")
    p.add_argument("--workers", type=COUNT, default=2, help="workers of the pool (default 2)")
    p.add_argument("--size", type=COUNT, default=48, help="voxels along each axis of a case (default 48)")
    p.add_argument("--seed", type=int, default=0, help="seed of the cohort (default 0)")
    p.add_argument("--output-dir", default="bench-results", metavar="DIR", help="default bench-results")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run_batch_bench)
    return p


def run_batch_bench(args) -> int:
    from .bench import measure_speedup

    record = measure_speedup(args.output_dir, cases=args.cases, workers=args.workers, size=args.size,
                             seed=args.seed, quiet=args.quiet)
    print(f"one after another {record['one_after_another']['seconds']:.1f} s, {args.workers} workers "
          f"{record['pool']['seconds']:.1f} s: pool/sequential {record['target']['pool_over_sequential']:.2f} "
          f"(target <= {record['target']['at_most']:g}: {record['target']['verdict']})")
    return 0
