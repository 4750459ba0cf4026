"""The Gauss-Newton model of the dense similarity (disa.deformable.linearized): exact at its
reference, a close prediction for moves under a voxel, rebuilt only beyond its radius, exact
for the terms it does not model, and the deformable mode as accurate with it as without; the
dense feature warps' derivative (central differences) that it shares."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from disa.deformable import DENSE_DEFAULTS, build_term, combined_loss, register_deformable, working_grid
from disa.deformable.fields import warp, warp_features
from disa.deformable.linearized import LinearizedLoss, gauss_newton_terms
from disa.spatial import resample_image
from disa.spatial.image import sample_field
from synthetic import SPACING, deformed_pair, inner_points, mean_error


@pytest.fixture(scope="module")
def grid_pair(one_thread):
    fixed, moving, _ = deformed_pair()
    grid = working_grid(fixed, SPACING)
    f, m = resample_image(fixed, grid), resample_image(moving, grid)
    return f, m, f.mask.float()[None], m.mask.float()[None]


def smooth_field(shape, seed: int, size: float) -> torch.Tensor:
    """A smooth random voxel displacement whose largest component is ``size`` voxels."""
    coarse = torch.randn(1, 3, 5, 5, 5, generator=torch.Generator().manual_seed(seed))
    d = F.interpolate(coarse, size=tuple(shape), mode="trilinear", align_corners=True)
    return d / d.abs().max() * size


def value_and_gradient(loss_fn, disp):
    u = disp.clone().requires_grad_(True)
    value = loss_fn(u)
    gradient = torch.autograd.grad(value, u)[0]
    return float(value.detach()), gradient


def test_model_is_exact_at_its_reference_and_close_nearby(grid_pair):
    f, m, fv, mv = grid_pair
    terms = [(1.0, build_term("mind", f, m, fv, mv))]
    reference = smooth_field(f.shape, 0, 1.5)
    model = LinearizedLoss(terms, radius=1e9)  # never rebuilt after the first call

    def exact(u):
        return combined_loss(terms, u, 0.0)

    e0, g0 = value_and_gradient(exact, reference)
    q0, h0 = value_and_gradient(lambda u: model(u, 0.0), reference)
    assert q0 == pytest.approx(e0, rel=1e-6)
    assert torch.allclose(h0, g0, rtol=1e-4, atol=1e-9)
    # a smooth move of at most 0.1 voxel: the model predicts the loss change and the gradient
    moved = reference + smooth_field(f.shape, 1, 0.1)
    e1, g1 = value_and_gradient(exact, moved)
    q1, h1 = value_and_gradient(lambda u: model(u, 0.0), moved)
    assert model.refreshes == 1
    assert abs((q1 - q0) - (e1 - e0)) < 0.3 * abs(e1 - e0)
    assert float((g1 * h1).sum() / (g1.norm() * h1.norm())) > 0.95
    # the gradient moved with the displacement: a first-order model alone would keep g0
    assert not torch.allclose(h1, h0)


def test_rebuilt_only_beyond_its_radius(grid_pair):
    f, m, fv, mv = grid_pair
    model = LinearizedLoss([(1.0, build_term("mse", f, m, fv, mv))], radius=0.5)
    reference = smooth_field(f.shape, 2, 1.0)
    model(reference, 1.0)
    model(reference + smooth_field(f.shape, 3, 0.4), 1.0)
    assert model.refreshes == 1
    model(reference + smooth_field(f.shape, 3, 0.6), 1.0)
    assert model.refreshes == 2 and float((model.reference - reference).abs().max()) > 0.5


def test_unmodelled_terms_and_radius_zero_are_exact(grid_pair):
    f, m, fv, mv = grid_pair
    mse, ncc = build_term("mse", f, m, fv, mv), build_term("ncc", f, m, fv, mv)
    disp = smooth_field(f.shape, 4, 1.0)
    both = [(0.5, mse), (0.5, ncc)]
    assert torch.equal(LinearizedLoss(both, radius=0.0)(disp, 1.0), combined_loss(both, disp, 1.0))
    # NCC has no squared-difference form: only MSE is modelled, NCC stays exact
    model = LinearizedLoss(both, radius=0.5)
    assert [t.name for _, t in model.modelled] == ["mse"] and [t.name for _, t in model.exact] == ["ncc"]
    moved = disp + smooth_field(f.shape, 5, 0.2)
    model(disp, 1.0)
    assert model.refreshes == 1
    exact_ncc = 0.5 * (ncc.forward_loss(moved) + ncc.backward_loss(moved))
    modelled_mse = model(moved, 0.0) - exact_ncc
    assert float(modelled_mse) == pytest.approx(float(0.5 * (mse.forward_loss(moved) + mse.backward_loss(moved))),
                                                rel=0.02)


@pytest.mark.parametrize("method", ["deformable", "diffeomorphic"])
def test_default_is_as_accurate_as_the_exact_similarity(one_thread, method):
    """The deformable and stationary-velocity modes' default (the model, rebuilt every 0.25
    voxels) against the exact similarity every iteration (``linearize=0``) on the known synthetic
    deformation; the stationary field folds no voxel either way."""
    fixed, moving, truth = deformed_pair()
    points = inner_points(fixed)
    before = float(np.linalg.norm(sample_field(truth, points), axis=1).mean())
    exact = register_deformable(fixed, moving, method, linear=np.eye(4), threads=1, linearize=0)
    default = register_deformable(fixed, moving, method, linear=np.eye(4), threads=1)
    e_exact, e_default = mean_error(exact, truth, points), mean_error(default, truth, points)
    print(f"{method}: identity {before:.3f} mm, exact {e_exact:.3f} mm, linearized {e_default:.3f} mm, "
          f"{exact.seconds:.1f} / {default.seconds:.1f} s")
    assert default.deformation["linearize_voxels"] == DENSE_DEFAULTS.linearize > 0
    assert exact.deformation["linearize_voxels"] == 0
    assert e_exact < 0.8 * before and e_default < 0.8 * before
    assert e_default < 1.1 * e_exact
    assert not torch.equal(exact.field.data, default.field.data)
    if method == "diffeomorphic":
        assert exact.deformation["jacobian"]["nonpositive"] == default.deformation["jacobian"]["nonpositive"] == 0


def test_feature_warps_differentiate_by_central_differences():
    """``warp_features`` samples as ``warp`` does, and its derivative in the displacement is the
    warped features' central difference: exact for a quadratic feature at the identity, where
    trilinear interpolation's own derivative is a one-sided difference, one unit off for x²,
    and a loss through it gets the same gradient as the Gauss-Newton model's."""
    x = torch.arange(12.0)
    data = torch.stack([(x ** 2).view(1, 1, 12).expand(6, 7, 12), x.view(1, 1, 12).expand(6, 7, 12)])[None]
    disp = torch.zeros(1, 3, 6, 7, 12, requires_grad=True)
    warped = warp_features(data, disp)
    assert torch.equal(warped, warp(data, disp.detach()))
    grad = torch.autograd.grad(warped[:, 0].sum(), disp)[0]
    inner = (slice(None), 0, slice(None), slice(None), slice(1, -1))
    assert torch.allclose(grad[inner], (2 * x[1:-1]).expand(6, 7, 10), atol=1e-4)  # d(x²)/dx = 2x
    assert float(grad[:, 1:].abs().max()) < 1e-4  # nothing varies along y or z (float32 sampling)
    trilinear = torch.autograd.grad(warp(data, disp)[:, 0].sum(), disp)[0]
    # one-sided, forward or backward as rounding puts the sample on either side of the face
    assert torch.allclose((trilinear[inner] - 2 * x[1:-1]).abs(), torch.ones(6, 7, 10), atol=1e-4)
    target = torch.zeros_like(warped.detach())
    weight = torch.full((1, 1, 6, 7, 12), 0.01)
    loss = ((target - warp_features(data, disp)) ** 2 * weight).sum()
    expected, _ = gauss_newton_terms(warp(data, disp.detach()), target, weight)
    assert torch.allclose(torch.autograd.grad(loss, disp)[0], expected, rtol=1e-5)
    with pytest.raises(ValueError):
        warp_features(data.clone().requires_grad_(True), disp)


