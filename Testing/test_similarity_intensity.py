"""Intensity similarities (disa.similarity: mi, ncc, lncc, ngf, mse, combined).

Every measure is checked against a slow, explicit numpy reference written from its definition
(per-voxel loops for windows and stencils, a Parzen histogram filled sample by sample), on
small random volumes with random valid and fixed masks. Further checks: MI peaks at alignment of
a real MR crop with a non-monotone remap of itself, gradients match finite differences, points
pushed out of view never score better than unrelated content, and Combined is the weighted sum
of its parts.
"""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from disa.errors import InputError
from disa.spatial import Image
from disa.spatial.image import sample
from disa.similarity.base import Prepared, Similarity, fixed_mask_of
from disa.similarity.combined import Combined
from disa.similarity.mi import MutualInformation, parzen_weights
from disa.similarity.mse import MSE
from disa.similarity.ncc import LNCC, NCC
from disa.similarity.ngf import NGF
from disa.spatial.filters import gradient_magnitude

T1_PATH = "/work/shared/data/resect/Case24/Case24-T1.nii.gz"
SHAPE = (9, 10, 11)
SPACING = (0.8, 1.0, 1.3)  # x, y, z: anisotropic, so axis mix-ups show


# data -------------------------------------------------------------------------------------------
def smooth(rng, shape, sigma=1.0):
    v = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (v - v.mean()) / v.std()


def blob_mask(rng, shape, keep=0.7, sigma=2.0):
    """A random mask made of contiguous regions (a thresholded smooth field)."""
    v = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return v > np.quantile(v, 1.0 - keep)


def case(seed=0, batch=2, fixed_mask=True):
    """Fixed and moving images (moving with a mask too), warped moving samples and valid masks."""
    rng = np.random.default_rng(seed)
    f = smooth(rng, SHAPE)
    m = 0.7 * f + 0.5 * smooth(rng, SHAPE)
    fm = blob_mask(rng, SHAPE, 0.8) if fixed_mask else None
    mm = blob_mask(rng, SHAPE, 0.9)
    fixed = Image.from_array(f, spacing=SPACING,
                             mask=None if fm is None else torch.from_numpy(fm)[None])
    moving = Image.from_array(m, spacing=SPACING, mask=torch.from_numpy(mm)[None])
    warped = np.stack([m + 0.3 * (b + 1) * smooth(rng, SHAPE) for b in range(batch)])[:, None]
    valid = np.stack([blob_mask(rng, SHAPE, 0.75) for _ in range(batch)])[:, None].astype(np.float64)
    return fixed, moving, warped, valid


def region_np(fixed, valid):
    fm = np.ones(SHAPE) if fixed.mask is None else fixed.mask[0].numpy().astype(np.float64)
    return valid[:, 0] * fm, fm


def evaluate(sim, fixed, moving, warped, valid):
    p = sim.prepare(fixed, moving)
    out = p.evaluate(torch.from_numpy(warped).float(), torch.from_numpy(valid).float())
    assert out.shape == (warped.shape[0],)
    return out.double().numpy()


# references -------------------------------------------------------------------------------------
def ref_ncc(f, warped, region):
    out = []
    for b in range(warped.shape[0]):
        w = region[b].ravel()
        c = np.cov(f.ravel(), warped[b, 0].ravel(), aweights=w, bias=True)
        out.append(c[0, 1] / math.sqrt(c[0, 0] * c[1, 1]))
    return np.array(out)


def ref_lncc(f, warped, region, total, radius, eps=1e-5):
    Z, Y, X = f.shape
    out = []
    for b in range(warped.shape[0]):
        m, r = warped[b, 0], region[b]
        acc = 0.0
        for z, y, x in zip(*np.nonzero(r)):
            sl = (slice(max(z - radius, 0), z + radius + 1), slice(max(y - radius, 0), y + radius + 1),
                  slice(max(x - radius, 0), x + radius + 1))
            w, fw, mw = r[sl].ravel(), f[sl].ravel(), m[sl].ravel()
            mf, mm = np.average(fw, weights=w), np.average(mw, weights=w)
            cov = np.average((fw - mf) * (mw - mm), weights=w)
            vf = np.average((fw - mf) ** 2, weights=w)
            vm = np.average((mw - mm) ** 2, weights=w)
            acc += r[z, y, x] * cov / math.sqrt(vf * vm + eps)
        out.append(acc / total)
    return np.array(out)


