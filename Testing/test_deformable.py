"""Dense registration (disa.deformable): a smooth random phantom, deformed by a known smooth
displacement and shown with a different intensity mapping in each image, must be recovered by
each dense model better than by the linear result (identity here), without folding for the
diffeomorphic models; plus the field frames, the combined loss and the settings checks."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from disa.deformable import (
    DENSE_DEFAULTS,
    DENSE_METHODS,
    build_term,
    combined_loss,
    field_image,
    jacobian_determinant,
    jacobian_statistics,
    lps_to_voxel,
    register_deformable,
    working_grid,
)
from disa.deformable.fields import identity_grid, resize_field, voxel_scale, warp
from disa.errors import CancelledError, InputError
from disa.registration.result import DENSE_TRANSFORMS
from disa.similarity import parse_metric
from disa.spatial import Image, resample_image
from disa.spatial.image import sample_field
from synthetic import (
    SPACING,
    deformed_pair,
    inner_points,
    mean_error,
    rotation,
    smooth_noise,
)


@pytest.fixture(scope="module")
def pair(one_thread):
    return deformed_pair()


RUNS = {"deformable": {}, "diffeomorphic": {"iterations": 100}, "neural-ode": {"iterations": 60, "lr": 5e-3}}


@pytest.mark.parametrize("method", DENSE_METHODS)
def test_recovers_known_deformation(pair, method):
    fixed, moving, truth = pair
    points = inner_points(fixed)
    before = float(np.linalg.norm(sample_field(truth, points), axis=1).mean())  # the identity's error
    t0 = time.perf_counter()
    result = register_deformable(fixed, moving, method, linear=np.eye(4), threads=1, **RUNS[method])
    seconds = time.perf_counter() - t0
    after = mean_error(result, truth, points)
    stats = result.deformation["jacobian"]
    print(f"{method}: mean error {before:.2f} -> {after:.2f} mm, {result.deformation['iterations']} iterations, "
          f"{seconds:.1f} s, {stats['nonpositive']} folded voxels, std log|J| {stats['std_log_jacobian']:.3f}")
    assert after < 0.8 * before
    assert result.transform == method and result.field.channels == 3
    assert result.final_similarity > result.initial_similarity
    assert np.array_equal(result.matrix, np.eye(4))
    if method != "deformable":
        assert stats["nonpositive"] == 0 and stats["min"] > 0
    assert result.deformation["method"] == method and result.deformation["seconds"] > 0


def test_projected_mind_recovers_known_deformation(pair):
    """MIND-SSC projected onto 6 shared components (``mind_components``) still recovers the
    deformation, and is a different run from the default's 12 channels."""
    fixed, moving, truth = pair
    points = inner_points(fixed)
    before = float(np.linalg.norm(sample_field(truth, points), axis=1).mean())
    projected = register_deformable(fixed, moving, linear=np.eye(4), threads=1, mind_components=6)
    assert mean_error(projected, truth, points) < 0.8 * before
    full = register_deformable(fixed, moving, linear=np.eye(4), threads=1, iterations=0, coarse_iterations=0)
    short = register_deformable(fixed, moving, linear=np.eye(4), threads=1, iterations=0, coarse_iterations=0,
                                mind_components=6)
    assert not torch.equal(full.field.data, short.field.data)  # the discrete step sees other features


def test_same_seed_same_field(pair):
    fixed, moving, _ = pair
    for method, options in (("deformable", {"iterations": 5}), ("neural-ode", {"iterations": 5, "coarse_iterations": 5})):
        a = register_deformable(fixed, moving, method, linear=np.eye(4), threads=1, seed=3, **options)
        b = register_deformable(fixed, moving, method, linear=np.eye(4), threads=1, seed=3, **options)
        assert torch.equal(a.field.data, b.field.data), method


def test_combined_loss_with_a_zero_weight_is_the_single_loss(pair):
    fixed, moving, _ = pair
    grid = working_grid(fixed, SPACING)
    f = resample_image(fixed, grid)
    m = resample_image(moving, grid)
    fv, mv = f.mask.float()[None], m.mask.float()[None]
    mse, ncc = build_term("mse", f, m, fv, mv), build_term("ncc", f, m, fv, mv)
    disp = 0.5 * torch.randn(1, 3, *grid.shape, generator=torch.Generator().manual_seed(0))
    single = combined_loss([(1.0, mse)], disp, smoothness=1.0)
    assert torch.equal(combined_loss([(1.0, mse), (0.0, ncc)], disp, smoothness=1.0), single)
    both = combined_loss([(0.5, mse), (0.5, ncc)], disp, smoothness=1.0)
    assert not torch.equal(both, single)
    # Eq. 1: both directions of each term, plus the regularizer
    reg = combined_loss([(1.0, mse)], disp, smoothness=0.0)
    assert torch.allclose(reg, mse.forward_loss(disp) + mse.backward_loss(disp))


