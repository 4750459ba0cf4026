"""Slicer scene bundles without Slicer (DISARegistrationLib/scene_io.py on the slicer-core wheel):
every node class the module writes survives a .mrb round trip, and `disa demo --scene` writes a
bundle that re-opens with the registration, landmarks and FRE table."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install slicer-core)")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the 'slicer' package here is not slicer-core", allow_module_level=True)
import vtk  # noqa: E402
import SimpleITK as sitk  # noqa: E402

MODULE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "DISARegistration")
if MODULE_DIR not in sys.path:
    sys.path.insert(0, MODULE_DIR)

from DISARegistrationLib import mrml_bridge as mb  # noqa: E402
from DISARegistrationLib import scene_io  # noqa: E402
from disa.cli import main as disa_main  # noqa: E402
from DISARegistrationLib.demo_scene import SCENE_NAMES, run_demo_scene  # noqa: E402
from disa.errors import InputError  # noqa: E402
from disa.sample_data import rigid_matrix  # noqa: E402
from disa.spatial import Image  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # a busy CPU runs one torch thread much faster than two contending
    yield
    torch.set_num_threads(previous)


def nodes_by_name(scene):
    nodes = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
    return {n.GetName(): n for n in nodes if n.GetName() and not n.GetHideFromEditors()}


def table_values(node):
    t = node.GetTable()
    return [[t.GetValue(r, c).ToString() if c == 0 else t.GetValue(r, c).ToDouble()
             for c in range(t.GetNumberOfColumns())] for r in range(t.GetNumberOfRows())]


def test_bundle_round_trip_keeps_every_node(tmp_path):
    scene = scene_io.make_scene()
    assert scene.GetNodeByID("vtkMRMLColorTableNodeRainbow") is not None  # default colours are set up
    rng = np.random.default_rng(0)
    direction = rigid_matrix((20.0, -10.0, 35.0), (0.0, 0.0, 0.0), np.zeros(3))[:3, :3]
    path = str(tmp_path / "oblique.nii.gz")
    sitk.WriteImage(Image.from_array(rng.normal(size=(6, 7, 8)).astype(np.float32), spacing=(0.8, 0.9, 1.1),
                                     origin=(5.0, -3.0, 7.0), direction=direction).to_sitk(), path)
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "oblique volume")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(path)
    assert storage.ReadData(volume) == 1
    parent = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "parent")
    child = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "child")
    mb.set_linear_transform_node_from_itk(parent, rigid_matrix((5.0, 0.0, -3.0), (1.0, 2.0, 3.0), np.zeros(3)))
    mb.set_linear_transform_node_from_itk(child, rigid_matrix((0.0, 7.0, 2.0), (-4.0, 0.5, 1.0), np.zeros(3)))
    child.SetAndObserveTransformNodeID(parent.GetID())
    volume.SetAndObserveTransformNodeID(child.GetID())
    points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "points")
    mb.markups_from_points(points, rng.uniform(-30, 30, size=(4, 3)), ["a", "b", "c", "d"])
    points.SetAndObserveTransformNodeID(child.GetID())
    grid = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "dense")
    field = Image.from_array(rng.normal(size=(3, 4, 5, 6)), spacing=(2, 2, 2))
    mb.set_grid_transform_node_from_displacement(grid, field)
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", "numbers")
    for name, cls in (("label", vtk.vtkStringArray), ("value (mm)", vtk.vtkDoubleArray)):
        column = cls()
        column.SetName(name)
        table.AddColumn(column)
    for label, value in (("x", 1.25), ("mean", 12.5)):
        row = table.AddEmptyRow()
        table.GetTable().SetValue(row, 0, vtk.vtkVariant(label))
        table.GetTable().SetValue(row, 1, vtk.vtkVariant(value))

    bundle = scene_io.save_scene_bundle(scene, tmp_path / "scene.mrb")
    back = scene_io.load_scene_bundle(bundle)
    assert back is not scene
    named = nodes_by_name(back)
    for name, cls in (("oblique volume", "vtkMRMLScalarVolumeNode"), ("parent", "vtkMRMLLinearTransformNode"),
                      ("child", "vtkMRMLLinearTransformNode"), ("points", "vtkMRMLMarkupsFiducialNode"),
                      ("dense", "vtkMRMLGridTransformNode"), ("numbers", "vtkMRMLTableNode")):
        assert name in named and named[name].IsA(cls), name
    assert named["oblique volume"].GetParentTransformNode().GetName() == "child"
    assert named["child"].GetParentTransformNode().GetName() == "parent"
    assert named["points"].GetParentTransformNode().GetName() == "child"
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(named["oblique volume"]),
                                  slicer.util.arrayFromVolume(volume))
    np.testing.assert_allclose(mb.itk_matrix_from_transform_node(named["child"], world=True),
                               mb.itk_matrix_from_transform_node(child, world=True), atol=1e-9)
    np.testing.assert_allclose(mb.landmarks_from_markups(named["points"]), mb.landmarks_from_markups(points), atol=1e-6)
    assert mb.markup_labels(named["points"]) == ["a", "b", "c", "d"]
    p = [3.0, -2.0, 4.0]
    np.testing.assert_allclose(named["dense"].GetTransformFromParent().TransformPoint(p),
                               grid.GetTransformFromParent().TransformPoint(p), atol=1e-6)
    assert table_values(named["numbers"]) == [["x", 1.25], ["mean", 12.5]]
    # A scene without the application setup is refused with a clear message.
    with pytest.raises(InputError, match="make_scene"):
        scene_io.save_scene_bundle(slicer.vtkMRMLScene(), tmp_path / "bare.mrb")
    with pytest.raises(InputError, match=".mrb"):
        scene_io.save_scene_bundle(scene, tmp_path / "scene.zip")
    with pytest.raises(InputError, match="not found"):
        scene_io.load_scene_bundle(tmp_path / "missing.mrb")


def test_demo_scene_reopens_with_registration_landmarks_and_fre(tmp_path):
    bundle = tmp_path / "demo.mrb"
    lines = []
    summary = run_demo_scene(bundle, tmp_path / "out", print_fn=lines.append, metric="mind", search="local",
                             spacings=[2.0], device="cpu", seed=0, threads=1)
    assert summary["scene"] == str(bundle) and any(str(bundle) in line for line in lines)
    scene = scene_io.load_scene_bundle(bundle)
    named = nodes_by_name(scene)
    expected = {"fixed": "vtkMRMLScalarVolumeNode", "moving": "vtkMRMLScalarVolumeNode",
                "transform": "vtkMRMLLinearTransformNode", "fixed_landmarks": "vtkMRMLMarkupsFiducialNode",
                "moving_landmarks": "vtkMRMLMarkupsFiducialNode", "registered_landmarks": "vtkMRMLMarkupsFiducialNode",
                "table": "vtkMRMLTableNode"}
    for key, cls in expected.items():
        assert SCENE_NAMES[key] in named and named[SCENE_NAMES[key]].IsA(cls), key
    n = {key: named[name] for key, name in SCENE_NAMES.items()}
    transform = n["transform"]
    # The perturbed MR and the registered landmarks follow the result; the rest stays in world.
    assert n["moving"].GetTransformNodeID() == transform.GetID()
    assert n["registered_landmarks"].GetTransformNodeID() == transform.GetID()
    for key in ("fixed", "fixed_landmarks", "moving_landmarks", "transform"):
        assert n[key].GetTransformNodeID() is None, key
    assert transform.GetNodeReference(transform.GetMovingNodeReferenceRole()).GetID() == n["moving"].GetID()
    assert transform.GetNodeReference(transform.GetFixedNodeReferenceRole()).GetID() == n["fixed"].GetID()
    # The transform is the engine's result; the demo's ITK file holds the same mapping.
    np.testing.assert_allclose(mb.itk_matrix_from_transform_node(transform), summary["matrix_lps_fixed_to_moving"],
                               atol=1e-6)
    from disa.transforms.itk_io import read_itk_transform

    np.testing.assert_allclose(read_itk_transform(tmp_path / "out" / "registration.h5"),
                               summary["matrix_lps_fixed_to_moving"], atol=1e-9)
    # FRE table: 16 pairs, then mean, median, 75th percentile, max equal to the demo's numbers
    # (the table file keeps 6 significant digits).
    rows = table_values(n["table"])
    assert [r[0] for r in rows[16:]] == ["mean", "median", "75th percentile", "max"] and len(rows) == 20
    for row, key in zip(rows[16:], ("mean", "median", "p75", "max")):
        assert row[1] == pytest.approx(summary["before"][key], rel=1e-5)
        assert row[2] == pytest.approx(summary["after"][key], rel=1e-5)
    fixed = mb.landmarks_from_markups(n["fixed_landmarks"])
    landed = np.linalg.norm(mb.landmarks_from_markups(n["registered_landmarks"]) - fixed, axis=1)
    assert landed.mean() == pytest.approx(summary["after"]["mean"], rel=1e-4)
    assert summary["after"]["mean"] < summary["before"]["mean"]
    assert slicer.util.arrayFromVolume(n["moving"]).shape == slicer.util.arrayFromVolume(n["fixed"]).shape


def test_demo_scene_needs_slicer_core(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "slicer", None)  # as without the slicer-core wheel
    code = disa_main(["demo", "--output-dir", str(tmp_path / "out"), "--scene", str(tmp_path / "demo.mrb"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "slicer-core" in err and "[scene]" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "demo.mrb").exists()  # failed before any work
    monkeypatch.undo()
    assert disa_main(["demo", "--output-dir", str(tmp_path), "--scene", str(tmp_path / "demo.zip")]) == 2
    assert ".mrb" in capsys.readouterr().err