def ref_mse(f, mov, mov_mask, warped, region, fm):
    ff, mm = f[fm > 0], mov[mov_mask]
    unrelated = ff.var() + mm.var() + (ff.mean() - mm.mean()) ** 2
    out = []
    for b in range(warped.shape[0]):
        d = (warped[b, 0] - f) ** 2
        per_point = np.where(region[b] > 0, d, unrelated)
        out.append(-(per_point * fm).sum() / fm.sum())
    return np.array(out)


def stencil_ok(mask, z, y, x):
    """The voxel and its in-bounds +-1 neighbours along each axis lie in ``mask``."""
    if not mask[z, y, x]:
        return False
    for dz, dy, dx in ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)):
        q = (z + dz, y + dy, x + dx)
        if all(0 <= q[i] < mask.shape[i] for i in range(3)) and not mask[q]:
            return False
    return True


def support_np(mask):
    return np.array([[[stencil_ok(mask, z, y, x) for x in range(mask.shape[2])]
                      for y in range(mask.shape[1])] for z in range(mask.shape[0])])


def np_grad(a):
    gz, gy, gx = np.gradient(a, SPACING[2], SPACING[1], SPACING[0])
    return np.stack([gx, gy, gz])


def ref_ngf(f, mov, mov_mask, warped, valid, fm, eta):
    fsup = support_np(fm > 0)
    gf, gm = np_grad(f), np_grad(mov)
    eta_f = eta * np.sqrt((gf ** 2).sum(0))[fsup].mean()
    eta_m = eta * np.sqrt((gm ** 2).sum(0))[support_np(mov_mask)].mean()
    nf = gf / np.sqrt((gf ** 2).sum(0) + eta_f ** 2)
    out = []
    for b in range(warped.shape[0]):
        gw = np_grad(warped[b, 0])
        nw = gw / np.sqrt((gw ** 2).sum(0) + eta_m ** 2)
        ok = support_np(valid[b, 0] > 0) & fsup
        out.append(((nf * nw).sum(0) ** 2)[ok].sum() / fsup.sum())
    return np.array(out)


def bspline3(t):
    t = abs(t)
    if t < 1:
        return 2.0 / 3.0 - t * t + t ** 3 / 2.0
    if t < 2:
        return (2.0 - t) ** 3 / 6.0
    return 0.0


def parzen_np(v, lo, hi, bins, kernel, sigma):
    u = (min(max(v, lo), hi) - lo) / (hi - lo) * (bins - 1)
    if kernel == "bspline":
        k = np.array([bspline3(u - i) for i in range(bins)])
    else:
        k = np.array([math.exp(-0.5 * ((u - i) / sigma) ** 2) for i in range(bins)])
    return k / k.sum()


def ref_mi(f, mov, fmask, mmask, warped, region, bins, kernel, sigma, voxels=None):
    flo, fhi = np.percentile(f[fmask], [0.5, 99.5])
    mlo, mhi = np.percentile(mov[mmask], [0.5, 99.5])
    idx = np.arange(f.size) if voxels is None else voxels
    out = []
    outside = np.zeros(bins + 1)
    outside[-1] = 1.0  # fixed-mask points outside the moving image: their own moving bin
    for b in range(warped.shape[0]):
        h = np.zeros((bins, bins + 1))
        fv, mv, rv, fmv = f.ravel(), warped[b, 0].ravel(), region[b].ravel(), fmask.ravel()
        for i in idx:
            if rv[i] > 0:
                h += rv[i] * np.outer(parzen_np(fv[i], flo, fhi, bins, kernel, sigma),
                                      np.append(parzen_np(mv[i], mlo, mhi, bins, kernel, sigma), 0.0))
            elif fmv[i]:
                h += np.outer(parzen_np(fv[i], flo, fhi, bins, kernel, sigma), outside)
        p = h / h.sum()
        pf, pm = p.sum(1), p.sum(0)
        nz = p > 0
        out.append((p[nz] * np.log(p[nz] / np.outer(pf, pm)[nz])).sum())
    return np.array(out)


# agreement with the references --------------------------------------------------------------------
@pytest.mark.parametrize("with_mask", [True, False])
def test_ncc_matches_weighted_pearson(with_mask):
    fixed, moving, warped, valid = case(1, fixed_mask=with_mask)
    region, _ = region_np(fixed, valid)
    got = evaluate(NCC(), fixed, moving, warped, valid)
    np.testing.assert_allclose(got, ref_ncc(fixed.data[0].double().numpy(), warped, region), atol=1e-5)
    assert np.all(got > 0.3)  # related content: a real correlation, not a trivial 0