def test_field_frames_on_an_oblique_grid(one_thread):
    """A voxel displacement converted to LPS (direction @ spacing * d) resamples the moving image
    through ``sample_field`` exactly as the voxel warp does, and a linear field has the
    Jacobian determinant det(I + A)."""
    rng = np.random.default_rng(1)
    direction = rotation(0.3, -0.5, 0.8)
    grid = Image(torch.zeros(1, 20, 24, 28), np.array([2.0, 2.5, 3.0]), np.array([10.0, -5.0, 3.0]), direction)
    source = grid.same_geometry(smooth_noise(grid.shape, 2.0, rng)[None])
    disp = torch.stack([smooth_noise(grid.shape, 4.0, rng) for _ in range(3)])[None] * 1.5
    field = field_image(disp, grid)
    expected = torch.einsum("ij,jzyx->izyx", torch.as_tensor(direction * grid.spacing, dtype=torch.float32), disp[0])
    assert torch.allclose(field.data, expected, atol=1e-5)
    assert torch.allclose(lps_to_voxel(field).float(), disp, atol=1e-5)
    by_voxels = warp(source.data[None], disp)[0, 0]
    by_lps = resample_image(source, grid, displacement=lambda p: torch.as_tensor(
        sample_field(field, p.reshape(-1, 3).numpy())).reshape(p.shape)).data[0]
    inside = warp(torch.ones(1, 1, *grid.shape), disp)[0, 0] > 0.999
    assert float((by_voxels - by_lps)[inside].abs().max()) < 1e-3
    a = np.array([[0.1, 0.05, -0.02], [0.0, -0.2, 0.03], [0.04, 0.0, 0.15]])  # LPS gradient of u
    points = (grid.index_to_world()[:3, :3] @ np.stack(np.meshgrid(
        *[np.arange(n) for n in grid.size], indexing="ij"), 0).reshape(3, -1)).T + grid.origin
    u = (points - grid.origin) @ a.T  # grid order of meshgrid ij: (x, y, z) -> reshape to (Z, Y, X)
    data = torch.as_tensor(u.reshape(*grid.size, 3).transpose(3, 2, 1, 0).copy(), dtype=torch.float32)
    det = jacobian_determinant(grid.same_geometry(data))
    assert np.allclose(det, np.linalg.det(np.eye(3) + a), atol=1e-4)
    stats = jacobian_statistics(grid.same_geometry(data))
    assert stats["nonpositive"] == 0 and stats["std_log_jacobian"] < 1e-4


def test_oblique_case_with_its_own_linear_start(one_thread):
    """An oblique pair, moved by a translation: the run computes its linear start itself and the
    result (matrix and field, in LPS) recovers the known map better than the linear one."""
    fixed, moving, truth = deformed_pair(direction=rotation(0.2, 0.4, -0.3), seed=2)
    shift = np.array([3.0, -2.0, 2.5])
    moving = Image(moving.data, moving.spacing, moving.origin + shift, moving.direction)
    points = inner_points(fixed)
    true_moving = points + sample_field(truth, points) + shift
    stages = []
    result = register_deformable(fixed, moving, "deformable", threads=1, search="local",
                                 progress=lambda stage, fraction, message: stages.append((stage, fraction)))
    linear_error = float(np.linalg.norm(points @ result.matrix[:3, :3].T + result.matrix[:3, 3] - true_moving,
                                        axis=1).mean())
    after = float(np.linalg.norm(result.transform_points(points) - true_moving, axis=1).mean())
    print(f"oblique: linear {linear_error:.2f} mm -> deformable {after:.2f} mm")
    assert np.linalg.norm(result.matrix[:3, 3] - shift) < 2.0
    # The rigid start already absorbs part of the deformation (about 1.25 -> 0.96 mm here), so the
    # margin over it is smaller than over the identity in test_recovers_known_deformation.
    assert after < 0.95 * linear_error
    names = [s for s, _ in stages]
    assert "discrete search" in names and "instance optimization" in names and names[-1] == "done"
    assert all(0.0 <= f <= 1.0 for _, f in stages)


