"""``disa synth``: write one synthetic case with exact ground truth. Options are declared with
argparse only, so the top-level command line lists them without importing torch."""
from __future__ import annotations

import argparse

from . import KINDS


def add_synth_parser(sub) -> argparse.ArgumentParser:
    """Declare ``disa synth`` on the top-level subparsers ``sub``."""
    p = sub.add_parser(
        "synth", help="write a synthetic registration case with exact ground truth (from the brain templates)",
        description="Renders two appearances of one brain template with the training simulator (simulated "
                    "ultrasound with a fan, speckle, boundary reflections and depth attenuation; CT-like; T2-like; "
                    "T1-like MR), moves the moving one by a known rigid transform (and optionally a smooth "
                    "displacement) and writes fixed.nii.gz, moving.nii.gz, landmarks (Slicer .fcsv, LPS), label "
                    "maps (templates with labels: mni, vxm), the truth as an ITK transform (truth.tfm: fixed LPS "
                    "point -> moving LPS point; with --deform also truth_deformed.h5) and case.json.")
    p.add_argument("--output-dir", required=True, metavar="DIR",
                   help="the case folder; an existing non-empty one is refused unless --overwrite")
    p.add_argument("--kind", default="us-mr", choices=tuple(KINDS),
                   help="us-mr: ultrasound (fixed) vs T1 MR; ct-mr: CT (fixed) vs T1 MR; t2-t1: T2 (fixed) vs T1 "
                        "(default us-mr)")
    p.add_argument("--template", default="mni",
                   help="brain template: icbm152, mni, colin27 or vxm (default mni, which has labels)")
    p.add_argument("--seed", type=int, default=0, help="seed of the appearance, pose and landmarks (default 0)")
    p.add_argument("--rotation", type=float, default=10.0, metavar="DEG",
                   help="rotation of the moving image about a random axis through the fixed centre (default 10)")
    p.add_argument("--translation", type=float, default=10.0, metavar="MM",
                   help="translation of the moving image along a random direction (default 10)")
    p.add_argument("--deform", type=float, default=0.0, metavar="MM",
                   help="largest smooth non-rigid displacement, 0 to 10 mm (default 0: rigid only)")
    p.add_argument("--source-dir", default=None, metavar="DIR",
                   help="the data folder holding templates/ (default ../shared/data)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier case in --output-dir")
    p.set_defaults(func=run_synth)
    return p


def run_synth(args) -> int:
    from .synthetic import build_case, check_case_options, check_destination, find_data_dir, write_case

    check_case_options(args.kind, args.template, args.seed, args.rotation, args.translation, args.deform)
    check_destination(args.output_dir, args.overwrite)  # before any rendering
    data_dir = find_data_dir(args.source_dir)
    case = build_case(args.kind, args.template, args.seed, args.rotation, args.translation, args.deform, data_dir)
    command = f"disa synth --kind {args.kind} --template {args.template} --seed {args.seed} " \
              f"--rotation {args.rotation:g} --translation {args.translation:g} --deform {args.deform:g}"
    files = write_case(case, args.output_dir, overwrite=args.overwrite, command=command)
    info = case.info["perturbation"]
    print(f"{case.name}: rotation {info['rotation_deg']:g} deg, translation {info['translation_mm']:g} mm"
          + (f", displacement up to {args.deform:g} mm" if args.deform else "")
          + f"; {len(case.fixed_points)} landmark pairs")
    for path in files.values():
        print(f"wrote {path}")
    return 0
