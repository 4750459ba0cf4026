"""Linear transform models and ITK transform file I/O (disa.transforms).

References are deliberately slow and explicit: scipy rotations, x -> A (x - c) + c + t written out,
SimpleITK's own TransformPoint/Resample, and an analytic image sampled at transformed points.
"""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy.spatial.transform import Rotation

from disa.errors import InputError
from disa.spatial import Image, resample_image
from disa.transforms import (
    Affine,
    Rigid,
    itk_to_slicer_to_parent_ras,
    lps_to_ras_matrix,
    matrix_to_sitk,
    ras_to_lps_matrix,
    read_itk_transform,
    slicer_to_parent_ras_to_itk,
    write_itk_transform,
)
from disa.transforms import itk_io

CENTER = np.array([12.5, -30.0, 47.0])


# helpers ----------------------------------------------------------------------------------------
def random_rotvec_deg(rng, max_deg):
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    return axis * rng.uniform(0.3 * max_deg, max_deg)


def rigid_params(rng, n, max_deg=30.0):
    return np.stack([np.concatenate([random_rotvec_deg(rng, max_deg), rng.uniform(-20, 20, 3)])
                     for _ in range(n)])


def affine_params(rng, n):
    return rng.uniform(-10.0, 10.0, size=(n, 12)) * np.array([1, 1, 1, 2, 2, 2, 1, 1, 1, 1, 1, 1])


def reference_rigid(p, c):
    """x -> R (x - c) + c + t, R from scipy's rotation vector (degrees)."""
    r = Rotation.from_rotvec(np.deg2rad(p[:3])).as_matrix()
    return homogeneous(r, c + p[3:6] - r @ c)


def reference_affine(p, c):
    """Affine layout spelled out: [a00-1 a01 a02 | t | a10 a11-1 a12 a20 a21 a22-1], in percent."""
    a = np.array([[p[0], p[1], p[2]], [p[6], p[7], p[8]], [p[9], p[10], p[11]]]) / 100.0 + np.eye(3)
    return homogeneous(a, c + p[3:6] - a @ c)


def homogeneous(a, b):
    m = np.eye(4)
    m[:3, :3] = a
    m[:3, 3] = b
    return m


def apply(m, pts):
    return pts @ m[:3, :3].T + m[:3, 3]


def sitk_matrix(tx):
    """Reference 4x4 of a SimpleITK matrix-offset transform from its own parameters."""
    a = np.array(tx.GetMatrix()).reshape(3, 3)
    c = np.array(tx.GetCenter())
    t = np.array(tx.GetTranslation()) if hasattr(tx, "GetTranslation") else np.zeros(3)
    return homogeneous(a, c + t - a @ c)


def models():
    return [Rigid(CENTER), Affine(CENTER)]


def params_for(model, rng, n):
    return rigid_params(rng, n) if model.name == "rigid" else affine_params(rng, n)


# parametric models ------------------------------------------------------------------------------
@pytest.mark.parametrize("model", models(), ids=lambda m: m.name)
def test_batch_matrix_matches_rows_and_reference(model):
    rng = np.random.default_rng(1)
    p = params_for(model, rng, 5)
    batch = model.matrix(torch.tensor(p)).numpy()
    assert batch.shape == (5, 4, 4) and batch.dtype == np.float64
    ref = reference_rigid if model.name == "rigid" else reference_affine
    for i in range(5):
        row = model.matrix(torch.tensor(p[i])).numpy()[0]
        np.testing.assert_allclose(batch[i], row, atol=1e-12)
        np.testing.assert_allclose(batch[i], ref(p[i], CENTER), atol=1e-10)


@pytest.mark.parametrize("model", models(), ids=lambda m: m.name)
def test_params_from_matrix_inverts_matrix(model):
    rng = np.random.default_rng(2)
    for p in params_for(model, rng, 8):
        m = model.matrix(torch.tensor(p)).numpy()[0]
        np.testing.assert_allclose(model.params_from_matrix(m), p, atol=1e-9)