@pytest.mark.parametrize("radius", [1, 2])
def test_lncc_matches_explicit_windows(radius):
    fixed, moving, warped, valid = case(2)
    region, fm = region_np(fixed, valid)
    got = evaluate(LNCC(radius=radius), fixed, moving, warped, valid)
    want = ref_lncc(fixed.data[0].double().numpy(), warped, region, fm.sum(), radius)
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_mse_matches_reference_with_unrelated_fill():
    fixed, moving, warped, valid = case(3)
    region, fm = region_np(fixed, valid)
    got = evaluate(MSE(), fixed, moving, warped, valid)
    want = ref_mse(fixed.data[0].double().numpy(), moving.data[0].double().numpy(),
                   moving.mask[0].numpy(), warped, region, fm)
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("eta", [0.2, 1.0])
def test_ngf_matches_numpy_gradient(eta):
    fixed, moving, warped, valid = case(4)
    _, fm = region_np(fixed, valid)
    got = evaluate(NGF(eta=eta), fixed, moving, warped, valid)
    want = ref_ngf(fixed.data[0].double().numpy(), moving.data[0].double().numpy(),
                   moving.mask[0].numpy(), warped, valid, fm, eta)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert np.all(want > 0.02)


@pytest.mark.parametrize("kernel,sigma", [("bspline", 0.5), ("gaussian", 0.8)])
def test_mi_matches_parzen_histogram(kernel, sigma):
    fixed, moving, warped, valid = case(5)
    region, fm = region_np(fixed, valid)
    sim = MutualInformation(bins=12, kernel=kernel, sigma=sigma, samples=None)
    got = evaluate(sim, fixed, moving, warped, valid)
    want = ref_mi(fixed.data[0].double().numpy(), moving.data[0].double().numpy(), fm > 0,
                  moving.mask[0].numpy(), warped, region, 12, kernel, sigma)
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_mi_subsampling_is_seeded_and_uses_only_the_drawn_voxels():
    fixed, moving, warped, valid = case(6)
    region, fm = region_np(fixed, valid)
    sim = MutualInformation(bins=10, samples=300, seed=7)
    p1, p2 = sim.prepare(fixed, moving), sim.prepare(fixed, moving)
    idx = p1.index.numpy()
    assert torch.equal(p1.index, p2.index)
    assert len(np.unique(idx)) == 300 and np.all(fm.ravel()[idx] > 0)
    got = evaluate(sim, fixed, moving, warped, valid)
    want = ref_mi(fixed.data[0].double().numpy(), moving.data[0].double().numpy(), fm > 0,
                  moving.mask[0].numpy(), warped, region, 10, "bspline", 0.5, voxels=idx)
    np.testing.assert_allclose(got, want, rtol=1e-4)
    other = MutualInformation(bins=10, samples=300, seed=8).prepare(fixed, moving).index
    assert not torch.equal(other, p1.index)


def test_parzen_weights_partition_unity_and_follow_values():
    x = torch.linspace(-3, 3, 101)
    # The cubic B-spline reproduces linear functions exactly; a sampled Gaussian nearly so.
    for kernel, tol in (("bspline", 1e-4), ("gaussian", 1e-3)):
        w = parzen_weights(x, -2.0, 2.0, 16, kernel, 0.7)
        assert torch.allclose(w.sum(-1), torch.ones(101))
        centre = (w * torch.arange(16.0)).sum(-1)
        inside = (x > -1.5) & (x < 1.5)  # away from the ends the kernel mean is the bin position
        np.testing.assert_allclose(centre[inside].numpy(), ((x[inside] + 2) / 4 * 15).numpy(), atol=tol)


