"""``disa demo --scene OUT.mrb``: the demo registered through the module's own logic on an MRML
scene, saved as a Slicer scene bundle to check the result by eye.

The engine's demo (``disa.demo``) poses the problem and writes its files; this module only adds
the scene. It needs the slicer-core wheel, imported when a scene is asked for, so that the
command line can say what to install instead of failing on import.
"""
from __future__ import annotations

import os
from pathlib import Path

from disa.demo import run_demo
from disa.errors import InputError
from disa.registration.defaults import DEFAULTS

__all__ = ["SCENE_NAMES", "run_demo_scene"]

#: Node names in the demo's scene bundle.
SCENE_NAMES = {"fixed": "Case24-US", "moving": "Case24-T1-perturbed", "transform": "Case24-T1 registration",
               "fixed_landmarks": "Case24-US landmarks", "moving_landmarks": "Case24-T1-perturbed landmarks",
               "registered_landmarks": "Case24-T1 landmarks registered", "table": "Case24 landmark error (FRE)"}

#: The CLI's engine argument names that RegistrationLogic.register spells differently (the rest,
#: e.g. spacings or optimizer, it passes to the engine unchanged).
LOGIC_NAMES = {"search_preset": "searchPreset", "search_rotation": "searchRotation",
               "search_translation": "searchTranslation", "max_evals": "maxEvaluations", "weights": "weightsPath"}

#: What to install when slicer-core is missing (one line, as the command line prints it).
INSTALL_HINT = ("--scene needs Slicer's MRML library without Qt, the slicer-core wheel: "
                "pip install -c constraints.txt -e \".[scene]\" (or pip install slicer-core==5.13.31053.0)")


def check_scene_path(scene_path, overwrite: bool = False) -> Path:
    """The bundle path, refused unless it ends in .mrb and is new (or ``overwrite``)."""
    path = Path(os.path.abspath(os.fspath(scene_path)))
    if not path.name.lower().endswith(".mrb"):
        raise InputError(f"--scene must name a Slicer scene bundle ending in .mrb, got {os.fspath(scene_path)!r}")
    if path.is_dir():
        raise InputError(f"--scene {os.fspath(scene_path)} is a folder; name a .mrb file")
    if path.exists() and not overwrite:
        raise InputError(f"--scene {os.fspath(scene_path)} exists; choose a new name or add --overwrite")
    return path


def _slicer_core():
    """The slicer-core module, or an InputError saying how to install it."""
    try:
        import slicer
    except ImportError:
        slicer = None
    if not hasattr(slicer, "vtkMRMLScene"):  # absent, or the unrelated PyPI package named 'slicer'
        raise InputError(INSTALL_HINT)
    return slicer


def run_demo_scene(scene_path, output_dir="disa-demo-output", data_dir=None, print_fn=print,
                   overwrite: bool = False, **register_kwargs) -> dict:
    """``disa.demo.run_demo`` registered through RegistrationLogic, plus the scene bundle at
    ``scene_path``; returns the demo's summary with "scene" added."""
    path = check_scene_path(scene_path, overwrite)  # both checks before the long part
    _slicer_core()
    built = {}

    def register_in_scene(demo, **kwargs):
        built["scene"], logic = _register_in_scene(demo, kwargs)
        return logic.lastResult

    summary = run_demo(output_dir, data_dir=data_dir, print_fn=print_fn, overwrite=overwrite,
                       register_fn=register_in_scene, **register_kwargs)
    from . import scene_io

    summary["scene"] = scene_io.save_scene_bundle(built["scene"], path)
    print_fn(f"wrote {summary['scene']}: Slicer scene (ultrasound, perturbed MR under the result transform, "
             "landmarks, registered landmarks, FRE table)")
    return summary


def _register_in_scene(demo, kwargs):
    """The demo's registration through RegistrationLogic on a new scene holding its inputs and
    outputs; returns (scene, logic)."""
    from . import mrml_bridge as bridge
    from . import scene_io
    from .logic import RegistrationLogic

    kwargs = dict(kwargs)
    scene = scene_io.make_scene()
    logic = RegistrationLogic(scene, device=kwargs.pop("device", DEFAULTS.device),
                              threads=kwargs.pop("threads", DEFAULTS.threads))

    def add(class_name, key):
        return scene.AddNewNodeByClass(class_name, SCENE_NAMES[key])

    fixed = bridge.update_volume_node_from_image(add("vtkMRMLScalarVolumeNode", "fixed"), demo.fixed)
    moving = bridge.update_volume_node_from_image(add("vtkMRMLScalarVolumeNode", "moving"), demo.moved)
    landmarks = {key: bridge.markups_from_points(add("vtkMRMLMarkupsFiducialNode", key), lm.points, lm.labels)
                 for key, lm in (("fixed_landmarks", demo.fixed_landmarks),
                                 ("moving_landmarks", demo.moved_landmarks))}
    transform = logic.register(fixed, moving, outputTransformNode=add("vtkMRMLLinearTransformNode", "transform"),
                               **{LOGIC_NAMES.get(key, key): value for key, value in kwargs.items()})
    moving.SetAndObserveTransformNodeID(transform.GetID())  # show the MR registered
    logic.registeredLandmarks(landmarks["moving_landmarks"], transform,
                              outputNode=add("vtkMRMLMarkupsFiducialNode", "registered_landmarks"))
    logic.computeFRE(transform, landmarks["fixed_landmarks"], landmarks["moving_landmarks"],
                     tableNode=add("vtkMRMLTableNode", "table"))
    return scene, logic