def test_center_is_fixed_point_of_rotation():
    rng = np.random.default_rng(3)
    model = Rigid(CENTER)
    p = np.zeros((4, 6))
    p[:, :3] = [random_rotvec_deg(rng, 30.0) for _ in range(4)]
    for m in model.matrix(torch.tensor(p)).numpy():
        np.testing.assert_allclose(apply(m, CENTER[None])[0], CENTER, atol=1e-10)
        far = CENTER + np.array([20.0, 0.0, 0.0])
        assert np.linalg.norm(apply(m, far[None])[0] - far) > 1.0  # it really rotates
        np.testing.assert_allclose(np.linalg.norm(apply(m, far[None])[0] - CENTER), 20.0, rtol=1e-12)


@pytest.mark.parametrize("model", models(), ids=lambda m: m.name)
def test_matrix_gradient(model):
    rng = np.random.default_rng(4)
    p = torch.tensor(params_for(model, rng, 2), requires_grad=True)
    assert torch.autograd.gradcheck(lambda q: model.matrix(q), (p,), eps=1e-6, atol=1e-6)


def test_rigid_params_from_matrix_refuses_non_rotation():
    m = np.diag([1.1, 1.0, 1.0, 1.0])
    with pytest.raises(InputError, match="rigid"):
        Rigid(CENTER).params_from_matrix(m)


def test_rigid_offsets_convert_all_poses_at_once_as_one_by_one():
    """``with_rigid_offsets`` converts a global search's poses in one call
    (``params_from_matrices``): the same parameters as ``params_from_matrix`` pose by pose, for
    the rigid, affine and probe-pressure models; one non-rigid matrix in a stack is refused."""
    from disa.transforms.probe_pressure import ProbePressure

    rng = np.random.default_rng(9)
    offsets = np.concatenate([rng.uniform(-30, 30, (40, 3)), rng.uniform(-50, 50, (40, 3))], axis=1)
    probe = ProbePressure(CENTER, [0.0, -30.0, 0.0], [0.0, 1.0, 0.0], 20.0, np.array([[-40.0] * 3, [40.0] * 3]))
    for model in models() + [probe]:
        x0 = params_for(model, rng, 1)[0] if model is not probe else np.r_[rng.uniform(-5, 5, 6), 0.0, 20.0]
        start = model.matrix(torch.as_tensor(x0)[None])[0]
        moved = (start @ Rigid(CENTER).matrix(torch.as_tensor(offsets))).numpy()
        got = model.with_rigid_offsets(x0, offsets)
        assert got.shape == (40, model.n_params)
        np.testing.assert_allclose(got, np.stack([model.params_from_matrix(m) for m in moved]), rtol=0, atol=1e-12)
    stack = np.repeat(np.eye(4)[None], 3, axis=0)
    stack[1, 0, 0] = 1.1
    with pytest.raises(InputError, match="rigid"):
        Rigid(CENTER).params_from_matrices(stack)


# ITK files --------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".tfm", ".txt", ".h5", ".hdf5"])
@pytest.mark.parametrize("model", models(), ids=lambda m: m.name)
def test_round_trip_through_file(tmp_path, model, suffix):
    rng = np.random.default_rng(5)
    pts = rng.uniform(-150, 150, size=(20, 3))
    for k, p in enumerate(params_for(model, rng, 3)):
        m = model.matrix(torch.tensor(p)).numpy()[0]
        path = tmp_path / f"sub{k}" / f"t{suffix}"  # parent folder does not exist yet
        write_itk_transform(path, m, center=model.center, kind=model.name)
        np.testing.assert_allclose(read_itk_transform(path), m, atol=1e-9, rtol=0)
        tx = sitk.ReadTransform(str(path))
        expected_type = "Euler3DTransform" if model.name == "rigid" else "AffineTransform"
        assert tx.GetName() == expected_type
        np.testing.assert_allclose(tx.GetCenter(), model.center, atol=1e-12)
        got = np.array([tx.TransformPoint(tuple(q)) for q in pts])
        np.testing.assert_allclose(got, apply(m, pts), atol=1e-9, rtol=0)


@pytest.mark.parametrize("kind", ["rigid", "affine"])
def test_center_does_not_change_mapping(kind):
    rng = np.random.default_rng(6)
    p = rigid_params(rng, 1)[0]
    m = Rigid(CENTER).matrix(torch.tensor(p)).numpy()[0]
    pts = rng.uniform(-100, 100, size=(10, 3))
    for center in (None, (0.0, 0.0, 0.0), rng.uniform(-80, 80, 3)):
        tx = matrix_to_sitk(m, center=center, kind=kind)
        got = np.array([tx.TransformPoint(tuple(q)) for q in pts])
        np.testing.assert_allclose(got, apply(m, pts), atol=1e-9, rtol=0)


