"""LC² and MIND-SSC against slow, loop-based reference implementations, and their behaviour
on the real Case 24 pair (optimum near the truth, no gain from leaving the field of view)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from disa.features.mind import mind_ssc, shared_components, ssc_pairs
from disa.registration import Objective
from disa.registration.pipeline import moving_level, prepare_image
from disa.sample_data import case24
from disa.similarity import make_similarity
from disa.similarity.lc2 import fixed_weights, lc2, lc2_local
from disa.spatial.filters import box_mean, gradient_magnitude
from disa.spatial import load_image, resample_to_spacing
from disa.transforms import make_model
from view_checks import assert_leaving_view_never_pays


# ---------------------------------------------------------------------------------------------
# slow references
def ref_lc2_local(b, a, g, m, r, min_fraction):
    """Per voxel: least squares of the fixed patch by [a, g, 1] with numpy.linalg.lstsq."""
    Z, Y, X = b.shape
    out = np.zeros_like(b)
    k3 = (2 * r + 1) ** 3
    for z in range(Z):
        for y in range(Y):
            for x in range(X):
                sl = (slice(max(z - r, 0), z + r + 1), slice(max(y - r, 0), y + r + 1),
                      slice(max(x - r, 0), x + r + 1))
                keep = m[sl] > 0.5
                n = keep.sum()
                if n / k3 < min_fraction:
                    continue
                bb, aa, gg = b[sl][keep], a[sl][keep], g[sl][keep]
                var = bb.var()
                if var <= 1e-4:
                    continue
                design = np.stack([aa, gg, np.ones_like(aa)], 1)
                coef, *_ = np.linalg.lstsq(design, bb, rcond=None)
                residual = ((bb - design @ coef) ** 2).mean()
                out[z, y, x] = np.clip((var - residual) / var, 0, 1)
    return out


def ref_variance_weight(b, fm, r):
    Z, Y, X = b.shape
    w = np.zeros_like(b)
    for z in range(Z):
        for y in range(Y):
            for x in range(X):
                if fm[z, y, x] < 0.5:
                    continue
                sl = (slice(max(z - r, 0), z + r + 1), slice(max(y - r, 0), y + r + 1),
                      slice(max(x - r, 0), x + r + 1))
                w[z, y, x] = b[sl][fm[sl] > 0.5].var()
    return w


def ref_mind(img, radius, dilation):
    """MIND-SSC with explicit shifts and explicit box sums."""
    d = dilation
    p = np.pad(img, d, mode="edge")
    Z, Y, X = img.shape
    k = 2 * radius + 1
    chans = []
    for pa, pb in ssc_pairs():
        sa = p[d + pa[0] * d:d + pa[0] * d + Z, d + pa[1] * d:d + pa[1] * d + Y, d + pa[2] * d:d + pa[2] * d + X]
        sb = p[d + pb[0] * d:d + pb[0] * d + Z, d + pb[1] * d:d + pb[1] * d + Y, d + pb[2] * d:d + pb[2] * d + X]
        diff = (sa - sb) ** 2
        box = np.zeros_like(diff)
        for z in range(Z):
            for y in range(Y):
                for x in range(X):
                    box[z, y, x] = diff[max(z - radius, 0):z + radius + 1, max(y - radius, 0):y + radius + 1,
                                        max(x - radius, 0):x + radius + 1].sum() / k ** 3
        chans.append(box)
    D = np.stack(chans)
    D = D - D.min(0, keepdims=True)
    var = D.mean(0, keepdims=True)
    mv = var.mean()
    var = np.clip(var, mv * 1e-3, mv * 1e3)
    return np.exp(-D / var)


def _random_volumes(seed, shape=(9, 10, 11)):
    rng = np.random.default_rng(seed)
    b = rng.normal(size=shape)
    a = 0.6 * b + rng.normal(size=shape) * 0.8
    g = np.abs(rng.normal(size=shape))
    m = (rng.random(shape) > 0.15).astype(np.float64)
    return b, a, g, m


def _real_patches():
    case = case24()
    f = prepare_image(load_image(case.fixed), "fixed")
    mv = prepare_image(load_image(case.moving), "moving")
    fl, ml = resample_to_spacing(f, 1.0), resample_to_spacing(mv, 1.0)
    sl = (0, slice(20, 31), slice(18, 30), slice(15, 28))
    b = fl.data[sl].double().numpy()
    a = ml.data[sl].double().numpy()
    g = gradient_magnitude(ml.data.double(), ml.spacing)[sl].numpy()
    m = fl.mask[sl].double().numpy()
    return b, a, g, m


def _t(x):
    return torch.as_tensor(x, dtype=torch.float64)[None, None]


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("radius", [1, 2, 3])
def test_box_mean_matches_explicit_sum(radius):
    x = torch.randn(2, 3, 7, 8, 9, dtype=torch.float64)
    got = box_mean(x, radius)
    k = 2 * radius + 1
    padded = torch.nn.functional.pad(x, (radius,) * 6)
    want = torch.nn.functional.avg_pool3d(padded, k, stride=1) * 1.0
    torch.testing.assert_close(got, want)
    assert want.shape == x.shape and float(want.abs().sum()) > 0


@pytest.mark.parametrize("source", ["random0", "random1", "real"])
@pytest.mark.parametrize("radius", [1, 3])
def test_lc2_local_matches_least_squares_reference(source, radius):
    b, a, g, m = _real_patches() if source == "real" else _random_volumes(int(source[-1]))
    got = lc2_local(_t(b), _t(a), _t(g), _t(m), radius, ridge=0.0, min_fraction=0.5)[0, 0].numpy()
    want = ref_lc2_local(b, a, g, m, radius, 0.5)
    assert (want > 0).sum() > 20, "the reference must exercise non-trivial patches"
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_lc2_global_is_variance_weighted_mean_over_radii():
    b, a, g, m = _random_volumes(3, (8, 9, 10))
    fm = np.ones_like(b)
    fm[:, :, :2] = 0
    valid = np.ones_like(b)
    valid[:2] = 0
    got = float(lc2(_t(b)[0], _t(a), _t(g), _t(valid), _t(fm)[0], radii=(1, 2), min_fraction=0.5))
    total = 0.0
    for r in (1, 2):
        w = ref_variance_weight(b, fm, r)
        torch.testing.assert_close(fixed_weights(_t(b), _t(fm), r)[0, 0], torch.as_tensor(w), atol=1e-9, rtol=1e-6)
        local = lc2_local(_t(b), _t(a), _t(g), _t(valid * fm), r, min_fraction=0.5)[0, 0].numpy()
        total += (local * w).sum() / w.sum()
    assert got == pytest.approx(total / 2, rel=1e-6)


def test_lc2_is_one_for_a_linear_combination_and_invariant_to_its_coefficients():
    rng = np.random.default_rng(5)
    a = rng.normal(size=(10, 10, 10))
    g = np.abs(rng.normal(size=(10, 10, 10)))
    ones = np.ones_like(a)
    inner = (slice(2, -2),) * 3  # patches that lie wholly inside the volume
    for c1, c2, c3 in [(1.0, 0.0, 0.0), (-2.0, 0.5, 3.0)]:
        b = c1 * a + c2 * g + c3
        local = lc2_local(_t(b), _t(a), _t(g), _t(ones), 2, ridge=0.0, min_fraction=0.5)[0, 0].numpy()
        assert local[inner].min() > 0.999
    noise = rng.normal(size=a.shape)
    local = lc2_local(_t(noise), _t(a), _t(g), _t(ones), 2, ridge=0.0)[0, 0].numpy()
    assert local[inner].mean() < 0.2


@pytest.mark.parametrize("source", ["random", "real"])
def test_mind_ssc_matches_loop_reference(source):
    if source == "real":
        img = _real_patches()[1]
    else:
        img = np.random.default_rng(1).normal(size=(8, 9, 10))
    for radius, dilation in [(1, 1), (2, 2)]:
        got = mind_ssc(torch.as_tensor(img)[None], radius, dilation).numpy()
        want = ref_mind(img, radius, dilation)
        assert got.shape == (12,) + img.shape
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_shared_components_keep_what_tells_alignment():
    """MIND-SSC of Case 24's MR and of that MR shifted by 1-3 voxels, projected onto 6 shared
    components: all 12 give the input back; the projection is one basis for both images (swapping
    them swaps the outputs), its squared differences keep the full ones' size (the scale makes
    up for the variance left out), and the larger shift still differs more."""
    mr = torch.as_tensor(_real_patches()[1]).float()
    full = mind_ssc(mr[None, None], 1, 2)
    mean_ssd = {}
    for shift in (1, 3):
        moved = mind_ssc(torch.roll(mr, shift, dims=2)[None, None], 1, 2)
        same = shared_components(full, moved, 12)
        assert same[0] is full and same[1] is moved
        a, b = shared_components(full, moved, 6)
        b2, a2 = shared_components(moved, full, 6)
        assert a.shape == (1, 6) + mr.shape
        torch.testing.assert_close(a, a2, atol=1e-5, rtol=0)
        torch.testing.assert_close(b, b2, atol=1e-5, rtol=0)
        projected, original = float(((a - b) ** 2).mean()), float(((full - moved) ** 2).mean())
        assert 0.7 * original < projected < 1.3 * original
        mean_ssd[shift] = projected
    assert mean_ssd[3] > mean_ssd[1] > 0


def test_ssc_pairs_are_the_twelve_octahedron_edges():
    pairs = ssc_pairs()
    assert len(pairs) == 12
    for p, q in pairs:
        assert sum((a - b) ** 2 for a, b in zip(p, q)) == 2


# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def case24_levels():
    case = case24()
    f = prepare_image(load_image(case.fixed), "fixed")
    mv = prepare_image(load_image(case.moving), "moving")
    return f, mv


@pytest.mark.parametrize("metric", ["lc2", "mind"])
def test_leaving_the_field_of_view_never_pays(case24_levels, metric):
    """Shifting the MR so that part of the ultrasound falls outside it scores below the truth."""
    f, mv = case24_levels
    fl, ml = resample_to_spacing(f, 2.0), moving_level(mv, 2.0)
    sim = make_similarity(metric).at_scale(0.5)
    obj = Objective(sim.prepare(fl, ml), fl, ml, make_model("rigid", f.center()))
    assert_leaving_view_never_pays(obj)


def scores_of_sparse_and_whole(sparse, whole, levels, model, seed):
    """Similarities of 4 random poses, by the objectives of a measure that warps only some
    points and of the same measure warping the whole grid: equal values, gradients and overlap
    are asserted; returns the sparse objective and its values."""
    fl, ml = levels
    params = torch.tensor(np.random.default_rng(seed).normal(0, 2, (4, 6)), requires_grad=True)
    objectives = [Objective(p, fl, ml, model) for p in (sparse, whole)]
    assert objectives[0].points is not None and objectives[1].points is None
    assert len(objectives[0].points) < 0.6 * fl.data[0].numel()
    values = [o.similarity(params) for o in objectives]
    grads = [torch.autograd.grad(v.sum(), params)[0] for v in values]
    assert torch.allclose(values[0], values[1], atol=1e-5) and values[0].std() > 1e-3
    assert torch.allclose(grads[0], grads[1], rtol=1e-3, atol=1e-6) and grads[0].abs().max() > 1e-5
    pose = params[1].detach().numpy()
    assert objectives[0].overlap(pose) == pytest.approx(objectives[1].overlap(pose))
    return params.detach(), values[0].detach()


def test_mind_warps_only_the_fixed_mask_with_the_same_values(case24_levels):
    """MIND-SSC on a masked fixed image warps only the voxels in the mask (``Prepared.points``):
    its similarity, gradient and overlap equal those of the whole bounding box with the mask; a
    combined measure, which warps the whole box, still gets MIND-SSC's value from it."""
    f, mv = case24_levels
    fl, ml = resample_to_spacing(f, 2.0), moving_level(mv, 2.0)
    sparse = make_similarity("mind").at_scale(0.5).prepare(fl, ml)
    whole = copy.copy(sparse)
    whole.points, whole.fixed_mask = None, sparse.box_mask
    model = make_model("rigid", f.center())
    params, values = scores_of_sparse_and_whole(sparse, whole, (fl, ml), model, 0)
    combined = make_similarity("0.5*mind+0.5*ncc").at_scale(0.5).prepare(fl, ml)
    ncc = make_similarity("ncc").at_scale(0.5).prepare(fl, ml)
    with torch.no_grad():
        both = Objective(combined, fl, ml, model).similarity(params)
        alone = Objective(ncc, fl, ml, model).similarity(params)
    assert torch.allclose(both, 0.5 * values + 0.5 * alone, atol=1e-4)  # float32 sums


