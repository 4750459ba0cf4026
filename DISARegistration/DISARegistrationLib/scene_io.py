"""Scenes that can be saved and re-opened as Slicer data bundles (.mrb), with or without Slicer.

Inside Slicer the application's scene is used as it is. With only the ``slicer-core`` wheel a
bare vtkMRMLScene writes volumes and transforms but not markups JSON, .mrml or .mrb: those need
the module logics an application registers (colours, markups, volumes, transforms, subject
hierarchy, data, tables) and a data I/O manager. :func:`make_scene` sets up that minimal
application logic once per scene (see REFERENCE.md §4).

    scene = make_scene()
    ...                                   # add nodes, e.g. through RegistrationLogic(scene)
    save_scene_bundle(scene, "case.mrb")
    scene = load_scene_bundle("case.mrb")
"""
from __future__ import annotations

import os
import tempfile

import slicer
import vtk

from disa.errors import InputError

__all__ = ["in_slicer", "make_scene", "save_scene_bundle", "load_scene_bundle"]

#: Module logics a bare scene needs to read and write markups, tables and bundles.
_MODULE_LOGICS = (("Markups", "vtkSlicerMarkupsLogic"), ("Volumes", "vtkSlicerVolumesLogic"),
                  ("Transforms", "vtkSlicerTransformLogic"),
                  ("SubjectHierarchy", "vtkSlicerSubjectHierarchyModuleLogic"),
                  ("Data", "vtkSlicerDataModuleLogic"), ("Tables", "vtkSlicerTablesLogic"))


def in_slicer() -> bool:
    """True inside the Slicer application (slicer.app exists), False with slicer-core alone."""
    return hasattr(slicer, "app")


class _ApplicationSetup:
    """Keeps the logics of one bare scene alive (they hold the scene, VTK does not hold them)."""

    def __init__(self, scene):
        self.app = slicer.vtkSlicerApplicationLogic()
        self.app.SetMRMLScene(scene)
        self.colors = slicer.vtkSlicerColorLogic()  # adds the default colour tables (Grey, Rainbow, ...)
        self.colors.SetMRMLApplicationLogic(self.app)
        self.colors.SetMRMLScene(scene)
        self.app.SetColorLogic(self.colors)
        self.app.SetModuleLogic("Colors", self.colors)
        self.logics = {}
        for name, class_name in _MODULE_LOGICS:
            logic = getattr(slicer, class_name)()
            logic.SetMRMLApplicationLogic(self.app)
            logic.SetMRMLScene(scene)
            self.app.SetModuleLogic(name, logic)
            self.logics[name] = logic
        self.cache = tempfile.mkdtemp(prefix="disa-mrml-cache-")
        self.remote_io = slicer.vtkMRMLRemoteIOLogic()
        self.remote_io.SetMRMLScene(scene)
        self.remote_io.GetCacheManager().SetRemoteCacheDirectory(self.cache)
        self.data_io = slicer.vtkDataIOManagerLogic()
        self.data_io.SetMRMLApplicationLogic(self.app)
        self.data_io.SetAndObserveDataIOManager(self.remote_io.GetDataIOManager())
        self.remote_io.AddDataIOToScene()


def make_scene(quiet: bool = True):
    """A scene that can save and load bundles: Slicer's own scene, else a new bare scene with the
    minimal application logic. ``quiet`` silences VTK's warnings on stderr (noise for scripts)."""
    if in_slicer():
        return slicer.mrmlScene
    if quiet:
        vtk.vtkObject.GlobalWarningDisplayOff()
    scene = slicer.vtkMRMLScene()
    # VTK keeps Python attributes of a wrapped object while the C++ object lives.
    scene.disaApplicationSetup = _ApplicationSetup(scene)
    return scene


def _has_setup(scene) -> bool:
    return (in_slicer() and scene is slicer.mrmlScene) or hasattr(scene, "disaApplicationSetup")


def save_scene_bundle(scene, path) -> str:
    """Write ``scene`` with all its data to a Slicer data bundle (.mrb); returns the path."""
    path = os.path.abspath(os.fspath(path))
    if not path.lower().endswith(".mrb"):
        raise InputError(f"a Slicer scene bundle must end with .mrb: {path}")
    if not _has_setup(scene):
        raise InputError("this scene cannot write bundles: create it with scene_io.make_scene()")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    messages = slicer.vtkMRMLMessageCollection()
    if in_slicer() and scene is slicer.mrmlScene:
        ok = slicer.util.saveScene(path)
    else:
        ok = scene.WriteToMRB(path, None, messages)
    if not ok or not os.path.exists(path):
        raise InputError(f"could not write the scene bundle {path}: {_text(messages)}")
    return path


def _text(messages) -> str:
    return (messages.GetAllMessagesAsString() or "no details").strip()


def load_scene_bundle(path, scene=None):
    """Open a .mrb into ``scene`` (cleared first; default: a new scene from :func:`make_scene`,
    Slicer's scene inside Slicer); returns the scene."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise InputError(f"scene bundle not found: {path}")
    scene = make_scene() if scene is None else scene
    if not _has_setup(scene):
        raise InputError("this scene cannot read bundles: create it with scene_io.make_scene()")
    if in_slicer() and scene is slicer.mrmlScene:
        slicer.util.loadScene(path, {"clear": True})
        return scene
    messages = slicer.vtkMRMLMessageCollection()
    if not scene.ReadFromMRB(path, True, messages):
        raise InputError(f"could not read the scene bundle {path}: {_text(messages)}")
    return scene