def test_rigid_near_gimbal_lock_is_exact(tmp_path):
    # 90 degrees about x is the singular case of ITK's default ZXY Euler angles.
    r = Rotation.from_euler("xyz", [90.0, 17.0, -33.0], degrees=True).as_matrix()
    m = homogeneous(r, [4.0, -7.0, 11.0])
    write_itk_transform(tmp_path / "g.tfm", m, kind="rigid")
    np.testing.assert_allclose(read_itk_transform(tmp_path / "g.tfm"), m, atol=1e-9, rtol=0)


def test_torch_matrix_accepted(tmp_path):
    m = Affine(CENTER).matrix(torch.tensor(affine_params(np.random.default_rng(8), 1)))  # (1, 4, 4)
    write_itk_transform(tmp_path / "a.h5", m)
    np.testing.assert_allclose(read_itk_transform(tmp_path / "a.h5"), m.numpy()[0], atol=1e-9)


def other_linear_transforms():
    """(name, transform, reference matrix) for ITK linear types DISA does not write itself."""
    c = np.array([5.0, -12.0, 30.0])
    rot = Rotation.from_rotvec(np.deg2rad([10.0, -20.0, 5.0]))
    out = []
    v = sitk.VersorRigid3DTransform()
    v.SetCenter(c.tolist())
    v.SetRotation(rot.as_quat().tolist())
    v.SetTranslation((3.0, -4.0, 5.0))
    out.append(("VersorRigid3D", v, sitk_matrix(v)))
    vs = sitk.VersorTransform()
    vs.SetCenter(c.tolist())
    vs.SetRotation(rot.as_quat().tolist())
    out.append(("Versor", vs, sitk_matrix(vs)))
    s = sitk.Similarity3DTransform()
    s.SetCenter(c.tolist())
    s.SetRotation(rot.as_quat().tolist())
    s.SetScale(1.15)
    s.SetTranslation((-2.0, 1.0, 8.0))
    out.append(("Similarity3D", s, sitk_matrix(s)))
    e = sitk.Euler3DTransform(c.tolist(), 0.3, -0.2, 0.5, (1.0, 2.0, 3.0))
    e.SetComputeZYX(True)
    out.append(("Euler3D-ZYX", e, sitk_matrix(e)))
    sk = sitk.ScaleSkewVersor3DTransform()
    sk.SetCenter(c.tolist())
    sk.SetRotation(rot.as_quat().tolist())
    sk.SetScale((1.1, 0.9, 1.2))
    sk.SetSkew((0.05, -0.03, 0.02, 0.0, 0.01, -0.02))
    sk.SetTranslation((0.5, -0.5, 2.0))
    out.append(("ScaleSkewVersor3D", sk, sitk_matrix(sk)))
    t = sitk.TranslationTransform(3, (7.0, -3.0, 2.5))
    out.append(("Translation", t, homogeneous(np.eye(3), [7.0, -3.0, 2.5])))
    sc = sitk.ScaleTransform(3, (1.2, 0.8, 1.5))
    sc.SetCenter(c.tolist())
    d = np.diag([1.2, 0.8, 1.5])
    out.append(("Scale", sc, homogeneous(d, c - d @ c)))
    return out


@pytest.mark.parametrize("suffix", [".tfm", ".h5"])
def test_reads_other_linear_types(tmp_path, suffix):
    for name, tx, ref in other_linear_transforms():
        path = str(tmp_path / f"{name}{suffix}")
        sitk.WriteTransform(tx, path)
        np.testing.assert_allclose(read_itk_transform(path), ref, atol=1e-9, rtol=0, err_msg=name)


