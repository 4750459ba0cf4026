"""The MRML bridge on a real MRML scene (slicer-core wheel): volumes, transforms and markups
agree with SimpleITK/ITK conventions, and what Slicer writes to disk reads back in the engine."""
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
    sys.path.insert(0, MODULE_DIR)  # as Slicer does for a scripted module's folder

from DISARegistrationLib import mrml_bridge as mb  # noqa: E402
from disa.errors import InputError  # noqa: E402
from disa.evaluate.landmarks import read_fcsv  # noqa: E402
from disa.spatial import Image  # noqa: E402
from disa.transforms.itk_io import read_itk_transform, write_itk_transform  # noqa: E402

vtk.vtkObject.GlobalWarningDisplayOff()

# The oblique RESECT ultrasound: the module's bundled copy, else the shared development data.
_US_CANDIDATES = [os.path.join(MODULE_DIR, "Resources", "SampleData", "Case24", "Case24-US.nii.gz"),
                  "/work/shared/data/resect/Case24/Case24-US.nii.gz"]
US_PATH = next((p for p in _US_CANDIDATES if os.path.exists(p)), _US_CANDIDATES[-1])
FLIP = np.diag([-1.0, -1.0, 1.0])
FLIP4 = np.diag([-1.0, -1.0, 1.0, 1.0])


def to_ras(p_lps):
    return np.asarray(p_lps, dtype=np.float64) @ FLIP