def test_cancel(pair):
    fixed, moving, _ = pair
    with pytest.raises(CancelledError):
        register_deformable(fixed, moving, "diffeomorphic", linear=np.eye(4), threads=1, cancel=lambda: True)


@pytest.mark.parametrize("options, words", [
    ({"transform": "bspline"}, "dense transform"),
    ({"iterations": -1}, "iterations"),
    ({"spacing": 0}, "spacing"),
    ({"stride": 3}, "stride"),
    ({"integrator": "heun"}, "integrator"),
    ({"metric": "lc2"}, "dense form"),
    ({"metric": "mind+foo"}, "unknown similarity"),
    ({"grid_spacing_mm": -8}, "grid spacing"),
    ({"lr": float("nan")}, "learning rate"),
    ({"search": "local"}, "linear options"),
    ({"linear": np.zeros((4, 4))}, "invertible"),
    ({"mind_components": 13}, "MIND-SSC components"),
    ({"linearize": -1}, "linearization radius"),
])
def test_bad_settings(pair, options, words):
    fixed, moving, _ = pair
    options = {"linear": np.eye(4), **options}
    with pytest.raises(InputError, match=words):
        register_deformable(fixed, moving, threads=1, **options)


def test_defaults_in_one_place():
    assert DENSE_METHODS == DENSE_TRANSFORMS
    assert DENSE_DEFAULTS.grid_spacing_mm == 8.0 and DENSE_DEFAULTS.integrator == "rk4"
    assert DENSE_DEFAULTS.ode_coarse_iterations == 300 and DENSE_DEFAULTS.levels >= 1
    assert set(DENSE_DEFAULTS.as_dict()) >= {"transform", "metric", "stride", "iterations", "lr", "smoothness"}


@pytest.mark.parametrize("method, default", [("deformable", "iterations"), ("diffeomorphic", "dense_iterations"),
                                             ("neural-ode", "ode_iterations")])
def test_each_model_takes_its_own_finest_level_iterations(method, default):
    """A run without ``iterations`` takes its model's entry of the defaults table; a given count wins."""
    from disa.deformable.settings import check_dense_settings

    d = DENSE_DEFAULTS

    def resolved(iterations):
        return check_dense_settings(method, None, d.grid_spacing_mm, d.stride, d.search_radius_mm, iterations, None,
                                    None, d.jacobian_weight, d.integrator, d.time_steps, 0, "rigid")["iterations"]

    assert resolved(None) == getattr(d, default) and resolved(7) == 7


@pytest.mark.parametrize("method", ["deformable", "diffeomorphic"])
def test_levels_run_coarse_to_fine(pair, method):
    """Two levels: the coarse working grid twice the fine spacing, each level's own iteration
    count (the diffeomorphic loop may stop a level early once converged, never run past it),
    the field on the fine grid; one level runs the fine grid alone."""
    fixed, moving, _ = pair
    two = register_deformable(fixed, moving, method, linear=np.eye(4), spacing=4.0, levels=2, coarse_iterations=6,
                              iterations=3, threads=1)
    spacings = [level.spacing for level in two.levels]
    assert len(spacings) == 2 and spacings[0] == pytest.approx(2 * spacings[1], rel=0.05)
    counts = two.deformation["level_iterations"]
    assert (counts == [6, 3]) if method == "deformable" else (0 < counts[0] <= 6 and 0 < counts[1] <= 3)
    assert list(two.field.size) == two.deformation["working_size_xyz"]
    one = register_deformable(fixed, moving, method, linear=np.eye(4), spacing=4.0, levels=1, iterations=3, threads=1)
    assert len(one.levels) == 1 and one.levels[0].spacing == pytest.approx(spacings[1])
    assert list(one.field.size) == list(two.field.size)


def test_identity_grid_matches_voxel_scale():
    shape = (5, 6, 7)
    g = identity_grid(shape)
    assert torch.allclose(g[0, 0, 0, 1] - g[0, 0, 0, 0], torch.tensor([voxel_scale(shape)[0], 0.0, 0.0]))
    assert F.grid_sample(torch.arange(7.0).view(1, 1, 1, 1, 7).expand(1, 1, 5, 6, 7), g,
                         align_corners=True)[0, 0, 2, 3, 4] == pytest.approx(4.0, abs=1e-5)