def test_composite_of_linear_transforms(tmp_path):
    euler = sitk.Euler3DTransform((10.0, 0.0, -5.0), 0.2, -0.4, 0.3, (5.0, -6.0, 2.0))
    affine = sitk.AffineTransform(3)
    affine.SetCenter((-20.0, 15.0, 40.0))
    affine.SetMatrix((1.1, 0.05, 0.0, -0.04, 0.95, 0.1, 0.02, 0.0, 1.05))
    affine.SetTranslation((-3.0, 4.0, 1.0))
    path = str(tmp_path / "composite.h5")
    sitk.WriteTransform(sitk.CompositeTransform([euler, affine]), path)
    # ITK applies the last-added transform first: x -> euler(affine(x)).
    expected = sitk_matrix(euler) @ sitk_matrix(affine)
    got = read_itk_transform(path)
    np.testing.assert_allclose(got, expected, atol=1e-9, rtol=0)
    assert np.abs(got - sitk_matrix(affine) @ sitk_matrix(euler)).max() > 0.1  # order matters here
    pts = np.random.default_rng(9).uniform(-100, 100, size=(5, 3))
    direct = np.array([euler.TransformPoint(affine.TransformPoint(tuple(q))) for q in pts])
    np.testing.assert_allclose(apply(got, pts), direct, atol=1e-9)


def displacement_transform():
    z, y, x = np.meshgrid(np.arange(10), np.arange(11), np.arange(12), indexing="ij")
    field = np.stack([2.0 * np.sin(x / 3.0), 1.5 * np.cos(y / 4.0), 0.5 * z], axis=-1)
    img = sitk.GetImageFromArray(field.astype(np.float64), isVector=True)
    img.SetSpacing((4.0, 4.0, 4.0))
    img.SetOrigin((-20.0, -20.0, -20.0))
    return sitk.DisplacementFieldTransform(img)


def bspline_transform():
    ref = sitk.Image([16, 16, 16], sitk.sitkFloat32)
    ref.SetSpacing((3.0, 3.0, 3.0))
    ref.SetOrigin((-24.0, -24.0, -24.0))
    tx = sitk.BSplineTransformInitializer(ref, [3, 3, 3])
    params = np.random.default_rng(10).normal(0.0, 2.0, len(tx.GetParameters()))
    tx.SetParameters(params.tolist())
    return tx


@pytest.mark.parametrize("make", [displacement_transform, bspline_transform,
                                  lambda: sitk.CompositeTransform([sitk.Euler3DTransform(),
                                                                   displacement_transform()])],
                         ids=["displacement", "bspline", "composite"])
def test_non_linear_file_refused(tmp_path, make):
    path = str(tmp_path / "nonlinear.h5")
    sitk.WriteTransform(make(), path)
    with pytest.raises(InputError, match="non-linear") as info:
        read_itk_transform(path)
    assert "nonlinear.h5" in str(info.value)


def test_point_check_catches_non_linear_map():
    # The generic recovery must not trust a map that is affine only at the origin and unit points.
    def bent(p):
        p = np.asarray(p, dtype=np.float64)
        return tuple(p + 0.01 * np.array([p[1] * p[2], 0.0, 0.0]))

    with pytest.raises(InputError, match="non-linear"):
        itk_io._affine_from_point_map(bent, "bent.tfm")
    m = itk_io._affine_from_point_map(lambda p: tuple(np.asarray(p) * 2.0 + 1.0), "ok.tfm")
    np.testing.assert_allclose(m, homogeneous(2.0 * np.eye(3), [1.0, 1.0, 1.0]), atol=1e-12)


def test_bad_files(tmp_path):
    with pytest.raises(InputError, match="not found.*missing.tfm"):
        read_itk_transform(tmp_path / "missing.tfm")
    garbage = tmp_path / "garbage.tfm"
    garbage.write_text("this is not\nan ITK transform\n")
    with pytest.raises(InputError, match="garbage.tfm"):
        read_itk_transform(garbage)
    empty = tmp_path / "empty.h5"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty.h5"):
        read_itk_transform(empty)
    with pytest.raises(InputError, match="folder"):
        read_itk_transform(tmp_path)
    two_d = str(tmp_path / "2d.tfm")
    sitk.WriteTransform(sitk.Euler2DTransform(), two_d)
    with pytest.raises(InputError, match="2-D"):
        read_itk_transform(two_d)


