"""``disa demo``: register the bundled RESECT Case 24 from a fixed, known perturbation.

The MR is moved by a rigid transform of 8 degrees and 12 mm (a header change, no resampling),
so the true fixed -> moving transform is known; the landmark error before and after shows what
the registration recovered.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .errors import InputError
from .evaluate import error_statistics, format_statistics, read_landmarks, registration_errors, transform_points
from .evaluate.landmarks import Landmarks, write_fcsv
from .registration import register
from .sample_data import case24, move_image, rigid_matrix
from .spatial import Image, load_image, save_image
from .transforms.itk_io import write_resampled

#: The demo's perturbation: rotation vector (degrees, |r| = 8.0) and translation (mm, |t| = 12.0).
DEMO_ROTATION_DEG = (4.62, -4.62, 4.62)
DEMO_TRANSLATION_MM = (6.93, -6.93, 6.93)


@dataclass
class DemoCase:
    """The registration problem the demo poses: the ultrasound and the MR moved by ``perturbation``."""

    fixed: Image
    moved: Image
    fixed_landmarks: Landmarks
    moved_landmarks: Landmarks
    moving_landmarks: Landmarks  # the MR's landmarks before the perturbation
    perturbation: np.ndarray     # LPS, MR point -> moved MR point
    fixed_path: Path


def load_demo_case(data_dir=None) -> DemoCase:
    case = case24(data_dir)
    fixed = load_image(case.fixed, "fixed image")
    moving = load_image(case.moving, "moving image")
    fixed_lm = read_landmarks(case.fixed_landmarks)
    moving_lm = read_landmarks(case.moving_landmarks)
    perturbation = rigid_matrix(DEMO_ROTATION_DEG, DEMO_TRANSLATION_MM, moving.center())
    moved_lm = Landmarks(transform_points(perturbation, moving_lm.points), moving_lm.labels)
    return DemoCase(fixed, move_image(moving, perturbation), fixed_lm, moved_lm, moving_lm, perturbation, case.fixed)


def check_output_dir(output_dir, overwrite: bool = False) -> Path:
    """The output folder, refused when it holds files and ``overwrite`` is False (checked before
    any work, so a refusal writes nothing)."""
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--output-dir {os.fspath(out)} is a file, not a folder")
    if out.is_dir() and not overwrite and any(out.iterdir()):
        raise InputError(f"--output-dir {os.fspath(out)} is not empty; choose a new folder or add --overwrite "
                         "to replace the demo's files there")
    return out


def run_demo(output_dir="disa-demo-output", data_dir=None, print_fn=print, overwrite: bool = False,
             register_fn: Optional[Callable[..., object]] = None, **register_kwargs) -> dict:
    """Run the demo and write its files to ``output_dir`` (refused if not empty, unless ``overwrite``).

    ``register_fn(demo_case, **register_kwargs)`` registers instead of ``disa.registration.register``
    and returns its RegistrationResult (the Slicer scene writer registers through the module logic).
    """
    out = check_output_dir(output_dir, overwrite)
    demo = load_demo_case(data_dir)
    before = error_statistics(registration_errors(np.eye(4), demo.fixed_landmarks, demo.moved_landmarks))
    print_fn("RESECT Case 24: ultrasound (fixed) and T1 MR (moving), MR moved by 8.0 deg and 12.0 mm")
    print_fn(f"landmark error before registration: {format_statistics(before)}")
    if register_fn is None:
        result = register(demo.fixed, demo.moved, **register_kwargs)
    else:
        result = register_fn(demo, **register_kwargs)
    after = error_statistics(registration_errors(result.matrix, demo.fixed_landmarks, demo.moved_landmarks))
    print_fn(f"landmark error after registration:  {format_statistics(after)}")
    print_fn(result.summary())
    reference = error_statistics(registration_errors(np.eye(4), demo.fixed_landmarks, demo.moving_landmarks))
    print_fn(f"(the landmarks of the original, unperturbed pair disagree by {reference['mean']:.2f} mm on "
             "average: the floor of what they can measure)")

    out.mkdir(parents=True, exist_ok=True)
    save_image(demo.moved, out / "Case24-T1-perturbed.nii.gz")
    result.save_transform(out / "registration.h5")
    write_resampled(out / "Case24-T1-perturbed.nii.gz", demo.fixed_path, result.matrix,
                    out / "Case24-T1-registered.nii.gz")
    write_fcsv(out / "Case24-US-landmarks.fcsv", demo.fixed_landmarks)
    write_fcsv(out / "Case24-T1-perturbed-landmarks.fcsv", demo.moved_landmarks)
    summary = {"before": before, "after": after, "metric": result.metric, "transform": result.transform,
               "seconds": result.seconds, "matrix_lps_fixed_to_moving": result.matrix.tolist(),
               "perturbation_lps": demo.perturbation.tolist()}
    with open(out / "demo.json", "w") as fh:
        json.dump(summary, fh, indent=2)
    print_fn(f"wrote {os.fspath(out)}/: Case24-T1-perturbed.nii.gz (registration input), registration.h5, "
             "Case24-T1-registered.nii.gz (MR resampled on the ultrasound grid), landmarks (.fcsv), demo.json")
    return summary
