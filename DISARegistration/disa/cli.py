"""The ``disa`` command line: register, evaluate, demo, benchmark.

Every command is a thin layer over the engine's pipelines; errors a user can fix print one
clear line (exit code 2), a cancelled run (Ctrl-C) exits with 130 and writes nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import List, Optional

from .errors import CancelledError, DISAError, InputError, existing_file
from .deformable.defaults import DENSE_DEFAULTS, INTEGRATORS, STRIDES
from .deformable.defaults import LINEAR_TRANSFORMS as DENSE_LINEAR
from .deformable.settings import MIND_CHANNELS
from .registration.defaults import (DEFAULTS, DENSE_TRANSFORMS, FIXED_MASKS, PRECISIONS, SEARCH_PRESETS, SEARCHES,
                                   TRANSFORMS)
from .registration.options import (MAX_EVALS, MAX_ROTATION_DEG, MAX_SEARCH_SAMPLES, MAX_SEED, MAX_TRANSLATION_MM,
                                   check_int, check_range, check_spacings, positive)

METRICS_HELP = ("similarity: lc2 (exact LC2, BOBYQA), disa (learned DISA-LC2 descriptors; needs the "
                "trained weights in Resources/Models), mind (MIND-SSC, L-BFGS), mi (Parzen mutual "
                "information), ncc, lncc (local NCC), ngf (normalized gradient fields), mse, or a "
                "weighted sum such as 0.5*lc2+0.5*mind")


class TerminalProgress:
    """Progress on stderr: a bar and the stage's line (search stage or level, starts done out of
    all, best similarity so far), rewritten in place on a terminal; otherwise a line per second
    and at every new stage. A "note" stage is printed on a line of its own."""

    def __init__(self, stream=sys.stderr, quiet: bool = False):
        self.stream, self.quiet = stream, quiet
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.last = 0.0
        self.stage = None

    def __call__(self, stage: str, fraction: float, message: str):
        if self.quiet:
            return
        now = time.perf_counter()
        new_stage, self.stage = stage != self.stage, stage
        if stage == "note":
            self.stream.write(f"disa: {message}\n")
        elif self.tty:
            bar = "#" * int(30 * fraction)
            self.stream.write(f"\r[{bar:<30}] {100 * fraction:3.0f}% {message[:90]:<90}")
            if stage == "done":
                self.stream.write("\n")
        elif new_stage or stage == "done" or now - self.last >= 1.0:
            self.stream.write(f"[{100 * fraction:3.0f}%] {message}\n")
            self.last = now
        self.stream.flush()


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``disa: error: ...`` and exit code 2, no usage block."""

    def error(self, message):
        self.exit(2, f"disa: error: {message} (see {self.prog} --help)\n")


def _checked(check, what: str):
    """An argparse type from an engine check that raises InputError."""
    def convert(text):
        try:
            return check(text)
        except InputError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = what  # argparse names the type in its messages
    return convert


def _spacings(text: str):
    return check_spacings([t for t in text.split(",")] if text.strip() else [], "each spacing")


def _existing(what: str):
    return _checked(lambda text: existing_file(text, what), what)


#: Volume formats written as one file (so they can be written to a temporary name first).
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")


def _transform_suffixes():
    from .transforms.itk_io import WRITE_SUFFIXES

    return WRITE_SUFFIXES


def _suffix(suffixes, what: str):
    """A file name with one of ``suffixes`` (a tuple, or a function giving it)."""
    def check(text: str) -> str:
        allowed = suffixes() if callable(suffixes) else suffixes
        if not text.lower().endswith(allowed):
            raise InputError(f"{text!r} is not {what} file name; use one of {', '.join(allowed)}")
        return text
    return _checked(check, "file name")


def _metric(text: str):
    from .similarity.spec import parse_metric

    return parse_metric(text)


