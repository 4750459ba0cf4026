"""RegistrationLogic (DISARegistrationLib/logic.py) on a real MRML scene (slicer-core wheel):
the same mapping as the CLI's ITK file, inputs never modified, cancel within a second with no
half-written output, FRE tables equal to `disa evaluate`, grid transforms, similarity maps."""
from __future__ import annotations

import json
import os
import sys
import threading
import time

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
from DISARegistrationLib import scene_io  # noqa: E402
from DISARegistrationLib.logic import RegistrationLogic  # noqa: E402
from disa.cli import main as disa_main  # noqa: E402
from disa.errors import CancelledError, InputError  # noqa: E402
from disa.evaluate import read_landmarks, write_fcsv  # noqa: E402
from disa.evaluate.landmarks import Landmarks  # noqa: E402
from disa.features.weights import DEFAULT_WEIGHTS  # noqa: E402
from disa.sample_data import case24, move_image, rigid_matrix  # noqa: E402
from disa.spatial import Image, load_image, resample_to_spacing, save_image  # noqa: E402
from disa.spatial.image import sample  # noqa: E402
from disa.transforms.itk_io import read_itk_transform, write_itk_transform  # noqa: E402

FLIP = np.array([-1.0, -1.0, 1.0])
#: Small-case settings shared by the logic and the CLI: MIND-SSC, local search, levels 4 and 2 mm.
FAST = dict(metric="mind", search="local", resolution=2.0, seed=0)
FAST_CLI = ["--metric", "mind", "--search", "local", "--spacings", "4,2", "--seed", "0", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Another heavy job may share the CPU: one torch thread is much faster than two contending.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """Case 24's MR at 2 mm as oblique NIfTI files: the MR (fixed) and a copy moved by 6 deg / 5 mm
    (moving), with the MR landmarks in both frames.

    One modality on purpose: the logic-vs-CLI comparison needs a sharp optimum. Node and file
    geometry differ in the last bit (RAS round trip), and on the ultrasound-MR pair at this
    resolution such a difference can send L-BFGS to a different pose in a flat valley."""
    try:
        c = case24()
    except InputError as exc:
        pytest.skip(str(exc))
    out = tmp_path_factory.mktemp("case")
    fixed = resample_to_spacing(load_image(c.moving), 2.0)
    assert np.abs(fixed.direction - np.diag(np.diag(fixed.direction))).max() > 0.1  # oblique
    perturbation = rigid_matrix((3.5, -3.5, 3.5), (3.0, -3.0, 2.5), fixed.center())
    moving = move_image(fixed, perturbation)
    paths = {"fixed": str(out / "mr.nii.gz"), "moving": str(out / "mr-moved.nii.gz"),
             "fixed_lm": str(out / "mr.fcsv"), "moving_lm": str(out / "mr-moved.fcsv")}
    save_image(fixed, paths["fixed"])
    save_image(moving, paths["moving"])
    mr_lm = read_landmarks(c.moving_landmarks)
    moved = mr_lm.points @ perturbation[:3, :3].T + perturbation[:3, 3]
    write_fcsv(paths["fixed_lm"], mr_lm)
    write_fcsv(paths["moving_lm"], Landmarks(moved, mr_lm.labels))
    paths["dir"] = str(out)
    return paths


@pytest.fixture(scope="module")
def scene():
    return scene_io.make_scene()


def read_volume(scene, path, name):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(path)
    assert storage.ReadData(node) == 1
    return node


def read_markups(scene, path, name):
    lm = read_landmarks(path)
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    return mb.markups_from_points(node, lm.points, lm.labels)


@pytest.fixture(scope="module")
def nodes(scene, case):
    return {"fixed": read_volume(scene, case["fixed"], "MR"), "moving": read_volume(scene, case["moving"], "MR moved"),
            "fixed_lm": read_markups(scene, case["fixed_lm"], "MR landmarks"),
            "moving_lm": read_markups(scene, case["moving_lm"], "MR moved landmarks")}


def node_ids(scene):
    return sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))


def scene_xml(scene) -> str:
    scene.SetSaveToXMLString(1)
    scene.Commit()
    return scene.GetSceneXMLString()


