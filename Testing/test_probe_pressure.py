"""The probe-pressure model (rigid pose + compression under the ultrasound probe): it finds the
probe from a fan-shaped field of view, recovers a known compression on a synthetic case where a
rigid registration cannot, equals the rigid model without compression, and its output files
(ITK composite, Slicer transform node) map points as the engine does."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from disa.cli import main
from disa.errors import InputError
from disa.evaluate import Landmarks, write_csv
from disa.optim import PoseSampler
from disa.registration import register
from disa.registration.objective import Objective
from disa.sample_data import rigid_matrix
from disa.similarity import parse_metric
from disa.spatial import Image, foreground_mask, save_image
from disa.transforms import Rigid
from disa.transforms.probe_pressure import ProbePressure, compression_displacement, find_probe
from synthetic import textured_image

#: The synthetic case: a compression of 6 mm at the probe, falling to 1/e at 20 mm depth, after a
#: small rigid offset; the probe axis is tilted off the image axes.
AMPLITUDE, DECAY = 6.0, 20.0
ROTATION, TRANSLATION = (2.0, -3.0, 1.5), (3.0, -2.0, 2.5)
AXIS = np.array([0.15, 1.0, 0.1]) / np.linalg.norm([0.15, 1.0, 0.1])
FAST = dict(metric="ncc", search="local", spacings=[4.0, 2.0], threads=1)


class Case:
    """A textured 'MR' (moving) and an 'ultrasound' (fixed): the MR seen through ``true_map``
    inside a convex-probe fan (a cone cut 20 mm below its virtual apex), zero outside."""

    def __init__(self, amplitude=AMPLITUDE, size=40, spacing=2.0):
        self.moving = textured_image(size=56, spacing=2.0, seed=4)
        half = spacing * (size - 1) / 2.0
        self.contact = -AXIS * (half - 2.0)  # on the contact surface, near the top of the box
        apex = self.contact - 20.0 * AXIS
        self.amplitude = amplitude
        self.rigid = rigid_matrix(ROTATION, TRANSLATION, np.zeros(3))
        zz, yy, xx = np.meshgrid(*(np.arange(size),) * 3, indexing="ij")
        points = np.stack([xx, yy, zz], -1).reshape(-1, 3) * spacing - half  # LPS, identity direction
        rel = points - apex
        dist = np.linalg.norm(rel, axis=1)
        fan = ((rel @ AXIS) >= np.cos(np.deg2rad(35.0)) * dist) & (dist >= 20.0) & (dist <= 92.0)
        moved = self.true_map(points)
        index = (np.c_[moved, np.ones(len(moved))] @ self.moving.world_to_index().T)[:, 2::-1]
        values = ndimage.map_coordinates(self.moving.data[0].numpy(), index.T, order=1, mode="nearest")
        data = np.where(fan, values + 3.0, 0.0).reshape((size,) * 3).astype(np.float32)
        self.fixed = Image.from_array(data, spacing=(spacing,) * 3, origin=(-half,) * 3)
        self.fan_points = points[fan]

    def true_map(self, x):
        """Fixed LPS points -> moving LPS points, written out independently of the engine."""
        depth = np.clip((x - self.contact) @ AXIS, 0.0, None)
        compressed = x - (self.amplitude * np.exp(-depth / DECAY))[:, None] * AXIS
        return compressed @ self.rigid[:3, :3].T + self.rigid[:3, 3]

    def errors(self, result):
        return np.linalg.norm(result.transform_points(self.fan_points) - self.true_map(self.fan_points), axis=1)


@pytest.fixture(scope="module")
def case():
    return Case()


@pytest.fixture(scope="module")
def rigid_result(case):
    return register(case.fixed, case.moving, transform="rigid", **FAST)


@pytest.fixture(scope="module")
def pressure_result(case):
    return register(case.fixed, case.moving, transform="pressure", **FAST)


def masked(image: Image) -> Image:
    return image.same_geometry(image.data, foreground_mask(image, "nonzero"))


# the probe ----------------------------------------------------------------------------------------
def test_probe_is_found_from_the_fan(case):
    position, direction, depth = find_probe(masked(case.fixed))
    angle = np.degrees(np.arccos(np.clip(direction @ AXIS, -1, 1)))
    assert angle < 6.0, f"probe axis {angle:.1f} degrees off"  # measured 4.9
    assert abs((position - case.contact) @ AXIS) < 4.0  # the top of the fan: 3.3 mm above the contact
    assert 60.0 < depth < 90.0  # the fan is 72 mm deep
    # Given only a position, the axis points from it to the field of view's centre.
    _, towards, _ = find_probe(masked(case.fixed), position=case.contact)
    assert np.degrees(np.arccos(towards @ AXIS)) < 10.0


def test_a_field_of_view_without_a_fan_shape_is_refused():
    box = textured_image(size=20, spacing=2.0, seed=1)
    box = box.same_geometry(box.data, torch.ones_like(box.data, dtype=torch.bool))
    with pytest.raises(InputError, match="not fan-shaped.*give the probe"):
        find_probe(box)
    with pytest.raises(InputError, match="no field-of-view mask"):
        find_probe(box.same_geometry(box.data, None))
    # A given probe needs no fan.
    position, direction, _ = find_probe(box, position=(0, -19, 0), direction=(0, 1, 0))
    np.testing.assert_allclose(direction, [0, 1, 0])


# registration ---------------------------------------------------------------------------------------
def test_recovers_a_known_compression_with_the_probe_given(case, rigid_result):
    result = register(case.fixed, case.moving, transform="pressure", probe_position=case.contact,
                      probe_direction=AXIS, **FAST)
    errors, rigid_errors = case.errors(result), case.errors(rigid_result)
    c = result.compression
    assert abs(c.amplitude - AMPLITUDE) < 1.0, f"amplitude {c.amplitude:.2f} mm"  # measured 5.64
    assert abs(c.decay - DECAY) < 8.0, f"decay {c.decay:.1f} mm"  # measured 24.0
    assert not c.found
    # Rigid alone leaves the compressed top misaligned: mean 0.81 mm, max 5.2 mm (measured).
    assert errors.mean() < 0.2 and errors.mean() < 0.25 * rigid_errors.mean()  # measured 0.06 mm
    assert errors.max() < 0.3 * rigid_errors.max()  # measured 0.57 mm
    np.testing.assert_allclose(result.params[:3], ROTATION, atol=0.3)
    np.testing.assert_allclose(result.params[3:6], TRANSLATION, atol=1.0)


def test_recovers_a_known_compression_with_the_probe_found(case, pressure_result, rigid_result):
    result = pressure_result
    errors, rigid_errors = case.errors(result), case.errors(rigid_result)
    assert result.transform == "pressure" and result.compression.found
    # The amplitude is the displacement at the found contact surface: the top of the fan, 3.3 mm
    # above the true one (the edge of the convex probe face), where it is 7.08 mm.
    expected = AMPLITUDE * np.exp(-((result.compression.position - case.contact) @ AXIS) / DECAY)
    assert abs(result.compression.amplitude - expected) < 1.5  # measured 6.30 mm
    assert errors.mean() < 0.25 and errors.mean() < 0.3 * rigid_errors.mean()  # measured 0.12 mm
    assert result.final_similarity > rigid_result.final_similarity
    np.testing.assert_allclose(result.matrix[:3, :3].T @ result.matrix[:3, :3], np.eye(3), atol=1e-9)


def test_without_compression_the_model_is_the_rigid_one(case):
    """Zero compression gives the rigid model's matrices, grids and similarities exactly; on a
    case without compression, the registration finds none and matches the rigid result."""
    model = ProbePressure.for_image(masked(case.fixed))
    rigid = Rigid(model.center)
    poses = np.array([[1.0, -2.0, 0.5, 3.0, 1.0, -2.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    params = np.c_[poses, np.zeros(2), [15.0, 40.0]]
    np.testing.assert_array_equal(model.matrix(torch.as_tensor(params)).numpy(),
                                  rigid.matrix(torch.as_tensor(poses)).numpy())
    fixed = case.fixed.same_geometry(case.fixed.data / case.fixed.data.max(), foreground_mask(case.fixed, "nonzero"))
    prepared = parse_metric("ncc").build().prepare(fixed, case.moving)
    with torch.no_grad():
        a = Objective(prepared, fixed, case.moving, model).similarity(torch.as_tensor(params))
        b = Objective(prepared, fixed, case.moving, rigid).similarity(torch.as_tensor(poses))
    np.testing.assert_array_equal(a.numpy(), b.numpy())

    flat = Case(amplitude=0.0)
    pressure = register(flat.fixed, flat.moving, transform="pressure", **FAST)
    rigid_result = register(flat.fixed, flat.moving, transform="rigid", **FAST)
    assert abs(pressure.compression.amplitude) < 0.5  # measured -0.01 mm
    assert flat.errors(pressure).mean() < 0.15 and flat.errors(rigid_result).mean() < 0.15  # both 0.006 mm


def test_gradients_and_global_search_poses():
    """Exact gradients through the compression (L-BFGS); the global search moves the rigid part
    only and keeps the start's compression (0 at the start of a registration)."""
    points = torch.randn(50, 3, dtype=torch.float64) * 20.0
    a = torch.tensor([3.0, 0.5], dtype=torch.float64, requires_grad=True)
    lam = torch.tensor([15.0, 30.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, lam: compression_displacement(points, [0.0, -30.0, 0.0], [0.0, 1.0, 0.0], a, lam), (a, lam))
    region = np.array([[-40.0, -40.0, -40.0], [40.0, 40.0, 40.0]])
    model = ProbePressure(np.zeros(3), [0.0, -30.0, 0.0], [0.0, 1.0, 0.0], 20.0, region)
    sampler = PoseSampler(16, 10.0, 15.0, seed=0)
    x0 = model.identity()
    poses = sampler.poses(model, x0)
    assert poses.shape == (16, 8)
    np.testing.assert_array_equal(poses[:, 6:], np.tile([0.0, 20.0], (16, 1)))
    np.testing.assert_allclose(poses[:, :6], sampler.poses(Rigid(np.zeros(3)), np.zeros(6)), atol=1e-12)


# outputs --------------------------------------------------------------------------------------------
def test_transform_file_round_trip(case, pressure_result, tmp_path):
    """The ITK composite (rigid part after a displacement field) read back by SimpleITK maps
    points as the engine does, inside the fan, across the image box and beyond it."""
    rng = np.random.default_rng(0)
    points = np.concatenate([case.fan_points[::97], rng.uniform(-45.0, 45.0, (200, 3))])
    expected = pressure_result.transform_points(points)
    for name in ("t.h5", "t.tfm"):
        pressure_result.save_transform(tmp_path / name)
        tx = sitk.ReadTransform(str(tmp_path / name))
        got = np.array([tx.TransformPoint(p.tolist()) for p in points])
        np.testing.assert_allclose(got, expected, atol=0.01)
    composite = sitk.CompositeTransform(tx)
    assert [composite.GetNthTransform(i).GetName() for i in range(2)] == ["Euler3DTransform",
                                                                           "DisplacementFieldTransform"]
    # Above the probe the tissue moves by the whole amplitude, as in the engine, up to 50 mm beyond
    # the image box, where the field ends and only the rigid part remains.
    c = pressure_result.compression
    for behind, moved in ((60.0, True), (300.0, False)):
        p = c.position - behind * c.direction
        want = pressure_result.transform_points(p) if moved else pressure_result.matrix[:3] @ np.r_[p, 1.0]
        np.testing.assert_allclose(tx.TransformPoint(p.tolist()), want.ravel(), atol=0.01)
    assert json.dumps(pressure_result.as_dict())  # JSON-ready, with the probe
    assert pressure_result.as_dict()["probe_pressure"]["amplitude_mm"] == pressure_result.compression.amplitude


def test_command_line(case, tmp_path, capsys):
    save_image(case.fixed, str(tmp_path / "us.nii.gz"))
    save_image(case.moving, str(tmp_path / "mr.nii.gz"))
    base = ["register", "--fixed", str(tmp_path / "us.nii.gz"), "--moving", str(tmp_path / "mr.nii.gz"),
            "--metric", "ncc", "--search", "local", "--spacings", "4,2", "--threads", "1", "--quiet"]
    out = [str(tmp_path / "reg.h5"), str(tmp_path / "r.json"), str(tmp_path / "mr_on_us.nii.gz")]
    probe = ["--probe-position", *map(str, case.contact), "--probe-direction", *map(str, AXIS)]
    assert main(base + ["--transform", "pressure", *probe, "--output-transform", out[0], "--json", out[1],
                        "--output-volume", out[2]]) == 0
    data = json.load(open(out[1]))
    assert data["transform"] == "pressure" and abs(data["probe_pressure"]["amplitude_mm"] - AMPLITUDE) < 1.0
    tx = sitk.ReadTransform(out[0])
    got = np.array([tx.TransformPoint(p.tolist()) for p in case.fan_points[::211]])
    assert np.linalg.norm(got - case.true_map(case.fan_points[::211]), axis=1).mean() < 0.2
    # disa evaluate reads the composite: the landmark error of the fan points is the engine's.
    pts = case.fan_points[::211]
    write_csv(str(tmp_path / "f.csv"), Landmarks(pts))
    write_csv(str(tmp_path / "m.csv"), Landmarks(case.true_map(pts)))
    capsys.readouterr()
    assert main(["evaluate", "--transform", out[0], "--fixed-landmarks", str(tmp_path / "f.csv"),
                 "--moving-landmarks", str(tmp_path / "m.csv"), "--json", str(tmp_path / "e.json")]) == 0
    errors = json.load(open(tmp_path / "e.json"))["errors"]
    np.testing.assert_allclose(errors, np.linalg.norm(got - case.true_map(pts), axis=1), atol=1e-6)
    # The resampled MR matches the ultrasound inside the fan.
    us, resampled = (sitk.GetArrayFromImage(sitk.ReadImage(p)) for p in (str(tmp_path / "us.nii.gz"), out[2]))
    fan = us > 0
    assert np.corrcoef(us[fan], resampled[fan])[0, 1] > 0.99
    # A probe without the pressure model, a zero direction: one line, exit code 2, nothing written.
    for bad in (["--transform", "rigid", *probe], ["--transform", "pressure", "--probe-direction", "0", "0", "0"]):
        capsys.readouterr()
        assert main(base + bad + ["--output-transform", str(tmp_path / "bad.h5")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("disa: error:") and len(err.strip().splitlines()) == 1
        assert not os.path.exists(tmp_path / "bad.h5")


def case_scene(case):
    """A slicer-core scene holding the case's ultrasound ("us") and MR ("mr") as volume nodes."""
    slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("the 'slicer' package here is not slicer-core")
    from DISARegistrationLib import mrml_bridge as bridge

    scene = slicer.vtkMRMLScene()
    nodes = {}
    for name, image in (("us", case.fixed), ("mr", case.moving)):
        nodes[name] = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        bridge.update_volume_node_from_image(nodes[name], image)
    return scene, nodes


def test_slicer_logic_gives_a_transform_node_that_maps_like_the_engine(case, tmp_path):
    scene, nodes = case_scene(case)
    from DISARegistrationLib import mrml_bridge as bridge
    from DISARegistrationLib.logic import RegistrationLogic
    from disa.spatial.frames import lps_to_ras_points, ras_to_lps_points

    logic = RegistrationLogic(scene, device="cpu", threads=1)
    out = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "mr on us")
    node = logic.register(nodes["us"], nodes["mr"], metric="ncc", transform="pressure", search="local",
                          resolution=2.0, outputVolumeNode=out)
    result = logic.lastResult
    assert result.compression is not None and not node.IsLinear()
    points = case.fan_points[::150]
    from_parent = node.GetTransformFromParent()
    got = ras_to_lps_points(np.array([from_parent.TransformPoint(*p) for p in lps_to_ras_points(points)]))
    np.testing.assert_allclose(got, result.transform_points(points), atol=0.01)
    assert np.linalg.norm(got - case.true_map(points), axis=1).mean() < 0.25
    # Slicer writes it as an ITK composite with the same mapping.
    storage = scene.AddNewNodeByClass("vtkMRMLTransformStorageNode")
    storage.SetFileName(str(tmp_path / "slicer.h5"))
    assert storage.WriteData(node) == 1
    tx = sitk.ReadTransform(str(tmp_path / "slicer.h5"))
    np.testing.assert_allclose([tx.TransformPoint(p.tolist()) for p in points], got, atol=1e-3)
    # The output volume is the MR through the compression: it matches the ultrasound in the fan.
    us = bridge.image_from_volume_node(nodes["us"]).data[0].numpy()
    resampled = bridge.image_from_volume_node(out).data[0].numpy()
    assert np.corrcoef(us[us > 0], resampled[us > 0])[0, 1] > 0.99


def test_slicer_logic_takes_the_probe_from_two_points(case):
    """The panel's probe point list (contact point, then a point deeper along the beam) gives the
    engine exactly the probe position and direction; a list with one point is refused."""
    scene, nodes = case_scene(case)
    from DISARegistrationLib import mrml_bridge as bridge
    from DISARegistrationLib.logic import RegistrationLogic
    from disa.errors import InputError

    probe = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "probe")
    bridge.markups_from_points(probe, np.array([case.contact, case.contact + 30.0 * AXIS]))
    logic = RegistrationLogic(scene, device="cpu", threads=1)
    logic.register(nodes["us"], nodes["mr"], metric="ncc", transform="pressure", search="local", resolution=2.0,
                   probeMarkupsNode=probe)
    by_logic = logic.lastResult.compression
    np.testing.assert_allclose(by_logic.position, case.contact, atol=1e-9)
    np.testing.assert_allclose(by_logic.direction, AXIS, atol=1e-9)
    assert not by_logic.found
    assert abs(by_logic.amplitude - AMPLITUDE) < 1.0
    one = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "one point")
    bridge.markups_from_points(one, case.contact[None])
    with pytest.raises(InputError, match="needs two points"):
        logic.register(nodes["us"], nodes["mr"], transform="pressure", probeMarkupsNode=one)