SEED = _checked(lambda t: check_int("the seed", t, 0, MAX_SEED), "seed")
COUNT = _checked(lambda t: check_int("the value", t, 1, MAX_SEARCH_SAMPLES), "count")
EVALS = _checked(lambda t: check_int("the value", t, 1, MAX_EVALS), "evaluations")
DEGREES = _checked(lambda t: check_range("the range", t, MAX_ROTATION_DEG), "degrees")
MILLIMETRES = _checked(lambda t: check_range("the range", t, MAX_TRANSLATION_MM), "millimetres")
MILLIMETRES_POSITIVE = _checked(lambda t: positive("the value", t, MAX_TRANSLATION_MM), "millimetres")


def _non_negative(text: str) -> float:
    return positive("the weight", text, allow_zero=True)


def _coordinate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise InputError(f"coordinates must be finite, got {text!r}")
    return value


COORDINATE = _checked(_coordinate, "coordinate")


def add_registration_options(p: argparse.ArgumentParser):
    d = DEFAULTS
    p.add_argument("--metric", default=d.metric, type=_checked(_metric, "metric"),
                   help=METRICS_HELP + f"; any case (default {d.metric}, the best-validated measure). "
                   "lc2 and disa explain the fixed image by the moving one: fix the ultrasound, or for "
                   "CT-MR the MR")
    p.add_argument("--transform", default=d.transform, choices=TRANSFORMS,
                   help="transform model: rigid (6 parameters), affine (12), about the fixed image centre, "
                        "pressure: rigid + 2 parameters of the tissue compression under the ultrasound probe "
                        "(amplitude and decay depth, mm), the fixed image being the ultrasound; or a dense model "
                        "after a linear registration: deformable (discrete search + convex smoothing + instance "
                        "optimization), diffeomorphic (stationary velocity field) or neural-ode (velocity network "
                        "integrated in time); the output transform file then holds the whole mapping (linear "
                        "part and displacement field)")
    p.add_argument("--probe-position", type=COORDINATE, nargs=3, default=None, metavar=("X", "Y", "Z"),
                   help="with --transform pressure: a point of the probe's contact surface in the fixed image, "
                        "LPS mm like every coordinate of disa (Slicer shows RAS: negate X and Y); default: the "
                        "top of the ultrasound's field of view")
    p.add_argument("--probe-direction", type=COORDINATE, nargs=3, default=None, metavar=("X", "Y", "Z"),
                   help="with --transform pressure: the probe axis, pointing into the tissue, LPS; default: "
                        "found from the fan shape of the ultrasound's field of view")
    p.add_argument("--optimizer", choices=["bobyqa", "lbfgs"], default=None,
                   help="local optimizer (default: bobyqa for lc2, lbfgs for the differentiable measures)")
    p.add_argument("--search", choices=SEARCHES, default=d.search,
                   help="global: score --search-samples poses around the start on the coarsest level, narrow "
                        "them coarse to fine and optimize from the best few; local: one local optimization "
                        f"from the start (default {d.search}; exact lc2 alone always searches locally)")
    presets = ", ".join(f"{name} (+-{rot:g} deg, +-{mm:g} mm)" for name, (rot, mm) in SEARCH_PRESETS.items())
    p.add_argument("--search-preset", choices=tuple(SEARCH_PRESETS), default=d.search_preset,
                   help=f"global search ranges: {presets} (default {d.search_preset})")
    p.add_argument("--search-rotation", type=DEGREES, default=d.search_rotation, metavar="DEG",
                   help="global search range of each rotation component, +- degrees (default: the preset's)")
    p.add_argument("--search-translation", type=MILLIMETRES, default=d.search_translation, metavar="MM",
                   help="global search range of each translation component, +- mm (default: the preset's)")
    p.add_argument("--search-samples", type=COUNT, default=d.search_samples, metavar="N",
                   help=f"starting poses scored by the global search (default {d.search_samples})")
    p.add_argument("--search-starts", type=COUNT, default=d.search_starts, metavar="N",
                   help=f"best poses of the global search optimized locally (default {d.search_starts})")
    p.add_argument("--spacings", type=_checked(_spacings, "spacings"), default=None, metavar="MM[,MM...]",
                   help="working spacings in mm, coarse to fine, e.g. 2,1 (default: two levels chosen "
                        "from the image size, 2 and 1 mm for a 5 cm ultrasound volume)")
    p.add_argument("--max-evals", type=EVALS, default=None, metavar="N",
                   help="objective evaluations per level and start")
    p.add_argument("--fixed-mask", default=d.fixed_mask, choices=FIXED_MASKS,
                   help="fixed voxels that count: auto = nonzero when >10%% of the volume is exactly 0 "
                        "(ultrasound fans, cropped volumes), else all")
    p.add_argument("--precision", default=d.precision, choices=PRECISIONS,
                   help="precision of the DISA descriptors: float32 (default, the same result on every run), "
                        "bfloat16 (faster on CPUs with AVX512-BF16 and on GPUs) or float16 (CUDA); reduced "
                        "precision changes the result slightly")
    p.add_argument("--weights", type=_existing("DISA weights"), default=None, metavar="FILE",
                   help="DISA network weights to use instead of the shipped ones (a .pt file with its .json "
                        "model card beside it, as disa train writes them)")
    p.add_argument("--device", default=d.device, help="auto (CUDA when available), cpu or cuda")
    p.add_argument("--threads", type=COUNT, default=d.threads, metavar="N",
                   help="CPU threads (default: $DISA_THREADS, else every CPU); a result is reproducible for "
                        "one thread count")
    p.add_argument("--seed", type=SEED, default=d.seed,
                   help=f"random seed, 0 to {MAX_SEED} (global search samples, MI sampling; default {d.seed})")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    dense = p.add_argument_group("dense registration (--transform deformable, diffeomorphic or neural-ode; "
                                 "after a linear one, which the options above set)")
    dd = DENSE_DEFAULTS
    dense.add_argument("--linear-transform", choices=DENSE_LINEAR, default=None,
                       help=f"the linear registration run first (default {dd.linear_transform})")
    dense.add_argument("--dense-spacing", type=MILLIMETRES_POSITIVE, default=None, metavar="MM",
                       help="working spacing of the dense stage (default: about "
                            f"{dd.working_voxels} voxels across the fixed image)")
    dense.add_argument("--grid-spacing", type=MILLIMETRES_POSITIVE, default=None, metavar="MM",
                       help=f"deformable: control grid spacing of the discrete search (default {dd.grid_spacing_mm:g})")
    dense.add_argument("--stride", type=int, choices=STRIDES, default=None,
                       help=f"deformable: descriptor/search stride in working voxels (default {dd.stride})")
    dense.add_argument("--search-radius", type=MILLIMETRES_POSITIVE, default=None, metavar="MM",
                       help=f"deformable: largest displacement searched (default {dd.search_radius_mm:g})")
    dense.add_argument("--dense-levels", type=COUNT, default=None, metavar="N",
                       help=f"working grids coarse to fine, each twice as fine as the one before (default {dd.levels})")
    dense.add_argument("--iterations", type=COUNT, default=None, metavar="N",
                       help=f"Adam iterations on the finest level (default {dd.iterations} for deformable, at most "
                            f"{dd.dense_iterations} for diffeomorphic and {dd.ode_iterations} for neural-ode)")
    dense.add_argument("--coarse-iterations", type=COUNT, default=None, metavar="N",
                       help=f"Adam iterations on each coarser level (default {dd.coarse_iterations} for deformable, "
                            f"at most {dd.dense_coarse_iterations} for diffeomorphic and {dd.ode_coarse_iterations} "
                            "for neural-ode)")
    dense.add_argument("--smoothness", type=_checked(_non_negative, "smoothness"), default=None, metavar="W",
                       help="weight of the regularizer on the field's derivatives (default "
                            f"{dd.smoothness:g} deformable, {dd.dense_smoothness:g} diffeomorphic)")
    dense.add_argument("--mind-components", type=int, choices=range(1, MIND_CHANNELS + 1), default=None,
                       metavar="K", help=f"MIND-SSC's {MIND_CHANNELS} channels projected onto K shared principal "
                                         f"components in the dense stage, 1 to {MIND_CHANNELS} (default "
                                         f"{dd.mind_components}; {MIND_CHANNELS} keeps them all)")
    dense.add_argument("--linearize", type=_checked(_non_negative, "linearize"), default=None, metavar="VOXELS",
                       help="deformable, diffeomorphic: the similarity's Gauss-Newton model in the displacement, "
                            f"rebuilt once the field has moved VOXELS working voxels (default {dd.linearize:g}; 0: "
                            "exact every iteration, the dense stage about 1.6x slower; neural-ode: always exact)")
    dense.add_argument("--integrator", choices=INTEGRATORS, default=None,
                       help=f"neural-ode: time integrator (default {dd.integrator})")