# MI on a real image -----------------------------------------------------------------------------
def mr_block(size=24, margin=3):
    """A (size + 2 margin)^3 block of the Case24 T1 (synthetic blobs where the data is absent)."""
    n = size + 2 * margin
    if os.path.exists(T1_PATH):
        import SimpleITK as sitk

        a = sitk.GetArrayFromImage(sitk.ReadImage(T1_PATH)).astype(np.float64)
        c = np.array(a.shape) // 2
        a = a[c[0] - n // 2:c[0] - n // 2 + n, c[1] - n // 2:c[1] - n // 2 + n, c[2] - n // 2:c[2] - n // 2 + n]
    else:
        a = ndimage.gaussian_filter(np.random.default_rng(0).standard_normal((n, n, n)), 2.0)
    return (a - a.mean()) / a.std()


@pytest.mark.parametrize("kernel", ["bspline", "gaussian"])
def test_mi_is_maximal_at_alignment_of_a_remapped_real_image(kernel):
    margin = 3
    block = mr_block(24, margin)
    remap = lambda a: np.cos(2.0 * a)  # noqa: E731  non-monotone: NCC cannot follow it
    core = (slice(margin, -margin),) * 3
    f = block[core]
    m = remap(f)
    mean, std = m.mean(), m.std()
    fixed, moving = Image.from_array(f), Image.from_array((m - mean) / std)
    candidates, shifts = [], [(0, 0, 0)]
    for axis in range(3):
        for s in (-3, -2, -1, 1, 2, 3):
            shift = [0, 0, 0]
            shift[axis] = s
            shifts.append(tuple(shift))
    for s in shifts:
        sl = tuple(slice(margin + d, margin + d + f.shape[i]) for i, d in enumerate(s))
        candidates.append((remap(block[sl]) - mean) / std)
    warped = np.stack(candidates)[:, None]
    valid = np.ones((len(shifts), 1) + f.shape)
    got = evaluate(MutualInformation(kernel=kernel, samples=5000), fixed, moving, warped, valid)
    assert got[0] > 0.5
    assert np.all(got[1:] < 0.8 * got[0]), dict(zip(shifts, got.round(3)))
    # The remap defeats a linear measure: NCC at alignment is far from its maximum of 1.
    assert abs(evaluate(NCC(), fixed, moving, warped[:1], valid[:1])[0]) < 0.4


# gradients --------------------------------------------------------------------------------------
MEASURES = [NCC(), LNCC(radius=2), MSE(), NGF(eta=0.5), MutualInformation(bins=12, samples=None),
            MutualInformation(bins=12, kernel="gaussian", samples=None, normalized=True)]


@pytest.mark.parametrize("sim", MEASURES, ids=lambda s: repr(s))
def test_gradient_matches_finite_differences(sim):
    fixed, moving, warped, valid = case(7)
    p = sim.prepare(fixed, moving)
    w = torch.from_numpy(warped).requires_grad_(True)  # float64, for clean finite differences
    v = torch.from_numpy(valid)
    (g,) = torch.autograd.grad(p.evaluate(w, v).sum(), w)
    assert torch.isfinite(g).all() and g.abs().max() > 0
    # Points outside the region get no gradient where the measure cannot see them.
    region = torch.from_numpy(region_np(fixed, valid)[0])[:, None]
    if sim.name in ("ncc", "mse", "mi"):
        assert float(g[region == 0].abs().max()) == 0.0
    d = torch.from_numpy(np.random.default_rng(1).standard_normal(warped.shape))
    h = 1e-5
    with torch.no_grad():
        fd = (p.evaluate(w + h * d, v) - p.evaluate(w - h * d, v)).sum() / (2 * h)
    np.testing.assert_allclose(float((g * d).sum()), float(fd), rtol=2e-3, atol=1e-6)


# points out of view -----------------------------------------------------------------------------
@pytest.mark.parametrize("sim", MEASURES, ids=lambda s: repr(s))
def test_values_ignore_content_outside_the_moving_image(sim):
    fixed, moving, warped, valid = case(8)
    garbage = warped.copy()
    garbage[valid == 0] = np.random.default_rng(2).standard_normal(int((valid == 0).sum())) * 5
    np.testing.assert_allclose(evaluate(sim, fixed, moving, garbage, valid),
                               evaluate(sim, fixed, moving, warped, valid), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sim", [MSE(), LNCC(radius=2), NGF()], ids=lambda s: s.name)
def test_pushing_points_out_of_view_does_not_pay(sim):
    rng = np.random.default_rng(3)
    shape = (16, 16, 16)
    f = smooth(rng, shape)
    m = f + 0.2 * rng.standard_normal(shape)
    m = (m - m.mean()) / m.std()
    fixed, moving = Image.from_array(f), Image.from_array(m)
    half = np.zeros(shape, bool)
    half[:, :, 8:] = True
    n_unrelated = 4
    # Aligned everywhere; then the half out of view; then the half showing unrelated content.
    aligned = m[None, None]
    unrelated = np.stack([np.where(half, smooth(rng, shape), m) for _ in range(n_unrelated)])[:, None]
    full = np.ones((1, 1) + shape)
    out = np.where(half, 0.0, 1.0)[None, None]
    v_aligned = evaluate(sim, fixed, moving, aligned, full)[0]
    v_out = evaluate(sim, fixed, moving, aligned, out)[0]
    v_unrelated = evaluate(sim, fixed, moving, unrelated, np.ones((n_unrelated, 1) + shape)).mean()
    # LNCC's windows near the view border mix aligned and unrelated points, so out-of-view and
    # unrelated agree only to a few percent of the aligned-unrelated gap: hence the 10% margin.
    scale = abs(v_aligned - v_unrelated)
    assert v_aligned > v_unrelated + 0.2 * abs(v_aligned)  # the test data separates the cases
    assert v_out <= v_unrelated + 0.1 * scale, (v_aligned, v_out, v_unrelated)
    if sim.name != "ngf":
        # MSE and LNCC score out-of-view points as unrelated content on average: neutral, not a
        # penalty that would drag the pose towards more overlap. (NGF scores them 0, its minimum.)
        assert v_out >= v_unrelated - 0.2 * scale, (v_aligned, v_out, v_unrelated)


# Combined -----------------------------------------------------------------------------------------
class GradientFeature(Similarity):
    """A test part with its own two-channel moving features, so Combined must slice channels."""

    name = "gradfeat"

    def prepare(self, fixed, moving):
        feats = torch.cat([gradient_magnitude(moving.data), moving.data ** 2])
        target = torch.cat([gradient_magnitude(fixed.data), fixed.data ** 2])[None]

        class P(Prepared):
            def evaluate(self, warped, valid):
                r = self.region(valid)
                return -(((warped - target) ** 2) * r).flatten(1).sum(1) / r.flatten(1).sum(1)

        return P(feats, fixed_mask_of(fixed))


def test_combined_is_the_weighted_sum_of_its_parts():
    fixed, moving, _, _ = case(9)
    parts = [(0.5, MSE()), (0.25, NCC()), (2.0, GradientFeature()), (1.0, LNCC(radius=1)),
             (-0.3, NGF()), (0.7, MutualInformation(bins=10, samples=400))]
    combined = Combined(parts)
    pc = combined.prepare(fixed, moving)
    # MSE, NCC, LNCC, NGF and MI share the raw intensities: 1 + 2 channels, not 7.
    assert pc.moving.shape[0] == 3
    theta = torch.eye(3, 4)[None].repeat(2, 1, 1)
    theta += 0.08 * torch.from_numpy(np.random.default_rng(4).standard_normal((2, 3, 4))).float()
    grid = F.affine_grid(theta, [2, 1, *SHAPE], align_corners=True)
    warped, valid = sample(pc.moving, grid)
    got = pc.evaluate(warped, valid)
    want = 0.0
    for w, sim in parts:
        p = sim.prepare(fixed, moving)
        wp, vp = sample(p.moving, grid)
        assert torch.equal(vp, valid)
        want = want + w * p.evaluate(wp, vp)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert 0 < valid.mean() < 1  # some points did leave the view
    assert "0.5*MSE()" in repr(combined)


def test_combined_rejects_bad_parts():
    with pytest.raises(InputError):
        Combined([])
    with pytest.raises(InputError):
        Combined([(0.5, "ncc")])
    with pytest.raises(InputError):
        Combined([(float("nan"), NCC())])
    with pytest.raises(InputError):
        Combined([NCC()])


# input errors -----------------------------------------------------------------------------------
def test_bad_options_and_inputs_raise_input_error():
    for make in (lambda: LNCC(radius=0), lambda: NGF(eta=0), lambda: MutualInformation(bins=2),
                 lambda: MutualInformation(kernel="box"), lambda: MutualInformation(samples=10),
                 lambda: MutualInformation(percentiles=(50, 10))):
        with pytest.raises(InputError):
            make()
    fixed, moving, _, _ = case(10)
    two = Image.from_array(np.stack([moving.data[0].numpy()] * 2))
    for sim in (NCC(), LNCC(), MSE(), NGF(), MutualInformation()):
        with pytest.raises(InputError, match="channel"):
            sim.prepare(fixed, two)