@pytest.mark.parametrize("shape", [(1, 12, 9, 10, 11), (2, 3, 2, 5, 4), (1, 1, 2, 2, 2)])
def test_spatial_gradients_are_torch_gradient_to_the_bit(shape):
    """The buffered central differences are ``torch.gradient``'s (one-sided at the borders), on
    two-voxel axes too; with autograd on, the result stays differentiable."""
    from disa.deformable.fields import spatial_gradients

    f = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(spatial_gradients(f), torch.gradient(f, dim=(4, 3, 2))))
    g = f.clone().requires_grad_(True)
    assert spatial_gradients(g)[0].requires_grad


def test_channel_dot_is_the_channel_sum_of_products():
    """``channel_dot`` (accumulated channel by channel) equals ``(a * b).sum(1)`` to float
    rounding, into a given output too, and stays differentiable when an input needs a gradient."""
    from disa.deformable.fields import channel_dot

    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(2, 12, 6, 7, 8, generator=g), torch.randn(2, 12, 6, 7, 8, generator=g)
    expected = (a * b).sum(1)
    assert torch.allclose(channel_dot(a, b), expected, rtol=1e-6, atol=1e-5)
    out = torch.empty(2, 3, 6, 7, 8)
    channel_dot(a, b, out=out[:, 1])
    assert torch.allclose(out[:, 1], expected, rtol=1e-6, atol=1e-5)
    x = a.clone().requires_grad_(True)
    assert torch.equal(torch.autograd.grad(channel_dot(x, b).sum(), x)[0], b)
    into = torch.zeros(2, 3, 6, 7, 8)
    channel_dot(x, b, out=into[:, 2])  # differentiable into a given output too
    assert torch.allclose(into[:, 2], expected, rtol=1e-6, atol=1e-5)
    assert torch.equal(torch.autograd.grad(into.sum(), x)[0], b)