#: registration_kwargs' dense settings: argument name -> register_deformable keyword.
DENSE_ARGUMENTS = {"linear_transform": "linear_transform", "dense_spacing": "spacing",
                   "grid_spacing": "grid_spacing_mm", "stride": "stride", "search_radius": "search_radius_mm",
                   "iterations": "iterations", "smoothness": "smoothness", "integrator": "integrator",
                   "dense_levels": "levels", "coarse_iterations": "coarse_iterations",
                   "mind_components": "mind_components", "linearize": "linearize"}


def registration_kwargs(args) -> dict:
    return dict(metric=args.metric, transform=args.transform, optimizer=args.optimizer, search=args.search,
                search_preset=args.search_preset, search_rotation=args.search_rotation, search_translation=args.search_translation,
                search_samples=args.search_samples, search_starts=args.search_starts, spacings=args.spacings,
                max_evals=args.max_evals, fixed_mask=args.fixed_mask, precision=args.precision,
                weights=args.weights, device=args.device, threads=args.threads, seed=args.seed,
                probe_position=args.probe_position, probe_direction=args.probe_direction,
                dense={key: getattr(args, name) for name, key in DENSE_ARGUMENTS.items()
                       if getattr(args, name) is not None} or None,
                progress=TerminalProgress(quiet=args.quiet))


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="disa",
        description="DISA multimodal registration (ultrasound, MR, CT). Physical coordinates are LPS "
                    "millimetres as in ITK; transform files map fixed points to moving points (the "
                    "resampling direction), so resampling the moving image with them aligns it to the fixed.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("register", help="register a moving volume to a fixed volume",
                       description="Register MOVING to FIXED and write an ITK transform file.")
    p.add_argument("--fixed", required=True, help="fixed volume (NIfTI, NRRD, MHA); put the ultrasound here for lc2")
    p.add_argument("--moving", required=True, help="moving volume (NIfTI, NRRD, MHA)")
    p.add_argument("--output-transform", required=True, metavar="OUT", type=_suffix(_transform_suffixes, "a transform"),
                   help="ITK transform file to write (.h5, .tfm): fixed LPS point -> moving LPS point, "
                        "--initial-transform included")
    p.add_argument("--initial-transform", metavar="IN", help="ITK transform file to start from (linear)")
    p.add_argument("--output-volume", metavar="PATH", type=_suffix(VOLUME_SUFFIXES, "a volume"),
                   help="also write the moving volume resampled on the fixed grid (.nii, .nii.gz, .nrrd, .mha)")
    p.add_argument("--json", metavar="PATH", help="also write the result (matrix, similarity, timings) as JSON")
    p.add_argument("--jacobian", metavar="PATH", type=_suffix(VOLUME_SUFFIXES, "a volume"),
                   help="dense transforms: also write the Jacobian determinant of the displacement field "
                        "(<= 0 where it folds) as a volume on the field's grid")
    add_registration_options(p)
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("evaluate", help="landmark error (FRE/TRE), label overlap and folding of a transform",
                       description="Map the fixed landmarks through the transform and print their distances "
                                   "to the moving landmarks (mean, percentiles, max) in mm; with label maps, the "
                                   "Dice per label (mean and quartiles) and HD95 of the moving labels resampled "
                                   "on the fixed ones; for a transform holding a displacement field, its "
                                   "Jacobian determinant (voxels <= 0: folding).")
    p.add_argument("--transform", help="ITK transform file (fixed -> moving); omit for the identity")
    p.add_argument("--fixed-landmarks",
                   help="landmarks in the fixed volume: .fcsv, .mrk.json, .csv (header label,L,P,S or "
                        "label,R,A,S) or FILE.tag:1 / FILE.tag:2 for an MNI tag file's first/second volume")
    p.add_argument("--moving-landmarks", help="landmarks in the moving volume, same formats, same order")
    p.add_argument("--fixed-labels", type=_existing("fixed label map"), metavar="PATH",
                   help="label map on the fixed side (integer labels, 0 = background)")
    p.add_argument("--moving-labels", type=_existing("moving label map"), metavar="PATH",
                   help="label map on the moving side, resampled through the transform (nearest neighbour)")
    p.add_argument("--per-landmark", action="store_true", help="also print each landmark's error")
    p.add_argument("--json", metavar="PATH", help="also write the statistics as JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="register the bundled RESECT Case 24 (ultrasound + MR) from a known perturbation",
                       description="Moves the MR of RESECT Case 24 by a fixed rigid transform (8 degrees, 12 mm), "
                                   "registers it back to the ultrasound and prints the landmark error before "
                                   "and after. Writes the perturbed MR, the transform and the resampled MR.")
    p.add_argument("--output-dir", default="disa-demo-output",
                   help="folder for the outputs (default disa-demo-output); a folder holding files is refused "
                        "unless --overwrite is given")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the demo's own files in a non-empty --output-dir and an existing --scene file "
                        "(other files there are left alone)")
    p.add_argument("--data-dir", default=None, help="folder holding the Case24 files (default: the bundled copy)")
    p.add_argument("--scene", default=None, metavar="OUT.mrb",
                   help="also write a Slicer scene bundle: ultrasound, perturbed MR under the result transform, "
                        "landmarks, registered landmarks and the FRE table (needs slicer-core: "
                        "pip install -e \".[scene]\")")
    add_registration_options(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("benchmark", help="accuracy and speed against SimpleITK and elastix on Case 24",
                       description="Seeded rigid perturbations of Case 24, registered by each method; prints a "
                                   "table with ratios and writes it as JSON and Markdown.")
    p.add_argument("--runs", type=COUNT, default=20, help="number of perturbations (default 20)")
    p.add_argument("--max-rotation", type=DEGREES, default=10.0, help="perturbation range, +- degrees per axis")
    p.add_argument("--max-translation", type=MILLIMETRES, default=10.0, help="perturbation range, +- mm per axis")
    p.add_argument("--methods", default=None,
                   help="comma-separated subset of: disa, disa-oracle (DISA-LC2's path on the MIND-SSC oracle "
                        "instead of the network), lc2, mind, mi, sitk-mi, elastix (default all available)")
    p.add_argument("--spacings", type=_checked(_spacings, "spacings"), default=None, metavar="MM[,MM...]",
                   help="working spacings of the engine's methods, coarse to fine (default: each measure's own)")
    p.add_argument("--val-data", default=None, metavar="DIR",
                   help="paper-style validation patch pairs for the DISA approximation error "
                        "(build with: disa train --paper --build-only --source-dir ../shared/data --data DIR)")
    p.add_argument("--heldout-data", default=None, metavar="DIR",
                   help="the data folder with templates/ (e.g. ../shared/data): also measure DISA on held-out "
                        "synthetic pairs (learning-curve R2, registration) beside a random network, the "
                        "MIND-SSC oracle, MIND-SSC and exact LC2 (tens of minutes)")
    p.add_argument("--output-dir", default="bench-results", help="where to write results (default bench-results)")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the perturbations")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--weights", type=_existing("DISA weights"), default=None, metavar="FILE",
                   help="DISA network weights to benchmark instead of the shipped ones (.pt with its .json "
                        "model card, as disa train writes them)")
    p.set_defaults(func=cmd_benchmark)
    from .bench.capture_cli import add_capture_parser  # `disa benchmark capture` (argparse only)
    from .bench.deformable_cli import add_deformable_parser  # `disa benchmark deformable` (argparse only)
    from .batch.cli import add_batch_bench_parser, add_batch_parser  # `disa batch` (argparse only)
    from .cases.cli import add_synth_parser  # `disa synth` (argparse only)

    # `disa benchmark` alone stays the Case 24 suite; the others are its SUITE subcommands
    suites = p.add_subparsers(dest="suite", metavar="SUITE",
                              help="capture: capture range; deformable: dense registration; batch: cohort "
                                   "speed-up (without SUITE: the Case 24 accuracy benchmark, options above)")
    suites.required = False
    add_capture_parser(suites)
    add_deformable_parser(suites)
    add_batch_bench_parser(suites)
    add_synth_parser(sub)
    add_batch_parser(sub)

    from .train import add_train_arguments  # argparse only; torch loads when the command runs

    p = sub.add_parser("train", help="train the DISA-LC2 descriptor network from unregistered volume pairs",
                       description="Dense training (default): crop pairs cut from volume pairs rendered from "
                                   "--source-dir (brain templates with random appearances, simulated and real "
                                   "ultrasound), supervised with exact LC2 at every output; a learning curve on "
                                   "held-out crop pairs (curve.json/.png), snapshots and a checkpoint in "
                                   "--output-dir; --resume continues, --time-limit stops cleanly. --select then "
                                   "picks the snapshot that registers the held-out synthetic pairs best and writes "
                                   "OUTPUT_DIR/disa_lc2.pt with its model card. --paper trains the paper's "
                                   "patch-pair recipe instead.")
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)
    return parser