def node_xml(xml: str, node_id: str) -> str:
    """The XML element of one node in a scene's MRML text (no MTimes in there)."""
    key = f' id="{node_id}"'
    start = xml.index(key)
    return xml[xml.rindex("<", 0, start):xml.index(">", start) + 1]


def snapshot(scene, *nodes):
    """What must not change in input nodes: XML (names, transform IDs, references, attributes),
    voxels, IJKToRAS, control points and transform matrices, byte for byte."""
    xml = scene_xml(scene)
    out = []
    for node in nodes:
        item = [node_xml(xml, node.GetID()), node.GetName(), str(node.GetTransformNodeID())]
        if node.IsA("vtkMRMLVolumeNode"):
            m = vtk.vtkMatrix4x4()
            node.GetIJKToRASMatrix(m)
            item += [slicer.util.arrayFromVolume(node).tobytes(),
                     str([m.GetElement(r, c) for r in range(4) for c in range(4)])]
        elif node.IsA("vtkMRMLMarkupsNode"):
            item.append(slicer.util.arrayFromMarkupsControlPoints(node).tobytes())
        elif node.IsA("vtkMRMLTransformNode"):
            m = vtk.vtkMatrix4x4()
            node.GetMatrixTransformToParent(m)
            item.append(str([m.GetElement(r, c) for r in range(4) for c in range(4)]))
        out.append(item)
    return out


def corners_lps(node):
    image = mb.image_from_volume_node(node)
    size = np.asarray(image.size) - 1
    idx = np.array([[i, j, k, 1.0] for i in (0, size[0]) for j in (0, size[1]) for k in (0, size[2])])
    return (mb.local_to_world_lps(node) @ image.index_to_world() @ idx.T).T[:, :3]


def apply(m, p):
    return p @ m[:3, :3].T + m[:3, 3]


# registration: the CLI's mapping, inputs untouched ----------------------------------------------
@pytest.fixture(scope="module")
def registered(scene, nodes, case):
    """One logic run and one CLI run on the same small case (shared by several tests)."""
    before = snapshot(scene, nodes["fixed"], nodes["moving"], nodes["fixed_lm"], nodes["moving_lm"])
    logic = RegistrationLogic(scene, device="cpu", threads=1)
    out = logic.register(nodes["fixed"], nodes["moving"], **FAST)
    after = snapshot(scene, nodes["fixed"], nodes["moving"], nodes["fixed_lm"], nodes["moving_lm"])
    cli_path = os.path.join(case["dir"], "cli.h5")
    assert disa_main(["register", "--fixed", case["fixed"], "--moving", case["moving"],
                      "--output-transform", cli_path] + FAST_CLI) == 0
    return {"logic": logic, "node": out, "cli": read_itk_transform(cli_path), "cli_path": cli_path,
            "before": before, "after": after}


def test_register_matches_cli_and_leaves_inputs_unchanged(registered, nodes):
    out, logic = registered["node"], registered["logic"]
    assert out.IsA("vtkMRMLLinearTransformNode") and out.GetName() == "MR moved to MR"
    assert out.GetNodeReference(out.GetFixedNodeReferenceRole()).GetID() == nodes["fixed"].GetID()
    assert out.GetNodeReference(out.GetMovingNodeReferenceRole()).GetID() == nodes["moving"].GetID()
    assert logic.lastResult.metric == "mind" and logic.lastResult.final_similarity > logic.lastResult.initial_similarity
    # The node's "to parent" is the inverse-convention partner of the CLI's ITK file.
    points = corners_lps(nodes["fixed"])
    np.testing.assert_allclose(apply(mb.itk_matrix_from_transform_node(out), points),
                               apply(registered["cli"], points), atol=0.01)
    # ... and a moving-space point pushed "to parent" lands where the CLI maps it from.
    moving_points = apply(registered["cli"], points)
    world = np.array([out.GetTransformToParent().TransformPoint(*(p * FLIP)) for p in moving_points]) * FLIP
    np.testing.assert_allclose(world, points, atol=0.01)
    assert registered["after"] == registered["before"]


