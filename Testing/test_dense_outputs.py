"""Outputs of dense results, independent of how the field was found: the ITK composite file, the
whole mapping as one grid, point mapping, resampling, and `disa evaluate` with label maps and
Jacobians. The fields here are known smooth displacements on oblique grids."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from disa.cli import main
from disa.registration.result import RegistrationResult
from disa.sample_data import rigid_matrix
from disa.spatial import Image
from disa.spatial.image import resample_image
from disa.transforms.displacement import grid_points, mapping_displacement
from disa.transforms.itk_io import displacement_fields, read_sitk_transform

OBLIQUE = rigid_matrix(np.array([12.0, -20.0, 31.0]), np.zeros(3), np.zeros(3))[:3, :3]


def smooth_field(size=(14, 12, 10), spacing=(3.0, 2.5, 2.0), direction=OBLIQUE, amplitude=2.0) -> Image:
    """A smooth 3-channel LPS displacement on an oblique grid: sines of the position."""
    origin = np.array([-15.0, -12.0, -9.0])
    grid = Image(torch.zeros(1, *size[::-1]), np.asarray(spacing), origin, np.asarray(direction))
    p = grid_points(grid)
    d = np.stack([amplitude * np.sin(p[..., 1] / 9.0), amplitude * np.cos(p[..., 2] / 7.0),
                  amplitude * np.sin(p[..., 0] / 8.0 + 0.3)], 0)
    return grid.same_geometry(torch.from_numpy(d))


def dense_result(field: Image) -> RegistrationResult:
    matrix = rigid_matrix(np.array([3.0, -4.0, 5.0]), np.array([2.0, -1.0, 3.0]), np.zeros(3))
    return RegistrationResult(matrix, np.zeros(6), "deformable", "mind", np.zeros(3), 0.0, 0.0, 0.0, "cpu",
                              field=field)


def inner_points(field: Image, n=200, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = rng.uniform(0.5, np.asarray(field.size) - 1.5, (n, 3))
    m = field.index_to_world()
    return idx @ m[:3, :3].T + m[:3, 3]


def test_composite_file_maps_points_as_the_result(tmp_path):
    result = dense_result(smooth_field())
    pts = inner_points(result.field)
    path = tmp_path / "dense.h5"
    result.save_transform(path)
    tx = read_sitk_transform(path)
    by_itk = np.array([tx.TransformPoint(p.tolist()) for p in pts])
    np.testing.assert_allclose(result.transform_points(pts), by_itk, atol=1e-6)
    # the field is really applied (not the linear part alone), and comes back as stored
    linear = pts @ result.matrix[:3, :3].T + result.matrix[:3, 3]
    assert np.abs(by_itk - linear).max() > 1.0
    (stored,) = displacement_fields(tx)
    np.testing.assert_allclose(stored.data.numpy(), result.field.data.numpy(), atol=1e-12)
    np.testing.assert_allclose(stored.direction, result.field.direction, atol=1e-12)


def test_mapping_displacement_holds_the_whole_mapping_at_the_nodes():
    field = smooth_field()
    result = dense_result(field)
    whole = mapping_displacement(field, result.matrix)
    nodes = grid_points(whole).reshape(-1, 3)
    d = np.moveaxis(whole.data.numpy(), 0, -1).reshape(-1, 3)
    np.testing.assert_allclose(nodes + d, result.transform_points(grid_points(field).reshape(-1, 3)), atol=1e-9)
    # under a rigid parent frame B (p -> q = B p) the grid moves with it
    before = rigid_matrix(np.array([0.0, 10.0, -5.0]), np.array([4.0, 0.0, -2.0]), np.zeros(3))
    moved = mapping_displacement(field, result.matrix, before)
    p = grid_points(moved).reshape(-1, 3)
    q = p @ before[:3, :3].T + before[:3, 3]
    np.testing.assert_allclose(p + np.moveaxis(moved.data.numpy(), 0, -1).reshape(-1, 3),
                               result.transform_points(q), atol=1e-9)
    with pytest.raises(Exception, match="rigid parent"):
        mapping_displacement(field, result.matrix, np.diag([2.0, 1.0, 1.0, 1.0]))


def test_resampling_through_a_dense_result_follows_the_field():
    field = smooth_field(amplitude=3.0)
    result = dense_result(field)
    target = Image(torch.zeros(1, 8, 9, 10), np.full(3, 2.0), np.array([-8.0, -8.0, -7.0]), np.eye(3))
    # a source whose value is its own x coordinate: the resampled value is where the voxel mapped to
    src_grid = Image(torch.zeros(1, 40, 40, 40), np.full(3, 1.5), np.full(3, -29.25), np.eye(3))
    x = torch.from_numpy(grid_points(src_grid)[..., 0][None].astype(np.float32))
    out = resample_image(src_grid.same_geometry(x), target, result.matrix, displacement=result.displacement)
    expected = result.transform_points(grid_points(target).reshape(-1, 3))[:, 0]
    np.testing.assert_allclose(out.data.numpy().ravel(), expected, atol=1e-3)


def _labels(path, shift_vox=0):
    a = np.zeros((24, 24, 24), np.int16)
    a[4 + shift_vox:12 + shift_vox, 5:15, 6:16] = 1
    a[14:20, 4:12, 10 + shift_vox:20 + shift_vox] = 2
    img = sitk.GetImageFromArray(a)
    img.SetSpacing((1.5, 1.5, 1.5))
    img.SetDirection(OBLIQUE.ravel().tolist())
    sitk.WriteImage(img, str(path))
    return a


def test_evaluate_reports_dice_hd95_and_jacobian(tmp_path, capsys):
    fixed = _labels(tmp_path / "f.nii.gz")
    _labels(tmp_path / "m.nii.gz", shift_vox=2)
    code = main(["evaluate", "--fixed-labels", str(tmp_path / "f.nii.gz"), "--moving-labels",
                 str(tmp_path / "m.nii.gz"), "--json", str(tmp_path / "id.json")])
    assert code == 0
    ident = json.loads((tmp_path / "id.json").read_text())["labels"]
    # label 1 shifted by 2 of 8 voxels along its first axis: Dice 6/8; label 2 by 2 of 10: 8/10
    assert ident["labels"]["1"]["dice"] == pytest.approx(0.75)
    assert ident["labels"]["2"]["dice"] == pytest.approx(0.8)
    assert ident["dice_p50"] == pytest.approx(0.775)
    assert ident["hd95_mean"] > 1.0
    assert fixed.max() == 2
    # the field of a dense result is reported: a smooth small field does not fold
    result = dense_result(smooth_field(amplitude=0.5))
    result.save_transform(tmp_path / "dense.h5")
    code = main(["evaluate", "--transform", str(tmp_path / "dense.h5"), "--fixed-labels", str(tmp_path / "f.nii.gz"),
                 "--moving-labels", str(tmp_path / "m.nii.gz"), "--json", str(tmp_path / "dense.json")])
    assert code == 0
    report = json.loads((tmp_path / "dense.json").read_text())
    assert report["jacobian"][0]["nonpositive"] == 0
    assert "Jacobian determinant" in capsys.readouterr().out


def test_evaluate_needs_pairs(tmp_path, capsys):
    _labels(tmp_path / "f.nii.gz")
    assert main(["evaluate", "--fixed-labels", str(tmp_path / "f.nii.gz")]) == 2
    assert "in pairs" in capsys.readouterr().err
    assert main(["evaluate"]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err


def test_cli_dense_transform_file_maps_points_as_the_engine(tmp_path):
    """`disa register --transform deformable` writes one composite (linear + displacement field):
    SimpleITK's ReadTransform alone maps fixed points where the engine's result does (and the
    dense options reach the engine: ``--linearize`` is not the default)."""
    from disa.registration import register
    from disa.spatial import save_image
    from synthetic import deformed_pair, inner_points

    fixed, moving, _ = deformed_pair(seed=2)
    save_image(fixed, tmp_path / "f.nii.gz")
    save_image(moving, tmp_path / "m.nii.gz")
    options = ["--metric", "mind", "--search", "local", "--spacings", "6,3", "--max-evals", "20", "--threads", "1",
               "--seed", "0", "--device", "cpu", "--dense-spacing", "3", "--iterations", "10", "--linearize", "0.5", "--quiet"]
    out = tmp_path / "dense.h5"
    assert main(["register", "--fixed", str(tmp_path / "f.nii.gz"), "--moving", str(tmp_path / "m.nii.gz"),
                 "--transform", "deformable", "--output-transform", str(out), "--jacobian",
                 str(tmp_path / "jac.nii.gz"), *options]) == 0
    from disa.spatial import load_image

    result = register(load_image(tmp_path / "f.nii.gz"), load_image(tmp_path / "m.nii.gz"), metric="mind",
                      transform="deformable", search="local", spacings=[6.0, 3.0], max_evals=20, threads=1, seed=0,
                      device="cpu", dense={"spacing": 3.0, "iterations": 10, "linearize": 0.5})
    tx = read_sitk_transform(out)
    points = inner_points(fixed)[::11]
    by_itk = np.array([tx.TransformPoint(p.tolist()) for p in points])
    np.testing.assert_allclose(by_itk, result.transform_points(points), atol=1e-4)
    jac = sitk.ReadImage(str(tmp_path / "jac.nii.gz"))
    assert jac.GetSize() == tuple(result.field.size) and sitk.GetArrayFromImage(jac).min() > 0