def cmd_register(args) -> int:
    from .outputs import OutputFiles
    from .registration import register_files

    # Checked before any work: no output may replace an input, every output folder is writable.
    if args.jacobian and args.transform not in DENSE_TRANSFORMS:
        raise InputError("--jacobian needs a dense transform (deformable, diffeomorphic or neural-ode)")
    outputs = OutputFiles({"--output-transform": args.output_transform, "--output-volume": args.output_volume,
                           "--json": args.json, "--jacobian": args.jacobian},
                          inputs={"--fixed": args.fixed, "--moving": args.moving,
                                  "--initial-transform": args.initial_transform, "--weights": args.weights})
    from .transforms.probe_pressure import check_probe

    check_probe(args.transform, args.probe_position, args.probe_direction)  # before the images are read
    result = register_files(args.fixed, args.moving, args.initial_transform, **registration_kwargs(args))
    with outputs.staged() as staged:  # all outputs or none
        result.save_transform(staged["--output-transform"])
        if args.output_volume:
            from .transforms.itk_io import write_resampled

            transform = result.matrix if result.linear else result.sitk_transform()
            write_resampled(args.moving, args.fixed, transform, staged["--output-volume"])
        if args.json:
            write_json(staged["--json"], result.as_dict())
        if args.jacobian:
            from .deformable import jacobian_image
            from .spatial import save_image

            save_image(jacobian_image(result.field), staged["--jacobian"])
    print(result.summary())
    for path in outputs.paths.values():
        print(f"wrote {path}")
    return 0


