"""``disa benchmark capture``: declared with argparse only (the command line lists it without
importing torch); the run is :func:`disa.bench.capture.run_capture`."""
from __future__ import annotations

import argparse

from .capture_methods import METHODS


def add_capture_parser(suites) -> argparse.ArgumentParser:
    """Declare the ``capture`` suite on ``disa benchmark``'s suite subparsers ``suites``."""
    p = suites.add_parser(
        "capture", help="capture range: converged share per initial-error bin, against peers",
        description="The DISA paper's Table 3: synthetic US-MR, CT-MR and T2-T1 cases with exact truth and "
                    "Case 24, moved so that the initial landmark error falls uniformly in 0-100 mm, registered by "
                    "each method from the identity. Per method and bin (0-25/25-50/50-75/75-100 mm): share of "
                    "runs with TRE < 15 mm and < 5 mm; mean seconds and objective evaluations. Writes "
                    "capture.json, capture.md, capture_rate.png and capture_errors.png.")
    p.add_argument("--cases", type=int, default=6, metavar="N",
                   help="synthetic cases, the kinds in turn (default 6; 0: Case 24 only)")
    p.add_argument("--runs", type=int, default=8, metavar="R",
                   help="perturbed starts per case, one per equal slice of 0-100 mm (default 8)")
    p.add_argument("--methods", default=None,
                   help=f"comma-separated subset of: {', '.join(METHODS)} (default all; elastix and ants "
                        "only when itk-elastix / antspyx are installed)")
    p.add_argument("--kinds", default="us-mr,ct-mr,t2-t1", help="synthetic case kinds (default us-mr,ct-mr,t2-t1)")
    p.add_argument("--no-case24", action="store_true", help="leave RESECT Case 24 out")
    p.add_argument("--source-dir", default=None, metavar="DIR",
                   help="the data folder holding templates/ (default ../shared/data)")
    p.add_argument("--output-dir", default="bench-capture", metavar="DIR",
                   help="where to write the results (default bench-capture)")
    p.add_argument("--seed", type=int, default=0, help="seed of the cases and perturbations (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads of the engine's runs (default: $DISA_THREADS, else every CPU)")
    p.add_argument("--image-spacing", type=float, default=None, metavar="MM",
                   help="quick runs: every method gets both images reduced to MM, and the engine registers on "
                        "that one level (default: full resolution, the engine's own levels)")
    p.set_defaults(func=run_capture_from_args)
    return p


def _names(text):
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def run_capture_from_args(args) -> int:
    from .capture import run_capture

    run_capture(cases=args.cases, runs=args.runs, methods=_names(args.methods), output_dir=args.output_dir,
                seed=args.seed, kinds=_names(args.kinds), case24=not args.no_case24, data_dir=args.source_dir,
                device=args.device, threads=args.threads, image_spacing=args.image_spacing)
    return 0