def test_initial_transform_and_parents_match_cli(scene, nodes, case, tmp_path):
    """Fixed volume under a rotated parent, start pose from an initial transform node: the result,
    taken in the volumes' own frames, equals the CLI given the same start as --initial-transform."""
    parent = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "fixed parent")
    mb.set_linear_transform_node_from_itk(parent, rigid_matrix((0.0, 8.0, -5.0), (4.0, 2.0, -3.0), np.zeros(3)))
    initial = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "initial")
    parent_lps = np.linalg.inv(mb.itk_matrix_from_transform_node(parent))  # fixed local -> world
    guess = rigid_matrix((2.0, -2.0, 2.0), (2.0, -2.0, 1.5), np.zeros(3))  # rough fixed -> moving
    # The initial transform node says world -> moving (its "to parent" moves the MR onto the US).
    mb.set_linear_transform_node_from_itk(initial, guess @ np.linalg.inv(parent_lps))
    nodes["fixed"].SetAndObserveTransformNodeID(parent.GetID())
    try:
        before = snapshot(scene, nodes["fixed"], nodes["moving"], initial, parent)
        out = RegistrationLogic(scene, device="cpu", threads=1).register(nodes["fixed"], nodes["moving"],
                                                              initialTransformNode=initial, **FAST)
        assert snapshot(scene, nodes["fixed"], nodes["moving"], initial, parent) == before
    finally:
        nodes["fixed"].SetAndObserveTransformNodeID(None)
    init_path, cli_path = str(tmp_path / "init.tfm"), str(tmp_path / "cli.h5")
    write_itk_transform(init_path, guess)  # the start in the volumes' own frames
    assert disa_main(["register", "--fixed", case["fixed"], "--moving", case["moving"], "--initial-transform",
                      init_path, "--output-transform", cli_path] + FAST_CLI) == 0
    # world -> moving local, composed with fixed local -> world: the CLI's fixed -> moving.
    local = mb.itk_matrix_from_transform_node(out, world=True) @ parent_lps
    points = corners_lps(nodes["fixed"])
    np.testing.assert_allclose(apply(local, points), apply(read_itk_transform(cli_path), points), atol=0.01)


# cancel, failure, async -------------------------------------------------------------------------
def test_cancel_stops_within_a_second_and_writes_nothing(scene):
    try:
        c = case24()
    except InputError as exc:
        pytest.skip(str(exc))
    fixed = read_volume(scene, str(c.fixed), "Case24 US")
    moving = read_volume(scene, str(c.moving), "Case24 MR")
    chosen = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "chosen output")
    chosen_state = snapshot(scene, chosen)
    ids = node_ids(scene)
    seen = []
    job = RegistrationLogic(scene, device="cpu", threads=1).registerAsync(
        fixed, moving, metric="mind", search="global", outputTransformNode=chosen,
        progress=lambda *p: seen.append(p))
    time.sleep(1.0)
    assert not job.done, "the run ended before it could be cancelled"
    job.poll()
    cancelled_at = time.perf_counter()
    job.cancel()
    assert job.wait(timeout=5.0)
    stopped_after = job._ended - cancelled_at
    print(f"cancelled during {job.progress}: stopped {stopped_after:.3f} s later")
    assert stopped_after < 1.0, f"the worker stopped {stopped_after:.2f} s after cancel"
    assert job.cancelled and isinstance(job.error, CancelledError) and job.result is None
    with pytest.raises(CancelledError):
        job.finish()
    assert node_ids(scene) == ids and snapshot(scene, chosen) == chosen_state
    assert seen and job.progress is not None and 0.0 <= job.progress[1] <= 1.0 and job.elapsed >= 1.0