def cmd_evaluate(args) -> int:
    import numpy as np

    from .evaluate import (error_statistics, format_label_statistics, format_statistics, label_statistics,
                           read_landmarks, registration_errors, warp_labels)
    from .outputs import OutputFiles
    from .transforms.itk_io import displacement_fields, read_itk_mapping, read_sitk_transform

    landmarks = (args.fixed_landmarks, args.moving_landmarks)
    labels = (args.fixed_labels, args.moving_labels)
    if (landmarks[0] is None) != (landmarks[1] is None) or (labels[0] is None) != (labels[1] is None):
        raise InputError("give landmarks and label maps in pairs: --fixed-landmarks with --moving-landmarks, "
                         "--fixed-labels with --moving-labels")
    if landmarks[0] is None and labels[0] is None:
        raise InputError("nothing to evaluate: give --fixed-landmarks/--moving-landmarks or "
                         "--fixed-labels/--moving-labels")
    inputs = {"--transform": args.transform, "--fixed-labels": labels[0], "--moving-labels": labels[1]}
    if landmarks[0] is not None:
        inputs.update({"--fixed-landmarks": _landmark_file(landmarks[0]),
                       "--moving-landmarks": _landmark_file(landmarks[1])})
    outputs = OutputFiles({"--json": args.json}, inputs=inputs)
    report = {}
    tx = None if args.transform is None else read_sitk_transform(args.transform)
    if landmarks[0] is not None:
        mapping = np.eye(4) if args.transform is None else read_itk_mapping(args.transform)  # or a function
        fixed = read_landmarks(landmarks[0])
        moving = read_landmarks(landmarks[1])
        errors = registration_errors(mapping, fixed, moving)
        stats = error_statistics(errors)
        if args.per_landmark:
            for label, e in zip(fixed.labels, errors):
                print(f"{label}\t{e:.3f} mm")
        print(format_statistics(stats))
        report.update({"statistics": stats, "errors": [float(e) for e in errors]})
    if labels[0] is not None:
        overlap = label_statistics(*warp_labels(labels[1], labels[0], tx))
        print(format_label_statistics(overlap))
        report["labels"] = overlap
    fields = [] if tx is None else displacement_fields(tx)
    if fields:
        from .deformable import jacobian_statistics

        report["jacobian"] = [jacobian_statistics(field) for field in fields]
        for j in report["jacobian"]:
            print(f"Jacobian determinant: {j['nonpositive']} voxels <= 0 ({j['percent_nonpositive']:.4f}%), "
                  f"std of log {j['std_log_jacobian']:.4f}")
    if args.json:
        with outputs.staged() as staged:
            write_json(staged["--json"], report)
    return 0


