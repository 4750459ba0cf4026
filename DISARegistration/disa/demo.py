"""``disa demo``: register the bundled RESECT Case 24 from a fixed, known perturbation.

The MR is moved by a rigid transform of 8 degrees and 12 mm (a header change, no resampling),
so the true fixed -> moving transform is known; the landmark error before and after shows what
the registration recovered.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .evaluate import error_statistics, format_statistics, read_landmarks, registration_errors, transform_points
from .evaluate.landmarks import Landmarks, write_fcsv
from .registration import register
from .sample_data import case24, move_image, rigid_matrix
from .spatial import load_image, save_image
from .transforms.itk_io import write_resampled

#: The demo's perturbation: rotation vector (degrees, |r| = 8.0) and translation (mm, |t| = 12.0).
DEMO_ROTATION_DEG = (4.62, -4.62, 4.62)
DEMO_TRANSLATION_MM = (6.93, -6.93, 6.93)


def run_demo(output_dir="disa-demo-output", data_dir=None, print_fn=print, **register_kwargs) -> dict:
    case = case24(data_dir)
    fixed = load_image(case.fixed, "fixed image")
    moving = load_image(case.moving, "moving image")
    fixed_lm = read_landmarks(case.fixed_landmarks)
    moving_lm = read_landmarks(case.moving_landmarks)

    perturbation = rigid_matrix(DEMO_ROTATION_DEG, DEMO_TRANSLATION_MM, moving.center())
    moved = move_image(moving, perturbation)
    moved_lm = Landmarks(transform_points(perturbation, moving_lm.points), moving_lm.labels)

    before = error_statistics(registration_errors(np.eye(4), fixed_lm, moved_lm))
    print_fn("RESECT Case 24: ultrasound (fixed) and T1 MR (moving), MR moved by 8.0 deg and 12.0 mm")
    print_fn(f"landmark error before registration: {format_statistics(before)}")
    result = register(fixed, moved, **register_kwargs)
    after = error_statistics(registration_errors(result.matrix, fixed_lm, moved_lm))
    print_fn(f"landmark error after registration:  {format_statistics(after)}")
    print_fn(result.summary())
    reference = error_statistics(registration_errors(np.eye(4), fixed_lm, moving_lm))
    print_fn(f"(the landmarks of the original, unperturbed pair disagree by {reference['mean']:.2f} mm on "
             "average: the floor of what they can measure)")

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_image(moved, out / "Case24-T1-perturbed.nii.gz")
    result.save_transform(out / "registration.h5")
    write_resampled(out / "Case24-T1-perturbed.nii.gz", case.fixed, result.matrix, out / "Case24-T1-registered.nii.gz")
    write_fcsv(out / "Case24-US-landmarks.fcsv", fixed_lm)
    write_fcsv(out / "Case24-T1-perturbed-landmarks.fcsv", moved_lm)
    summary = {"before": before, "after": after, "metric": result.metric, "transform": result.transform,
               "seconds": result.seconds, "matrix_lps_fixed_to_moving": result.matrix.tolist(),
               "perturbation_lps": perturbation.tolist()}
    with open(out / "demo.json", "w") as fh:
        json.dump(summary, fh, indent=2)
    print_fn(f"wrote {os.fspath(out)}/: Case24-T1-perturbed.nii.gz (registration input), registration.h5, "
             "Case24-T1-registered.nii.gz (MR resampled on the ultrasound grid), landmarks (.fcsv), demo.json")
    return summary