@pytest.mark.parametrize("metric", ["0.5*mind+0.5*ncc", "mi", "ngf", "lncc", "disa"])
def test_other_metrics_run(pair, metric):
    """Every dense measure (and a weighted sum) drives the discrete search and the optimization."""
    fixed, moving, _ = pair
    result = register_deformable(fixed, moving, "deformable", metric=metric, linear=np.eye(4), threads=1,
                                 iterations=3)
    assert torch.isfinite(result.field.data).all() and np.isfinite(result.final_similarity)
    assert result.metric == str(parse_metric(metric)) and result.deformation["level_iterations"][-1] == 3


def test_adam_takes_torch_adams_steps():
    """The dense optimizers' Adam (disa.optim.Adam) follows torch.optim.Adam's iterates on a
    non-convex two-tensor problem."""
    from disa.optim import Adam

    torch.manual_seed(0)
    ours = [torch.randn(3, 5).requires_grad_(), torch.randn(4).requires_grad_()]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    start = [p.detach().clone() for p in ours]
    opts = (Adam(ours, lr=0.05), torch.optim.Adam(theirs, lr=0.05))
    for _ in range(50):
        for opt, (x, w) in zip(opts, (ours, theirs)):
            opt.zero_grad()
            ((x.sin() ** 2).sum() + (w ** 4).sum() * x.sum()).backward()
            opt.step()
    for a, b, s in zip(ours, theirs, start):
        assert torch.equal(a, b) and float((a - s).detach().abs().max()) > 0.1


def test_refined_adam_carries_moments_at_the_new_grids_scale():
    """A stationary velocity refined onto a grid twice as fine keeps Adam's step count, and its
    moments interpolated and scaled as the gradient scales: after one step on the coarse grid,
    the carried first moment and root second moment match what that step's gradient is on the
    fine grid (medians within 15% inside), where unscaled ones are 16x too large."""
    from disa.deformable.diffeomorphic import refined_adam
    from disa.optim import Adam

    work = (33, 33, 33)
    weight = F.interpolate(torch.randn(1, 3, 4, 4, 4, generator=torch.Generator().manual_seed(1)), size=work,
                           mode="trilinear", align_corners=True)

    def gradient(v):
        v = v.detach().clone().requires_grad_(True)
        return torch.autograd.grad((weight * resize_field(v, work)).sum(), v)[0]

    coarse = torch.zeros(1, 3, 9, 9, 9, requires_grad=True)
    optimizer = Adam([coarse], lr=0.1)
    coarse.grad = gradient(coarse)
    optimizer.step()
    fine = resize_field(coarse.detach(), (17, 17, 17)).requires_grad_(True)
    refined = refined_adam(optimizer, fine, lr=0.1)
    g = gradient(fine)
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2), slice(2, -2))
    # after one step: m = (1 - 0.9) g, v = (1 - 0.999) g^2
    first = float((refined.m[0][inner] / (0.1 * g[inner])).median())
    second = float((refined.v[0][inner].sqrt() / (0.001 ** 0.5 * g[inner].abs())).median())
    assert refined.steps == 1 and refined.params[0] is fine
    assert 0.85 < first < 1.15 and 0.85 < second < 1.15
    assert refined_adam(None, fine, lr=0.1).steps == 0


@pytest.mark.parametrize("method", ["diffeomorphic", "neural-ode"])
def test_diffeomorphic_starts_from_the_discrete_step(pair, method):
    """With no optimization at all, the velocity (the stationary field, or the neural-ODE's offset
    plus its network's zero output) is the discrete + convex step's displacement, exponentiated
    or integrated: already closer to the truth than the identity, and unfolded."""
    fixed, moving, truth = pair
    points = inner_points(fixed)
    before = float(np.linalg.norm(sample_field(truth, points), axis=1).mean())
    result = register_deformable(fixed, moving, method, linear=np.eye(4), threads=1, levels=1, iterations=0)
    assert result.deformation["level_iterations"] == [0] and result.deformation["discrete_seconds"] > 0
    assert mean_error(result, truth, points) < 0.9 * before
    assert result.deformation["jacobian"]["nonpositive"] == 0