def vtk_matrix_array(getter) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    getter(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def random_itk_matrix(rng, affine=False) -> np.ndarray:
    """A fixed->moving LPS matrix: rotation of up to ~25 degrees, shift of up to 20 mm."""
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    q[0] = abs(q[0]) + 2.0
    q /= np.linalg.norm(q)
    w, x, y, z = q
    r = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                  [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                  [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
    m = np.eye(4)
    m[:3, :3] = r @ (np.eye(3) + 0.08 * rng.normal(size=(3, 3))) if affine else r
    m[:3, 3] = rng.uniform(-20, 20, size=3)
    return m


@pytest.fixture(scope="module")
def scene():
    return slicer.vtkMRMLScene()


@pytest.fixture(scope="module")
def us_node(scene):
    if not os.path.exists(US_PATH):
        pytest.skip(f"sample volume not found: {US_PATH}")
    node = slicer.vtkMRMLScalarVolumeNode()
    node.SetName("Case24-US")
    scene.AddNode(node)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(US_PATH)
    assert storage.ReadData(node) == 1
    return node


@pytest.fixture(scope="module")
def us_sitk():
    return sitk.ReadImage(US_PATH)


def new_node(scene, class_name, name="node"):
    node = getattr(slicer, class_name)()
    node.SetName(name)
    scene.AddNode(node)
    return node


# volumes ----------------------------------------------------------------------------------------
def test_volume_node_matches_simpleitk(us_node, us_sitk):
    direction = np.array(us_sitk.GetDirection()).reshape(3, 3)
    assert np.abs(direction - np.diag(np.diag(direction))).max() > 0.1, "the test volume must be oblique"
    mtime = us_node.GetMTime()
    image = mb.image_from_volume_node(us_node)
    ref = Image.from_sitk(us_sitk)
    assert image.shape == ref.shape == (107, 107, 94)
    assert image.data.dtype == torch.float32
    assert torch.equal(image.data, ref.data)
    np.testing.assert_allclose(image.spacing, ref.spacing, atol=1e-5)
    np.testing.assert_allclose(image.origin, ref.origin, atol=1e-5)
    np.testing.assert_allclose(image.direction, ref.direction, atol=1e-5)
    # Same voxel -> same physical point as SimpleITK, for a far corner voxel.
    corner = (93, 106, 106)
    np.testing.assert_allclose(image.index_to_world() @ np.array([*corner, 1.0]),
                               [*us_sitk.TransformIndexToPhysicalPoint(corner), 1.0], atol=1e-4)
    # The copy does not alias the node's memory, and reading changed nothing.
    before = slicer.util.arrayFromVolume(us_node)[50, 50, 50].copy()
    image.data[0, 50, 50, 50] += 1000.0
    assert slicer.util.arrayFromVolume(us_node)[50, 50, 50] == before
    assert us_node.GetMTime() == mtime


def test_volume_round_trip_through_node_and_file(scene, us_node, us_sitk, tmp_path):
    image = mb.image_from_volume_node(us_node)
    out = new_node(scene, "vtkMRMLScalarVolumeNode", "out")
    assert mb.update_volume_node_from_image(out, image) is out
    back = mb.image_from_volume_node(out)
    assert torch.equal(back.data, image.data)
    for attr in ("spacing", "origin", "direction"):
        np.testing.assert_allclose(getattr(back, attr), getattr(image, attr), atol=1e-9)
    assert out.GetDisplayNode() is not None
    # What Slicer writes from the updated node reads in SimpleITK as the original file does.
    path = str(tmp_path / "out.nii")
    storage = new_node(scene, "vtkMRMLVolumeArchetypeStorageNode", "st")
    storage.SetFileName(path)
    assert storage.WriteData(out) == 1
    written = sitk.ReadImage(path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(us_sitk))
    np.testing.assert_allclose(written.GetOrigin(), us_sitk.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(written.GetDirection(), us_sitk.GetDirection(), atol=1e-5)
    np.testing.assert_allclose(written.GetSpacing(), us_sitk.GetSpacing(), atol=1e-5)


def test_vector_volume_and_channel_checks(scene):
    rng = np.random.default_rng(0)
    image = Image.from_array(rng.normal(size=(2, 5, 6, 7)), spacing=(0.5, 1.0, 2.0),
                             origin=(10.0, -20.0, 30.0), direction=np.diag([1.0, -1.0, -1.0]))
    vec = new_node(scene, "vtkMRMLVectorVolumeNode", "vec")
    mb.update_volume_node_from_image(vec, image)
    back = mb.image_from_volume_node(vec)
    assert back.channels == 2 and back.shape == (5, 6, 7)
    assert torch.allclose(back.data, image.data)
    np.testing.assert_allclose(back.direction, image.direction, atol=1e-12)
    np.testing.assert_allclose(back.origin, image.origin, atol=1e-12)
    with pytest.raises(InputError, match="vector volume"):
        mb.update_volume_node_from_image(new_node(scene, "vtkMRMLScalarVolumeNode", "s"), image)
    with pytest.raises(InputError, match="no image data"):
        mb.image_from_volume_node(new_node(scene, "vtkMRMLScalarVolumeNode", "empty"))
    with pytest.raises(InputError, match="vtkMRMLVolumeNode"):
        mb.image_from_volume_node(new_node(scene, "vtkMRMLLinearTransformNode", "t"))


def test_non_linear_parent_is_refused_linear_parent_is_ignored(scene, us_node):
    image = Image.from_array(np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6), origin=(1, 2, 3))
    vol = new_node(scene, "vtkMRMLScalarVolumeNode", "v")
    mb.update_volume_node_from_image(vol, image)
    lin = new_node(scene, "vtkMRMLLinearTransformNode", "lin")
    mb.set_linear_transform_node_from_itk(lin, random_itk_matrix(np.random.default_rng(1)))
    vol.SetAndObserveTransformNodeID(lin.GetID())
    np.testing.assert_allclose(mb.image_from_volume_node(vol).origin, [1, 2, 3])  # local geometry
    np.testing.assert_allclose(mb.local_to_world_lps(vol),
                               FLIP4 @ vtk_matrix_array(lin.GetMatrixTransformToWorld) @ FLIP4)
    grid = new_node(scene, "vtkMRMLGridTransformNode", "grid")
    vol.SetAndObserveTransformNodeID(grid.GetID())
    with pytest.raises(InputError, match="non-linear"):
        mb.image_from_volume_node(vol)
    with pytest.raises(InputError, match="not linear"):
        mb.itk_matrix_from_transform_node(grid)
    with pytest.raises(InputError, match="linear transform node"):
        mb.set_linear_transform_node_from_itk(grid, np.eye(4))


# transforms -------------------------------------------------------------------------------------
@pytest.mark.parametrize("affine", [False, True])
def test_transform_node_moves_points_as_the_itk_matrix_says(scene, affine):
    rng = np.random.default_rng(7 + affine)
    m = random_itk_matrix(rng, affine)  # fixed LPS -> moving LPS
    node = new_node(scene, "vtkMRMLLinearTransformNode", "reg")
    mb.set_linear_transform_node_from_itk(node, m)
    np.testing.assert_allclose(mb.itk_matrix_from_transform_node(node), m, atol=1e-12)
    # A moving-space point, pushed to parent (world = fixed space), is the fixed point that the
    # ITK matrix maps onto it.
    for _ in range(5):
        x_fixed = rng.uniform(-80, 80, size=3)
        p_moving = m[:3, :3] @ x_fixed + m[:3, 3]
        got_ras = node.GetTransformToParent().TransformPoint(*to_ras(p_moving))
        np.testing.assert_allclose(got_ras, to_ras(x_fixed), atol=1e-9)


def test_hardening_moving_volume_lands_where_itk_matrix_says(scene):
    m = random_itk_matrix(np.random.default_rng(3))
    moving = Image.from_array(np.ones((4, 5, 6), np.float32), spacing=(0.7, 0.8, 0.9),
                              origin=(-5.0, 12.0, 40.0), direction=np.diag([-1.0, 1.0, -1.0]))
    vol = new_node(scene, "vtkMRMLScalarVolumeNode", "moving")
    mb.update_volume_node_from_image(vol, moving)
    node = new_node(scene, "vtkMRMLLinearTransformNode", "reg")
    mb.set_linear_transform_node_from_itk(node, m)
    vol.SetAndObserveTransformNodeID(node.GetID())
    vol.HardenTransform()
    assert vol.GetParentTransformNode() is None
    hardened = mb.image_from_volume_node(vol)
    inv = np.linalg.inv(m)
    for ijk in [(0, 0, 0), (5, 4, 3), (2, 0, 3)]:
        p_moving = moving.index_to_world() @ np.array([*ijk, 1.0])
        np.testing.assert_allclose(hardened.index_to_world() @ np.array([*ijk, 1.0]), inv @ p_moving,
                                   atol=1e-9)


@pytest.mark.parametrize("suffix", [".h5", ".tfm"])
def test_slicer_transform_files_agree_with_itk(scene, tmp_path, suffix):
    """Key CLI <-> Slicer check: a transform saved by Slicer reads in SimpleITK (and the engine) as
    the ITK matrix the bridge was given, and an engine-written file loads into the same node."""
    rng = np.random.default_rng(11)
    m = random_itk_matrix(rng, affine=True)
    node = new_node(scene, "vtkMRMLLinearTransformNode", "reg")
    mb.set_linear_transform_node_from_itk(node, m)
    path = str(tmp_path / f"slicer{suffix}")
    storage = new_node(scene, "vtkMRMLTransformStorageNode", "ts")
    storage.SetFileName(path)
    assert storage.WriteData(node) == 1
    np.testing.assert_allclose(read_itk_transform(path), m, atol=1e-9)
    tx = sitk.ReadTransform(path)
    x = rng.uniform(-50, 50, size=3)
    np.testing.assert_allclose(tx.TransformPoint(x.tolist()), m[:3, :3] @ x + m[:3, 3], atol=1e-8)

    engine_path = str(tmp_path / f"engine{suffix}")
    write_itk_transform(engine_path, m, center=(3.0, -4.0, 5.0))
    loaded = new_node(scene, "vtkMRMLLinearTransformNode", "loaded")
    reader = new_node(scene, "vtkMRMLTransformStorageNode", "tr")
    reader.SetFileName(engine_path)
    assert reader.ReadData(loaded) == 1
    np.testing.assert_allclose(mb.itk_matrix_from_transform_node(loaded), m, atol=1e-9)


def test_world_matrix_and_registration_references(scene):
    rng = np.random.default_rng(5)
    a, b = random_itk_matrix(rng), random_itk_matrix(rng)
    parent = new_node(scene, "vtkMRMLLinearTransformNode", "parent")
    child = new_node(scene, "vtkMRMLLinearTransformNode", "child")
    mb.set_linear_transform_node_from_itk(parent, a)
    mb.set_linear_transform_node_from_itk(child, b)
    child.SetAndObserveTransformNodeID(parent.GetID())
    np.testing.assert_allclose(mb.itk_matrix_from_transform_node(child), b, atol=1e-12)
    # Resampling through child then parent: fixed point -> parent's space -> child's space.
    np.testing.assert_allclose(mb.itk_matrix_from_transform_node(child, world=True), b @ a, atol=1e-9)
    fixed = new_node(scene, "vtkMRMLScalarVolumeNode", "f")
    moving = new_node(scene, "vtkMRMLScalarVolumeNode", "m")
    mb.set_registration_references(child, fixed, moving)
    assert child.GetNodeReference(child.GetFixedNodeReferenceRole()) is fixed
    assert child.GetNodeReference(child.GetMovingNodeReferenceRole()) is moving
    with pytest.raises(InputError, match="4x4"):
        mb.set_linear_transform_node_from_itk(child, np.eye(3))


# markups ----------------------------------------------------------------------------------------
def test_markups_world_positions_in_lps(scene, tmp_path):
    node = new_node(scene, "vtkMRMLMarkupsFiducialNode", "F")
    ras_local = np.array([[10.0, 20.0, 30.0], [-5.5, 0.25, 7.0], [0.0, -40.0, 12.0]])
    for i, p in enumerate(ras_local):
        node.AddControlPoint(vtk.vtkVector3d(*p), f"L{i + 1}")
    np.testing.assert_allclose(mb.landmarks_from_markups(node), ras_local * [-1, -1, 1])
    assert mb.markup_labels(node) == ["L1", "L2", "L3"]

    # Under a transform, world positions move with it.
    m = random_itk_matrix(np.random.default_rng(9))
    t = new_node(scene, "vtkMRMLLinearTransformNode", "t")
    mb.set_linear_transform_node_from_itk(t, m)
    node.SetAndObserveTransformNodeID(t.GetID())
    world_lps = mb.landmarks_from_markups(node)
    expected = (np.linalg.inv(m) @ np.c_[ras_local * [-1, -1, 1], np.ones(3)].T).T[:, :3]
    np.testing.assert_allclose(world_lps, expected, atol=1e-9)

    # Slicer's .fcsv of the same node reads back in the engine as the same LPS world points.
    node.SetAndObserveTransformNodeID(None)
    path = str(tmp_path / "f.fcsv")
    storage = new_node(scene, "vtkMRMLMarkupsFiducialStorageNode", "fs")
    storage.SetFileName(path)
    assert storage.WriteData(node) == 1
    read = read_fcsv(path)
    np.testing.assert_allclose(read.points, mb.landmarks_from_markups(node), atol=1e-6)
    assert read.labels == ["L1", "L2", "L3"]


def test_markups_from_points_round_trip_and_errors(scene):
    node = new_node(scene, "vtkMRMLMarkupsFiducialNode", "out")
    node.AddControlPoint(vtk.vtkVector3d(1, 1, 1), "old")
    t = new_node(scene, "vtkMRMLLinearTransformNode", "t")
    mb.set_linear_transform_node_from_itk(t, random_itk_matrix(np.random.default_rng(2)))
    node.SetAndObserveTransformNodeID(t.GetID())
    pts = np.random.default_rng(4).uniform(-60, 60, size=(6, 3))
    labels = [f"p{i}" for i in range(6)]
    assert mb.markups_from_points(node, pts, labels) is node
    assert node.GetNumberOfControlPoints() == 6
    np.testing.assert_allclose(mb.landmarks_from_markups(node), pts, atol=1e-9)
    assert mb.markup_labels(node) == labels
    mb.markups_from_points(node, pts[:2])
    assert node.GetNumberOfControlPoints() == 2 and all(mb.markup_labels(node))
    with pytest.raises(InputError, match="labels"):
        mb.markups_from_points(node, pts, labels[:2])
    with pytest.raises(InputError, match="NaN"):
        mb.markups_from_points(node, [[0.0, np.nan, 1.0]])
    node.SetNthControlPointPositionMissing(1)
    with pytest.raises(InputError, match="no position"):
        mb.landmarks_from_markups(node)


# the module's logic, on the wheel -----------------------------------------------------------------
# DISARegistration.py imports Slicer's GUI-side Python (qt, ScriptedLoadableModule,
# parameterNodeWrapper), which the wheel lacks. Minimal stand-ins let its logic and self-test run
# against a real scene and the real engine; the widget is not exercised here.
def _stub_modules():
    import types
    import unittest

    qt = types.ModuleType("qt")
    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.parameterNodeWrapper = lambda cls: cls
    pnw.Choice = pnw.WithinRange = lambda *args: None
    slm = types.ModuleType("slicer.ScriptedLoadableModule")

    class Logic:
        def __init__(self):
            pass

    class Test(unittest.TestCase):
        def delayDisplay(self, message, msec=None):
            pass

    slm.ScriptedLoadableModule = slm.ScriptedLoadableModuleWidget = type("Base", (), {})
    slm.ScriptedLoadableModuleLogic = Logic
    slm.ScriptedLoadableModuleTest = Test
    return {"qt": qt, "slicer.parameterNodeWrapper": pnw, "slicer.ScriptedLoadableModule": slm}


@pytest.fixture()
def module(monkeypatch):
    import importlib.util

    scene = slicer.vtkMRMLScene()
    for name, stub in _stub_modules().items():
        monkeypatch.setitem(sys.modules, name, stub)
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    spec = importlib.util.spec_from_file_location("DISARegistration", os.path.join(MODULE_DIR, "DISARegistration.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _available_metric():
    from disa.similarity import REGISTRY

    for name in ("ncc", "mind", "lc2"):
        if name in REGISTRY:
            return name
    pytest.skip("no similarity registered in the engine yet")


def _rigid_ras(deg, axis, shift):
    from scipy.spatial.transform import Rotation

    m = np.eye(4)
    m[:3, :3] = Rotation.from_rotvec(np.deg2rad(deg) * np.asarray(axis) / np.linalg.norm(axis)).as_matrix()
    m[:3, 3] = shift
    return m


@pytest.mark.parametrize("start", ["initial transform", "moving parent"])
def test_module_logic_respects_parent_and_initial_transforms(module, start):
    """Fixed volume under a rotated parent, moving volume a shifted copy of the fixed one as seen
    in world: the output's to-parent must undo exactly the shift, whatever the parent is. The
    rough start pose comes from the initial transform node or from the moving volume's parent."""
    scene = slicer.mrmlScene
    from DISARegistrationLib.self_test_data import synthetic_volume_array

    array = synthetic_volume_array((24, 26, 28), seed=1)
    parent_ras = _rigid_ras(12.0, (1.0, 2.0, 0.5), (4.0, -3.0, 6.0))
    shift_ras = np.array([2.5, -1.5, 2.0])
    ijk_to_ras = np.diag([1.0, 1.0, 1.0, 1.0])
    ijk_to_ras[:3, 3] = (-13.5, -12.5, -11.5)  # grid centred on the origin

    fixed = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "fixed")
    mb.update_volume_node_from_image(fixed, Image.from_array(array))
    fixed.SetIJKToRASMatrix(_vtk4(ijk_to_ras))
    parent = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "parent")
    parent.SetMatrixTransformToParent(_vtk4(parent_ras))
    fixed.SetAndObserveTransformNodeID(parent.GetID())

    shift = np.eye(4)
    shift[:3, 3] = shift_ras
    moving_ijk_to_ras = shift @ parent_ras @ ijk_to_ras
    moving = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "moving")
    mb.update_volume_node_from_image(moving, Image.from_array(array))
    moving.SetIJKToRASMatrix(_vtk4(moving_ijk_to_ras))
    # A rough initial guess (1 mm off) given as a Slicer transform: moving -> world.
    initial = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "initial")
    guess = np.eye(4)
    guess[:3, 3] = -shift_ras + [1.0, 0.0, -0.5]
    initial.SetMatrixTransformToParent(_vtk4(guess))
    if start == "moving parent":
        moving.SetAndObserveTransformNodeID(initial.GetID())
    out_volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "out")
    fixed_before = slicer.util.arrayFromVolume(fixed).copy()
    moving_mtime = moving.GetMTime()

    logic = module.DISARegistrationLogic()
    out = logic.registerVolumes(fixedVolumeNode=fixed, movingVolumeNode=moving,
                                initialTransformNode=initial if start == "initial transform" else None,
                                outputVolumeNode=out_volume, metric=_available_metric(), search="local",
                                device="cpu")
    assert logic.lastResult.initial_similarity < logic.lastResult.final_similarity
    # The search started at the rough guess: only ~1 mm (and no rotation) was left to find.
    assert np.abs(logic.lastResult.params).max() < 2.0, logic.lastResult.params
    to_parent = vtk_matrix_array(out.GetMatrixTransformToParent)
    np.testing.assert_allclose(to_parent[:3, 3], -shift_ras, atol=0.3)
    np.testing.assert_allclose(to_parent[:3, :3], np.eye(3), atol=0.01)
    assert out.GetNodeReference(out.GetFixedNodeReferenceRole()) is fixed
    assert out.GetNodeReference(out.GetMovingNodeReferenceRole()) is moving
    assert moving.GetMTime() == moving_mtime
    assert moving.GetParentTransformNode() is (initial if start == "moving parent" else None)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(fixed), fixed_before)
    # The resampled output lives on the fixed grid, in the fixed volume's frame, and matches it.
    assert out_volume.GetParentTransformNode() is parent
    resampled = slicer.util.arrayFromVolume(out_volume)[4:-4, 4:-4, 4:-4]
    assert np.corrcoef(resampled.ravel(), array[4:-4, 4:-4, 4:-4].ravel())[0, 1] > 0.99
    # Wrong inputs are refused with messages the user can act on.
    with pytest.raises(InputError, match="different"):
        logic.registerVolumes(fixedVolumeNode=fixed, movingVolumeNode=fixed)
    with pytest.raises(InputError, match="output volume"):
        logic.registerVolumes(fixedVolumeNode=fixed, movingVolumeNode=moving, outputVolumeNode=moving)
    with pytest.raises(InputError, match="under the output transform"):
        logic.registerVolumes(fixedVolumeNode=fixed, movingVolumeNode=moving, outputTransformNode=parent)