def test_writer_refuses_bad_input(tmp_path):
    with pytest.raises(InputError, match="suffix"):
        write_itk_transform(tmp_path / "t.nii", np.eye(4))
    with pytest.raises(InputError, match="rotation"):
        write_itk_transform(tmp_path / "t.tfm", np.diag([1.1, 1.0, 1.0, 1.0]), kind="rigid")
    with pytest.raises(InputError, match="rotation"):  # a reflection is not a rotation
        write_itk_transform(tmp_path / "t.tfm", np.diag([-1.0, 1.0, 1.0, 1.0]), kind="rigid")
    with pytest.raises(InputError, match="4x4"):
        write_itk_transform(tmp_path / "t.tfm", np.eye(3))
    with pytest.raises(InputError, match="kind"):
        write_itk_transform(tmp_path / "t.tfm", np.eye(4), kind="bspline")
    assert not list(tmp_path.iterdir())  # nothing half-written


@pytest.mark.parametrize("name", ["t.h5", "t.tfm"])
def test_an_unwritable_transform_file_gives_one_line_and_no_hdf5_error_stack(tmp_path, capfd, name):
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where a folder should be")
    paths = [blocker / name] + ([f"/proc/disa-test-{name}"] if os.path.isdir("/proc/self") else [])
    for path in paths:  # /proc takes no new files: HDF5 printed ~20 lines of its error stack there
        with pytest.raises(InputError) as exc:
            write_itk_transform(path, np.eye(4))
        assert "\n" not in str(exc.value) and "could not write transform file" in str(exc.value)
    err = capfd.readouterr().err
    assert "HDF5" not in err and "H5F" not in err, err
    assert [p.name for p in tmp_path.iterdir()] == ["a-file"]


def test_rigid_writer_tolerates_round_off(tmp_path):
    r = Rotation.from_rotvec([0.2, -0.1, 0.3]).as_matrix()
    m = homogeneous(r + 1e-7, [1.0, 2.0, 3.0])  # within the 1e-4 rotation tolerance
    write_itk_transform(tmp_path / "r.tfm", m, kind="rigid")
    np.testing.assert_allclose(read_itk_transform(tmp_path / "r.tfm"), m, atol=1e-6)


# RAS / LPS --------------------------------------------------------------------------------------
def test_ras_lps_helpers():
    rng = np.random.default_rng(11)
    m = reference_affine(affine_params(rng, 1)[0], CENTER)
    np.testing.assert_allclose(slicer_to_parent_ras_to_itk(itk_to_slicer_to_parent_ras(m)), m, atol=1e-12)
    np.testing.assert_allclose(ras_to_lps_matrix(lps_to_ras_matrix(m)), m, atol=1e-15)
    flip = np.array([-1.0, -1.0, 1.0])
    to_parent = itk_to_slicer_to_parent_ras(m)
    for p_lps in rng.uniform(-100, 100, size=(5, 3)):
        moved_lps = apply(m, p_lps[None])[0]
        # lps_to_ras_matrix keeps the map's direction, just in RAS coordinates
        np.testing.assert_allclose(apply(lps_to_ras_matrix(m), (flip * p_lps)[None])[0],
                                   flip * moved_lps, atol=1e-10)
        # Slicer's to-parent brings the moving-space point back to the fixed-space point
        np.testing.assert_allclose(apply(to_parent, (flip * moved_lps)[None])[0], flip * p_lps, atol=1e-10)


# oblique images ---------------------------------------------------------------------------------
def blobs(p):
    """Smooth, asymmetric analytic intensity at LPS points (N, 3)."""
    c0 = np.array([10.0, -20.0, 35.0])
    centres = [c0 + [4.0, 3.0, -2.0], c0 + [-6.0, 2.0, 5.0], c0 + [1.0, -7.0, 1.0]]
    sigmas = [np.array([7.0, 5.0, 6.0]), np.array([5.0, 8.0, 6.0]), np.array([6.0, 6.0, 9.0])]
    amps = [1.0, 0.7, -0.5]
    out = 0.02 * (p[:, 0] - c0[0])
    for c, s, a in zip(centres, sigmas, amps):
        out = out + a * np.exp(-0.5 * (((p - c) / s) ** 2).sum(axis=1))
    return out


def grid_points(img):
    """LPS points of every voxel, in (Z, Y, X) array order, flattened."""
    k, j, i = np.meshgrid(*[np.arange(n) for n in img.shape], indexing="ij")
    ijk = np.stack([i, j, k], axis=-1).reshape(-1, 3).astype(np.float64)
    return apply(img.index_to_world(), ijk)