def test_async_run_writes_outputs_on_the_calling_thread_and_failures_write_nothing(scene, nodes, registered):
    logic = RegistrationLogic(scene, device="cpu", threads=1)
    chosen = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "chosen")
    out_volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "MR resampled")
    ids = node_ids(scene)
    event = threading.Event()
    job = logic.registerAsync(nodes["fixed"], nodes["moving"], cancel=event, outputTransformNode=chosen,
                              outputVolumeNode=out_volume, **FAST)
    assert node_ids(scene) == ids  # nothing is written before the job is finished on this thread
    assert job.wait(timeout=60.0) and job.error is None
    out = job.finish()
    assert out is chosen and job.result is chosen
    # Only the output volume's display node is new.
    assert set(node_ids(scene)) - set(ids) == {out_volume.GetDisplayNodeID()}
    np.testing.assert_allclose(mb.itk_matrix_from_transform_node(out),
                               mb.itk_matrix_from_transform_node(registered["node"]), atol=1e-9)
    resampled = mb.image_from_volume_node(out_volume)
    fixed = mb.image_from_volume_node(nodes["fixed"])
    assert resampled.shape == fixed.shape
    np.testing.assert_allclose(resampled.index_to_world(), fixed.index_to_world(), atol=1e-6)
    assert out_volume.GetTransformNodeID() == nodes["fixed"].GetTransformNodeID()
    # A run that fails in the engine (no overlap at the start) creates nothing either.
    far = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "far")
    m = np.eye(4)
    m[:3, 3] = 500.0
    mb.set_linear_transform_node_from_itk(far, m)
    ids = node_ids(scene)
    job = logic.registerAsync(nodes["fixed"], nodes["moving"], initialTransformNode=far, **FAST)
    assert job.wait(timeout=60.0)
    assert isinstance(job.error, InputError) and "overlap" in str(job.error)
    with pytest.raises(InputError, match="overlap"):
        job.finish()
    assert node_ids(scene) == ids


# landmarks --------------------------------------------------------------------------------------
def table_rows(table):
    return [[table.GetCellText(r, c) for c in range(table.GetNumberOfColumns())]
            for r in range(table.GetNumberOfRows())]