def test_module_self_test_runs(module):
    from disa.similarity import REGISTRY

    if "ncc" not in REGISTRY:
        pytest.skip("the module self-test registers with 'ncc', which the engine does not offer yet")
    case = module.DISARegistrationTest()
    # test_SampleCaseDISA needs Slicer's SampleData module (Qt); test_logic.py runs the same
    # registration of the sample pair through the Qt-free logic.
    for test in (case.test_BridgeRoundTrip, case.test_RecoverKnownShift):
        case.setUp()
        test()


def _vtk4(a):
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(a[r, c]))
    return m


# the panel's helpers, on the wheel ----------------------------------------------------------------
def test_sample_landmarks_load_as_point_lists_and_are_reused(scene):
    from DISARegistrationLib import sample_data
    from disa.evaluate import read_landmarks
    from disa.sample_data import case24

    us, mr = sample_data.load_sample_landmarks(scene)
    c = case24()
    np.testing.assert_allclose(mb.landmarks_from_markups(us), read_landmarks(c.fixed_landmarks).points, atol=1e-9)
    np.testing.assert_allclose(mb.landmarks_from_markups(mr), read_landmarks(c.moving_landmarks).points, atol=1e-9)
    assert us.GetName() == "Case24-US landmarks" and mb.markup_labels(us) == read_landmarks(c.fixed_landmarks).labels
    again = sample_data.load_sample_landmarks(scene)
    assert again[0] is us and again[1] is mr and us.GetNumberOfControlPoints() == 16


def test_map_point_and_measure_text(scene):
    from DISARegistrationLib.widget_helpers import format_measures, map_point_ras

    node = new_node(scene, "vtkMRMLMarkupsFiducialNode", "map point")
    with pytest.raises(ValueError, match="no point yet"):
        map_point_ras(node, scene)
    node.AddControlPoint(vtk.vtkVector3d(1.0, 2.0, 3.0), "p")
    t = new_node(scene, "vtkMRMLLinearTransformNode", "shift")
    shift = np.eye(4)
    shift[:3, 3] = [5.0, 0.0, -2.0]  # RAS, to parent
    t.SetMatrixTransformToParent(_vtk4(shift))
    node.SetAndObserveTransformNodeID(t.GetID())
    np.testing.assert_allclose(map_point_ras(node, scene), [6.0, 2.0, 1.0], atol=1e-9)  # world position
    with pytest.raises(ValueError, match="crosshair"):
        map_point_ras(None, slicer.vtkMRMLScene())
    text = format_measures({"n": 16, "mean after": 1.234, "labels": ["a"], "ok": True})
    assert text == "n 16, mean after 1.23 mm" and format_measures({}) == "no landmark pairs"
