"""``disa benchmark deformable``: declared with argparse only (the command line lists it without
importing torch); the run is :func:`disa.bench.deformable.run_deformable`."""
from __future__ import annotations

import argparse

from .deformable_methods import METHODS

DEFAULT_OUTPUT = "bench-results/deformable"


def add_deformable_parser(suites) -> argparse.ArgumentParser:
    """Declare the ``deformable`` suite on ``disa benchmark``'s suite subparsers ``suites``."""
    p = suites.add_parser(
        "deformable", help="dense registration: Dice, TRE, HD95, folding and seconds against elastix B-spline, "
                           "ANTs SyN and ConvexAdam",
        description="Synthetic T2-T1 and CT-T1 pairs with known deformations and label maps, registered by the "
                    "engine's deformable, diffeomorphic and neural-ode modes (MIND-SSC) and, when installed, by "
                    "elastix B-spline (itk-elastix), ANTs SyN (antspyx) and ConvexAdam (convexadam), side by side "
                    "in one run; identity, the exact truth and the rigid result are reference rows. Per method: "
                    "TRE, Dice (mean, percentiles), HD95, folding and seconds. Writes deformable.json, "
                    "deformable.md and deformable.png; rendered cases are kept in OUTPUT_DIR/cases for later runs.")
    p.add_argument("--cases", type=int, default=2, metavar="N", help="synthetic cases per kind (default 2)")
    p.add_argument("--kinds", default="t2-t1,ct-mr", help="synthetic case kinds (default t2-t1,ct-mr)")
    p.add_argument("--deform", type=float, default=6.0, metavar="MM",
                   help="largest smooth displacement of the cases, mm (default 6)")
    p.add_argument("--methods", default=None,
                   help=f"comma-separated subset of: {', '.join(METHODS)} (default all; peers only when installed)")
    p.add_argument("--case-dir", action="append", default=None, metavar="DIR",
                   help="benchmark this case folder (disa synth --deform layout) instead of rendering; repeatable")
    p.add_argument("--seed", type=int, default=0, help="seed of the cases and the methods (default 0)")
    p.add_argument("--source-dir", default=None, metavar="DIR",
                   help="the data folder holding templates/ (default ../shared/data)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads of every method (default: $DISA_THREADS, else every CPU)")
    p.add_argument("--spacing", type=float, default=None, metavar="MM",
                   help="working spacing of the engine's dense stages (default: the engine's, about 1-2 mm)")
    p.add_argument("--iterations", type=int, default=None, metavar="N",
                   help="iterations of the engine's dense stages (default: each mode's own)")
    p.add_argument("--output-dir", default=DEFAULT_OUTPUT, metavar="DIR",
                   help=f"where to write the results and the case cache (default {DEFAULT_OUTPUT})")
    p.add_argument("--quiet", action="store_true", help="no progress lines, only the table")
    p.set_defaults(func=run_deformable_from_args)
    return p


def _names(text):
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def run_deformable_from_args(args) -> int:
    import io

    from .deformable import run_deformable

    dense = {k: v for k, v in (("spacing", args.spacing), ("iterations", args.iterations)) if v is not None}
    run_deformable(cases=args.cases, kinds=_names(args.kinds), deform=args.deform, methods=_names(args.methods),
                   seed=args.seed, data_dir=args.source_dir, threads=args.threads, output_dir=args.output_dir,
                   case_dirs=args.case_dir, dense=dense or None, log=io.StringIO() if args.quiet else None)
    return 0
