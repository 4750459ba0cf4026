"""``disa demo``: register the bundled RESECT Case 24 from a fixed, known perturbation.

The MR is moved by a rigid transform of 8 degrees and 12 mm (a header change, no resampling),
so the true fixed -> moving transform is known; the landmark error before and after shows what
the registration recovered.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from .errors import DISAError
from .evaluate import error_statistics, format_statistics, read_landmarks, registration_errors, transform_points
from .evaluate.landmarks import Landmarks, write_fcsv
from .registration import register
from .sample_data import case24, move_image, rigid_matrix
from .spatial import load_image, save_image
from .transforms.itk_io import write_resampled

#: The demo's perturbation: rotation vector (degrees, |r| = 8.0) and translation (mm, |t| = 12.0).
DEMO_ROTATION_DEG = (4.62, -4.62, 4.62)
DEMO_TRANSLATION_MM = (6.93, -6.93, 6.93)


def run_demo(output_dir="disa-demo-output", data_dir=None, print_fn=print, scene_path=None,
             **register_kwargs) -> dict:
    """Run the demo; ``scene_path`` (.mrb) also writes a Slicer scene bundle (needs slicer-core)."""
    scene_tools = _scene_tools(scene_path) if scene_path is not None else None  # fail before the long part
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
    if scene_tools is None:
        result = register(fixed, moved, **register_kwargs)
    else:
        scene, logic, _ = _register_in_scene(scene_tools, fixed, moved, fixed_lm, moved_lm, register_kwargs)
        result = logic.lastResult
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
    if scene_tools is not None:
        path = scene_tools[0].save_scene_bundle(scene, scene_path)
        print_fn(f"wrote {path}: Slicer scene (ultrasound, perturbed MR under the result transform, landmarks, "
                 "registered landmarks, FRE table)")
        summary["scene"] = path
    return summary


#: Node names in the demo's scene bundle.
SCENE_NAMES = {"fixed": "Case24-US", "moving": "Case24-T1-perturbed", "transform": "Case24-T1 registration",
               "fixed_landmarks": "Case24-US landmarks", "moving_landmarks": "Case24-T1-perturbed landmarks",
               "registered_landmarks": "Case24-T1 landmarks registered", "table": "Case24 landmark error (FRE)"}


def _scene_tools(scene_path):
    """(scene_io, RegistrationLogic) of the Slicer-side library, or a DISAError saying what to install."""
    if not os.fspath(scene_path).lower().endswith(".mrb"):
        raise DISAError(f"--scene must name a Slicer scene bundle ending in .mrb, got {os.fspath(scene_path)!r}")
    try:
        import slicer
        available = hasattr(slicer, "vtkMRMLScene")  # not the unrelated PyPI package named 'slicer'
    except ImportError:
        available = False
    if not available:
        raise DISAError("--scene needs Slicer's MRML library without Qt, the slicer-core wheel: "
                        "pip install -c constraints.txt -e \".[scene]\" (or pip install slicer-core==5.13.31053.0)")
    # DISARegistrationLib lives beside this package in the module folder (an editable install
    # maps only 'disa'); appended, so nothing already importable is shadowed.
    module_dir = str(Path(__file__).resolve().parent.parent)
    if module_dir not in sys.path and os.path.isdir(os.path.join(module_dir, "DISARegistrationLib")):
        sys.path.append(module_dir)
    from DISARegistrationLib import scene_io
    from DISARegistrationLib.logic import RegistrationLogic

    return scene_io, RegistrationLogic


def _register_in_scene(scene_tools, fixed, moved, fixed_lm, moved_lm, kwargs):
    """The demo's registration through RegistrationLogic on a scene holding its inputs and outputs."""
    from DISARegistrationLib import mrml_bridge as bridge

    scene_io, RegistrationLogic = scene_tools
    kwargs = dict(kwargs)
    scene = scene_io.make_scene()
    logic = RegistrationLogic(scene, device=kwargs.pop("device", "auto"))

    def add(class_name, key):
        return scene.AddNewNodeByClass(class_name, SCENE_NAMES[key])

    nodes = {"fixed": bridge.update_volume_node_from_image(add("vtkMRMLScalarVolumeNode", "fixed"), fixed),
             "moving": bridge.update_volume_node_from_image(add("vtkMRMLScalarVolumeNode", "moving"), moved)}
    for key, landmarks in (("fixed_landmarks", fixed_lm), ("moving_landmarks", moved_lm)):
        nodes[key] = bridge.markups_from_points(add("vtkMRMLMarkupsFiducialNode", key), landmarks.points,
                                                landmarks.labels)
    # Engine argument names -> the logic's, with the engine's defaults (the logic's differ).
    nodes["transform"] = logic.register(
        nodes["fixed"], nodes["moving"], metric=kwargs.pop("metric", "lc2"), transform=kwargs.pop("transform", "rigid"),
        search=kwargs.pop("search", "global"), searchRotation=kwargs.pop("search_rotation", 10.0),
        searchTranslation=kwargs.pop("search_translation", 15.0), maxEvaluations=kwargs.pop("max_evals", None),
        seed=kwargs.pop("seed", 0), progress=kwargs.pop("progress", None), cancel=kwargs.pop("cancel", None),
        outputTransformNode=add("vtkMRMLLinearTransformNode", "transform"), **kwargs)
    nodes["moving"].SetAndObserveTransformNodeID(nodes["transform"].GetID())  # show the MR registered
    nodes["registered_landmarks"] = logic.registeredLandmarks(
        nodes["moving_landmarks"], nodes["transform"],
        outputNode=add("vtkMRMLMarkupsFiducialNode", "registered_landmarks"))
    nodes["table"] = logic.computeFRE(nodes["transform"], nodes["fixed_landmarks"], nodes["moving_landmarks"],
                                      tableNode=add("vtkMRMLTableNode", "table"))["tableNode"]
    return scene, logic, nodes