def test_gauss_newton_model_value_and_gradient():
    """``gauss_newton_model`` (its gradient by hand) is g . d + d^T H d summed over voxels, and its
    derivative g + 2 H d is autograd's through that formula, to float rounding."""
    from disa.deformable.linearized import gauss_newton_model

    g = torch.Generator().manual_seed(7)
    grad, hess = torch.randn(1, 3, 5, 6, 7, generator=g, dtype=torch.float64), \
        torch.randn(1, 6, 5, 6, 7, generator=g, dtype=torch.float64)
    d = torch.randn(1, 3, 5, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    x, y, z = d[:, 0], d[:, 1], d[:, 2]
    h = hess[0]
    formula = (grad * d).sum() + (h[0] * x * x + h[1] * y * y + h[2] * z * z
                                  + 2.0 * (h[3] * x * y + h[4] * x * z + h[5] * y * z)).sum()
    value = gauss_newton_model(d, grad, hess)
    assert float(value.detach()) == pytest.approx(float(formula.detach()), rel=1e-12)
    expected, got = (torch.autograd.grad(v, d)[0] for v in (formula, value))
    assert torch.allclose(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("source, target", [((9, 9, 9), (17, 17, 17)), ((1, 5, 7), (3, 1, 9)),
                                            ((20, 9, 13), (7, 17, 13)), ((4, 6, 2), (4, 6, 2))])
def test_interpolate_to_is_trilinear_interpolation(source, target):
    """``interpolate_to`` (one matrix product per axis) gives F.interpolate's trilinear values
    (align_corners=True) and gradients, single-voxel axes and an unchanged shape included."""
    from disa.deformable.fields import interpolate_to

    v = torch.randn(2, 3, *source, generator=torch.Generator().manual_seed(11), dtype=torch.float64,
                    requires_grad=True)
    expected = F.interpolate(v, size=target, mode="trilinear", align_corners=True)
    got = interpolate_to(v, target)
    assert got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-12, atol=1e-12)
    w = torch.randn(expected.shape, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    assert torch.allclose(torch.autograd.grad(got, v, w)[0], torch.autograd.grad(expected, v, w)[0],
                          rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(9, 7, 5), (2, 3, 4), (3, 2, 2), (1, 4, 4)])
def test_folding_penalty_matches_autograd_through_the_determinant(shape):
    """The folding penalty's hand-written gradient (cofactors, the central differences' adjoint)
    equals autograd's through ``jacobian_determinant_voxels``, on folded fields and two-voxel
    axes too (a one-voxel axis takes autograd's path)."""
    from disa.deformable.fields import folding_penalty, jacobian_determinant_voxels

    d = (torch.randn(1, 3, *shape, generator=torch.Generator().manual_seed(13), dtype=torch.float64) * 0.8)
    d.requires_grad_(True)
    reference = F.relu(0.1 - jacobian_determinant_voxels(d)).pow(2).mean()
    value = folding_penalty(d, 0.1)
    ref, val = float(reference.detach()), float(value.detach())
    assert ref > 0.01 and val == pytest.approx(ref, rel=1e-12)
    expected, got = (torch.autograd.grad(v, d)[0] for v in (reference, value))
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-14)


def test_max_length_is_the_longest_vector():
    from disa.deformable.fields import max_length

    v = torch.randn(3, 6, 7, 8, generator=torch.Generator().manual_seed(14))
    assert max_length(v) == pytest.approx(float(v.norm(dim=0).max()), rel=1e-6)