@pytest.mark.parametrize("masked", [True, False])
def test_mind_sampled_scores_a_lattice_of_the_fixed_voxels(case24_levels, masked):
    """``sampled(max_points)`` (the linear start of a dense registration) scores the coarsest
    lattice of fixed voxels that leaves at most ``max_points`` (every second voxel along each
    axis for a sixth of the points, every third for a twentieth), but never fewer than
    MIN_SAMPLED_POINTS (then the finer lattice): the same similarity, gradient and overlap as the
    whole box with only that lattice in its mask; with the ultrasound fan's mask and without one."""
    from disa.similarity.mind import MIN_SAMPLED_POINTS

    f, mv = case24_levels
    fl, ml = resample_to_spacing(f, 1.5), moving_level(mv, 1.5)
    if not masked:
        fl = fl.same_geometry(fl.data, None)
    full = make_similarity("mind").at_scale(2 / 3).prepare(fl, ml)
    n_full = full.fixed[0].numel() if full.points is None else len(full.points)
    assert full.sampled(n_full) is full
    zyx = torch.stack(torch.meshgrid(*[torch.arange(n) for n in full.fixed.shape[-3:]], indexing="ij"))

    def lattice(stride):
        on = (zyx % stride == 0).all(0)[None].float()
        return on if full.box_mask is None else on * full.box_mask

    for stride, budget in ((2, n_full // 6), (3, n_full // 20)):
        sparse = full.sampled(budget)
        if lattice(stride).sum() >= MIN_SAMPLED_POINTS:
            inside = lattice(stride)
            assert len(sparse.points) == int(inside.sum()) <= budget < int(lattice(stride - 1).sum())
        else:  # the fan's mask thinned 27 times leaves too few: the finer lattice is kept
            assert masked and stride == 3
            inside = lattice(2)
            assert len(sparse.points) == int(inside.sum()) > budget
        whole = copy.copy(full)
        whole.points, whole.fixed_mask, whole.box_mask = None, inside, inside
        scores_of_sparse_and_whole(sparse, whole, (fl, ml), make_model("rigid", f.center()), 1)
    tiny = make_similarity("mind").at_scale(0.5).prepare(resample_to_spacing(f, 3.0), moving_level(mv, 3.0))
    assert tiny.sampled(10) is tiny  # too few points left on any lattice: every voxel is kept


@pytest.mark.parametrize("metric", ["mse", "ncc"])
def test_pointwise_measures_warp_only_the_voxels_they_read(case24_levels, metric):
    """MSE and NCC read each fixed voxel alone, inside the fixed mask: the objective warps only
    those (``Prepared.read_index``) and scores as if it had warped the whole grid: the same
    similarity, gradient and overlap."""
    f, mv = case24_levels
    fl, ml = resample_to_spacing(f, 2.0), moving_level(mv, 2.0)
    sparse = make_similarity(metric).at_scale(0.5).prepare(fl, ml)
    whole = copy.copy(sparse)
    whole.read_index = None
    scores_of_sparse_and_whole(sparse, whole, (fl, ml), make_model("rigid", f.center()), 1)


@pytest.mark.parametrize("metric", ["lc2", "mind"])
def test_no_false_optimum_where_grids_coincide(case24_levels, metric):
    """Case 24's MR and US share one grid: the identity pose must not stand out from sub-voxel
    neighbours (without oversampling the identity scores clearly apart)."""
    f, mv = case24_levels
    fl = resample_to_spacing(f, 1.0)
    model = make_model("rigid", f.center())

    def bump(oversample):
        ml = moving_level(mv, 1.0, oversample)
        obj = Objective(make_similarity(metric).prepare(fl, ml), fl, ml, model)
        values = []
        for axis in range(6):
            p = torch.zeros(3, 6, dtype=torch.float64)
            p[0, axis], p[2, axis] = -0.5, 0.5
            v = obj.similarity(p).numpy()
            values.append(v[1] - 0.5 * (v[0] + v[2]))  # curvature-free spike at the grid pose
        return np.abs(values).max()

    spike_plain, spike_oversampled = bump(1), bump(2)
    assert spike_oversampled < 0.5 * spike_plain