def test_fre_table_matches_disa_evaluate(scene, nodes, registered, case, tmp_path):
    logic, out = registered["logic"], registered["node"]
    # The node's own ITK file (Slicer writes it) and the landmark files, through `disa evaluate`.
    path = str(tmp_path / "slicer.h5")
    storage = scene.AddNewNodeByClass("vtkMRMLTransformStorageNode")
    storage.SetFileName(path)
    assert storage.WriteData(out) == 1
    stats = {}
    for key, transform in (("after", path), ("cli", registered["cli_path"]), ("before", None)):
        json_path = str(tmp_path / f"{key}.json")
        args = ["evaluate", "--fixed-landmarks", case["fixed_lm"], "--moving-landmarks", case["moving_lm"],
                "--json", json_path] + ([] if transform is None else ["--transform", transform])
        assert disa_main(args) == 0
        with open(json_path) as fh:
            stats[key] = json.load(fh)
    ids = node_ids(scene)
    fre = logic.computeFRE(out, nodes["fixed_lm"], nodes["moving_lm"])
    table = fre["tableNode"]
    assert set(node_ids(scene)) - set(ids) == {table.GetID()}
    np.testing.assert_allclose(fre["errorsAfter"], stats["after"]["errors"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(fre["errorsBefore"], stats["before"]["errors"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(fre["errorsAfter"], stats["cli"]["errors"], atol=0.01)
    for key in ("mean", "median", "p75", "max", "std", "p25"):
        assert fre["after"][key] == pytest.approx(stats["after"]["statistics"][key], abs=1e-9)
        assert fre["before"][key] == pytest.approx(stats["before"]["statistics"][key], abs=1e-9)
    assert fre["mean after"] == fre["after"]["mean"] and fre["n"] == 16
    assert fre["mean after"] < 0.5 < 4.0 < fre["mean before"]
    # The table: one row per pair, then mean, median, 75th percentile, max.
    t = table.GetTable()
    assert [t.GetColumnName(i) for i in range(3)] == ["label", "error before (mm)", "error after (mm)"]
    rows = table_rows(table)
    assert [r[0] for r in rows] == fre["labels"] + ["mean", "median", "75th percentile", "max"]
    values = np.array([[t.GetValue(r, 1).ToDouble(), t.GetValue(r, 2).ToDouble()] for r in range(len(rows))])
    np.testing.assert_allclose(values[:16, 1], stats["after"]["errors"], atol=1e-9)
    s_after = stats["after"]["statistics"]
    np.testing.assert_allclose(values[16:, 1], [s_after[k] for k in ("mean", "median", "p75", "max")], atol=1e-9)
    # Same labels in another order pair by label; an existing table is refilled, not duplicated.
    shuffled = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "MR moved landmarks shuffled")
    lm = read_landmarks(case["moving_lm"])
    order = np.random.default_rng(0).permutation(16)
    mb.markups_from_points(shuffled, lm.points[order], [lm.labels[i] for i in order])
    again = logic.computeFRE(out, nodes["fixed_lm"], shuffled, tableNode=table)
    assert again["tableNode"] is table and table.GetNumberOfRows() == 20
    np.testing.assert_allclose(again["errorsAfter"], fre["errorsAfter"], atol=1e-12)


def test_registered_landmarks_land_on_the_fixed_landmarks(scene, nodes, registered):
    logic, out = registered["logic"], registered["node"]
    before = snapshot(scene, nodes["moving_lm"])
    reg = logic.registeredLandmarks(nodes["moving_lm"], out)
    assert snapshot(scene, nodes["moving_lm"]) == before
    assert reg.GetTransformNodeID() == out.GetID() and reg.GetName() == "MR moved landmarks registered"
    fixed = mb.landmarks_from_markups(nodes["fixed_lm"])
    landed = np.linalg.norm(mb.landmarks_from_markups(reg) - fixed, axis=1)
    fre = logic.computeFRE(out, nodes["fixed_lm"], nodes["moving_lm"])
    np.testing.assert_allclose(landed, fre["errorsAfter"], atol=1e-6)  # rigid: same distances
    # Moving landmarks that already sit under the result are taken back through it.
    nodes["moving_lm"].SetAndObserveTransformNodeID(out.GetID())
    try:
        again = logic.computeFRE(out, nodes["fixed_lm"], nodes["moving_lm"], tableNode=fre["tableNode"])
        np.testing.assert_allclose(again["errorsAfter"], fre["errorsAfter"], atol=1e-9)
        reg2 = logic.registeredLandmarks(nodes["moving_lm"], out, outputNode=reg)
        assert reg2 is reg
        np.testing.assert_allclose(mb.landmarks_from_markups(reg), mb.landmarks_from_markups(nodes["moving_lm"]),
                                   atol=1e-9)
    finally:
        nodes["moving_lm"].SetAndObserveTransformNodeID(None)


# grid transforms (the bridge for dense fields) ---------------------------------------------------
def synthetic_field():
    """A smooth 3-channel LPS displacement field (mm) on an oblique 9x10x11 grid."""
    rng = np.random.default_rng(3)
    direction = rigid_matrix((20.0, -15.0, 30.0), (0.0, 0.0, 0.0), np.zeros(3))[:3, :3]
    z, y, x = np.meshgrid(np.arange(11), np.arange(10), np.arange(9), indexing="ij")
    data = np.stack([np.sin(0.4 * x + c) * 3.0 + 0.2 * y - 0.1 * z * c for c in (0.0, 1.0, 2.0)])
    data += 0.1 * rng.normal(size=data.shape)
    return Image.from_array(data.astype(np.float32), spacing=(2.0, 2.5, 3.0), origin=(-10.0, 20.0, 5.0),
                            direction=direction)


def engine_displace(field: Image, points_lps: np.ndarray) -> np.ndarray:
    """p + d(p), d trilinearly interpolated by the engine's sampler (grid_sample, align_corners)."""
    idx = apply(field.world_to_index(), points_lps)
    norm = 2.0 * idx / (np.asarray(field.size) - 1.0) - 1.0
    grid = torch.as_tensor(norm, dtype=torch.float32).view(1, 1, 1, -1, 3)
    d, _ = sample(field.data[None], grid)
    return points_lps + d[0, :, 0, 0, :].numpy().T.astype(np.float64)


def test_grid_transform_maps_points_like_the_displacement_field(scene, tmp_path):
    field = synthetic_field()
    node = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "dense")
    mb.set_grid_transform_node_from_displacement(node, field)
    rng = np.random.default_rng(5)
    idx = np.c_[rng.uniform(0.5, 7.5, 20), rng.uniform(0.5, 8.5, 20), rng.uniform(0.5, 9.5, 20), np.ones(20)]
    idx[:3, :3] = [[0, 0, 0], [8, 9, 10], [3, 4, 5]]  # grid nodes and corners too
    points = (field.index_to_world() @ idx.T).T[:, :3]
    expected = engine_displace(field, points)
    from_parent = node.GetTransformFromParent()
    got = np.array([from_parent.TransformPoint(*(p * FLIP)) for p in points]) * FLIP
    np.testing.assert_allclose(got, expected, atol=1e-4)
    # Slicer's ITK file of the node is a displacement field with the same mapping in ITK.
    path = str(tmp_path / "dense.h5")
    storage = scene.AddNewNodeByClass("vtkMRMLTransformStorageNode")
    storage.SetFileName(path)
    assert storage.WriteData(node) == 1
    tx = sitk.ReadTransform(path)
    np.testing.assert_allclose([tx.TransformPoint(p.tolist()) for p in points], expected, atol=1e-4)
    # "to parent" inverts it: a moving volume under the node lands on the fixed grid.
    back = np.array([node.GetTransformToParent().TransformPoint(*(p * FLIP)) for p in expected]) * FLIP
    np.testing.assert_allclose(back, points, atol=1e-2)
    with pytest.raises(InputError, match="3 channels"):
        mb.set_grid_transform_node_from_displacement(node, field.same_geometry(field.data[:2]))


# DISA descriptors are computed once per unchanged volume -----------------------------------------
def test_disa_descriptors_are_reused_while_volumes_are_unchanged(scene, nodes, monkeypatch):
    import disa.similarity.disa as disa_similarity
    from disa.features.network import DISANet

    torch.manual_seed(0)
    net = DISANet().eval()
    calls = []
    net.register_forward_hook(lambda *args: calls.append(1))
    monkeypatch.setattr(disa_similarity, "_load_default", lambda path: net)  # the weights are still training
    logic = RegistrationLogic(scene, device="cpu", threads=1)
    settings = dict(metric="disa", search="local", resolution=2.0, maxEvaluations=6)
    logic.register(nodes["fixed"], nodes["moving"], **settings)
    first, misses = len(calls), logic.descriptorCache.misses
    assert first > 0 and misses == 4  # fixed and moving, two levels
    logic.register(nodes["fixed"], nodes["moving"], **settings)
    assert len(calls) == first and logic.descriptorCache.misses == misses and logic.descriptorCache.hits >= 4
    # An edited volume is described again.
    edited = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "MR edited")
    image = mb.image_from_volume_node(nodes["moving"])
    image.data[0, 5, 5, 5] += 50.0
    mb.update_volume_node_from_image(edited, image)
    edited.SetIJKToRASMatrix(_ijk_to_ras(nodes["moving"]))
    logic.register(nodes["fixed"], edited, **settings)
    assert logic.descriptorCache.misses == misses + 2 and len(calls) > first
    # Similarity maps at other points reuse the moving volume's descriptors.
    import disa.features.weights as weights

    monkeypatch.setattr(weights, "load_weights", lambda *args, **kwargs: (net, {}))
    points = mb.landmarks_from_markups(nodes["fixed_lm"]) * FLIP
    logic.similarityMap(nodes["fixed"], nodes["moving"], points[0], metric="disa")
    misses = logic.descriptorCache.misses
    logic.similarityMap(nodes["fixed"], nodes["moving"], points[1], metric="disa")
    assert logic.descriptorCache.misses == misses


def _ijk_to_ras(node):
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return m


def test_disa_registration_with_the_shipped_weights(scene, nodes):
    if not DEFAULT_WEIGHTS.exists():
        pytest.skip(f"DISA weights not trained yet: {DEFAULT_WEIGHTS}")
    logic = RegistrationLogic(scene, device="cpu", threads=1)
    out = logic.register(nodes["fixed"], nodes["moving"], metric="disa", search="local", resolution=2.0)
    assert logic.lastResult.metric == "disa" and out.IsA("vtkMRMLLinearTransformNode")
    fre = logic.computeFRE(out, nodes["fixed_lm"], nodes["moving_lm"])
    assert np.isfinite(fre["mean after"])
    node = logic.similarityMap(nodes["fixed"], nodes["moving"], _first_point_ras(nodes["fixed_lm"]), metric="disa")
    assert np.isfinite(slicer.util.arrayFromVolume(node)).all()


# similarity maps --------------------------------------------------------------------------------
def _first_point_ras(markups):
    p = [0.0, 0.0, 0.0]
    markups.GetNthControlPointPositionWorld(0, p)
    return np.array(p)


@pytest.mark.parametrize("metric", ["mind", "lc2"])
def test_similarity_map_on_the_moving_grid(scene, nodes, registered, metric):
    from disa.similarity.maps import similarity_map

    logic = RegistrationLogic(scene, device="cpu", threads=1)
    point_ras = _first_point_ras(nodes["fixed_lm"])
    before = snapshot(scene, nodes["fixed"], nodes["moving"])
    node = logic.similarityMap(nodes["fixed"], nodes["moving"], point_ras, metric=metric)
    assert snapshot(scene, nodes["fixed"], nodes["moving"]) == before
    expected = similarity_map(point_ras * FLIP, mb.image_from_volume_node(nodes["fixed"]),
                              mb.image_from_volume_node(nodes["moving"]), metric=metric)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(node), expected.data[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(_ijk_to_ras(node)),
                               slicer.util.arrayFromVTKMatrix(_ijk_to_ras(nodes["moving"])), atol=1e-9)
    assert node.GetDisplayNode().GetColorNodeID() == "vtkMRMLColorTableNodeRainbow"
    # Compared where the registration puts the moving volume: the map follows that transform.
    out = registered["node"]
    mapped = logic.similarityMap(nodes["fixed"], nodes["moving"], point_ras, metric=metric, transformNode=out,
                                 outputVolumeNode=node)
    assert mapped is node and node.GetTransformNodeID() == out.GetID()
    assert np.isfinite(slicer.util.arrayFromVolume(node)).all()


# errors -----------------------------------------------------------------------------------------
def test_errors_for_bad_input(scene, nodes, registered):
    logic = RegistrationLogic(scene, device="cpu", threads=1)
    ids = node_ids(scene)
    with pytest.raises(InputError, match="different"):
        logic.register(nodes["fixed"], nodes["fixed"], **FAST)
    flat = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "2-D")
    mb.update_volume_node_from_image(flat, Image.from_array(np.random.default_rng(0).normal(size=(1, 20, 20))))
    with pytest.raises(InputError, match="2-D"):
        logic.register(nodes["fixed"], flat, **FAST)
    with pytest.raises(InputError, match="output volume"):
        logic.register(nodes["fixed"], nodes["moving"], outputVolumeNode=nodes["moving"], **FAST)
    grid = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "grid output")
    with pytest.raises(InputError, match="not linear"):
        logic.register(nodes["fixed"], nodes["moving"], outputTransformNode=grid, **FAST)
    with pytest.raises(InputError, match="unknown search"):
        logic.register(nodes["fixed"], nodes["moving"], metric="mind", search="everywhere")
    other = slicer.vtkMRMLScene().AddNewNodeByClass("vtkMRMLScalarVolumeNode", "elsewhere")
    with pytest.raises(InputError, match="not in this logic's scene"):
        logic.register(nodes["fixed"], other, **FAST)
    with pytest.raises(InputError, match="cancel"):
        logic.register(nodes["fixed"], nodes["moving"], cancel=5, **FAST)
    empty = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "empty")
    with pytest.raises(InputError, match="no points"):
        logic.computeFRE(registered["node"], nodes["fixed_lm"], empty)
    short = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "short")
    mb.markups_from_points(short, mb.landmarks_from_markups(nodes["moving_lm"])[:5])
    with pytest.raises(InputError, match="counts differ"):
        logic.computeFRE(registered["node"], nodes["fixed_lm"], short)
    with pytest.raises(InputError, match="own node"):
        logic.registeredLandmarks(nodes["moving_lm"], registered["node"], outputNode=nodes["moving_lm"])
    created = {i for i in set(node_ids(scene)) - set(ids) if "Display" not in i}  # display nodes come along
    assert created == {flat.GetID(), grid.GetID(), empty.GetID(), short.GetID()}