def oblique_image(size_xyz, spacing, rotvec_deg, center, values=None):
    d = Rotation.from_rotvec(np.deg2rad(rotvec_deg)).as_matrix()
    spacing = np.asarray(spacing, dtype=np.float64)
    origin = np.asarray(center) - d @ (spacing * (np.asarray(size_xyz) - 1) / 2.0)
    img = Image.from_array(np.zeros(size_xyz[::-1]), spacing, origin, d)
    if values is not None:
        img = img.same_geometry(torch.tensor(values(grid_points(img)).reshape(img.shape),
                                              dtype=torch.float32)[None])
    return img


def test_oblique_resampling_matches_simpleitk(tmp_path):
    c = np.array([10.0, -20.0, 35.0])
    moving = oblique_image((30, 26, 22), (1.2, 0.8, 1.5), [25.0, -30.0, 40.0], c, blobs)
    fixed = oblique_image((20, 18, 14), (1.0, 1.3, 1.1), [-15.0, 35.0, 10.0], c + [2.0, -1.0, 1.0])
    m = (Rigid(c).matrix(torch.tensor([8.0, -6.0, 5.0, 3.0, -2.0, 1.5])) @
         Affine(c).matrix(torch.tensor([4.0, 3.0, -2.0, 0, 0, 0, -3.0, -5.0, 2.0, 1.0, 4.0, 6.0]))).numpy()[0]
    path = tmp_path / "moving_from_fixed.h5"
    write_itk_transform(path, m, center=c, kind="affine")

    ref = sitk.Resample(moving.to_sitk(), fixed.to_sitk(), sitk.ReadTransform(str(path)),
                        sitk.sitkLinear, 0.0, sitk.sitkFloat64)
    ref = sitk.GetArrayFromImage(ref).ravel()
    ours = resample_image(moving, fixed, read_itk_transform(path)).data[0].numpy().ravel()

    # Keep voxels whose moving-space position is at least one voxel inside the moving grid.
    q = apply(m, grid_points(fixed))
    idx = apply(moving.world_to_index(), q)
    inside = np.all((idx >= 1.0) & (idx <= np.array(moving.size) - 2.0), axis=1)
    assert inside.mean() > 0.5

    span = float(moving.data.max() - moving.data.min())
    assert np.abs(ours - ref)[inside].max() < 1e-4 * span  # float32 sampling round-off
    # Both agree with the analytic image at the transformed points (linear interpolation error only)
    truth = blobs(q)
    assert np.abs(ours - truth)[inside].max() < 0.03 * span
    # ...and the transform matters: identity or the inverse map would be far off.
    assert np.abs(blobs(grid_points(fixed)) - truth)[inside].max() > 0.2 * span
    assert np.abs(blobs(apply(np.linalg.inv(m), grid_points(fixed))) - truth)[inside].max() > 0.2 * span


def test_rotation_matrix_is_the_matrix_exponential_with_exact_gradients_at_zero():
    from disa.transforms import rotation_matrix

    gen = torch.Generator().manual_seed(3)
    for scale in (1e-9, 1e-3, 1.0, 45.0, 179.0):  # degrees, through the small-angle branch
        v = torch.randn(20, 3, generator=gen, dtype=torch.float64) * scale
        w = v * (math.pi / 180.0)
        z = torch.zeros_like(w[:, 0])
        skew = torch.stack([torch.stack([z, -w[:, 2], w[:, 1]], -1), torch.stack([w[:, 2], z, -w[:, 0]], -1),
                            torch.stack([-w[:, 1], w[:, 0], z], -1)], -2)
        np.testing.assert_allclose(rotation_matrix(v).numpy(), torch.linalg.matrix_exp(skew).numpy(), atol=1e-12)
    for v0 in (torch.zeros(1, 3), torch.tensor([[0.3, -0.2, 0.5]])):
        assert torch.autograd.gradcheck(rotation_matrix, (v0.double().requires_grad_(True),))


def test_torch_threads_restores_the_count_even_on_errors():
    from disa.threads import torch_threads

    before = torch.get_num_threads()
    with pytest.raises(RuntimeError):
        with torch_threads(1):
            assert torch.get_num_threads() == 1
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before