def cmd_demo(args) -> int:
    options = dict(data_dir=args.data_dir, overwrite=args.overwrite, **registration_kwargs(args))
    if args.scene is None:
        from .demo import run_demo

        run_demo(args.output_dir, **options)
        return 0
    # The only place the engine reaches the Slicer-side library: the scene is written by the
    # module's own logic (DISARegistrationLib, installed beside this package), imported only here
    # so that everything else runs without it.
    from DISARegistrationLib.demo_scene import run_demo_scene

    run_demo_scene(args.scene, args.output_dir, **options)
    return 0


def cmd_benchmark(args) -> int:
    from .bench.benchmark import run_benchmark

    methods = None if args.methods is None else [m.strip() for m in args.methods.split(",") if m.strip()]
    run_benchmark(runs=args.runs, max_rotation=args.max_rotation, max_translation=args.max_translation,
                  methods=methods, output_dir=args.output_dir, seed=args.seed, device=args.device,
                  val_data=args.val_data, heldout_data=args.heldout_data, weights=args.weights,
                  spacings=args.spacings)
    return 0


def cmd_train(args) -> int:
    from .train import run_from_args

    return run_from_args(args)


def _landmark_file(text: str) -> str:
    """The file of a landmark argument (``FILE.tag:1`` names FILE.tag)."""
    head, sep, tail = text.rpartition(":")
    return head if sep and tail in ("1", "2") and head.lower().endswith(".tag") else text


def write_json(path, data):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(data, fh, indent=2)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CancelledError:
        print("\ndisa: cancelled", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("\ndisa: interrupted", file=sys.stderr)
        return 130
    except DISAError as exc:
        print(f"disa: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
