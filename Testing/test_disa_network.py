"""The DISA descriptor network, its descriptor grids, weights files, the DISA similarity and the
similarity maps. No trained weights are needed: seeded random networks stand in for them."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import disa.features.descriptors as descriptors_module
import disa.features.weights as weights_module
import disa.similarity.disa as disa_module
from disa.errors import InputError
from disa.features.descriptors import (DescriptorCache, compute_descriptors, dequantize, normalized_input,
                                       cpu_bfloat16_supported, quantize)
from disa.features.network import (PARAMETER_COUNT, BlurPool, DISANet, binomial_kernel, count_parameters,
                                   output_shape, seeded_model)
from disa.features.weights import load_weights, save_weights
from disa.registration import Objective
from disa.registration.pipeline import moving_level, prepare_image
from disa.sample_data import case24
from disa.similarity.disa import DISA, PreparedDISA
from disa.similarity.maps import lc2_patch_map, similarity_map
from disa.spatial import Image, load_image, resample_to_spacing
from disa.spatial.image import resample_image, sampling_theta
from disa.transforms import make_model
from view_checks import assert_leaving_view_never_pays



@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One thread: the small convolutions here gain nothing from more, and shared CI cores lose."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def distinct_model(seed: int = 0) -> DISANet:
    """A seeded network whose descriptors vary across an image and have norms near 1: no biases
    (a random bias dominates every descriptor), Kaiming weights, a damped last layer."""
    model = seeded_model(seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.Conv3d):
                fan_in = mod.weight[0].numel()
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=gen) * math.sqrt(2.0 / fan_in))
                if mod.bias is not None:
                    mod.bias.zero_()
        model.layers[-1].weight.mul_(0.1)
    return model.eval()


def smooth_volume(shape, seed=0, sigma=2.0):
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    v = gaussian_filter(rng.standard_normal(shape), sigma)
    return ((v - v.mean()) / v.std()).astype(np.float32)


@pytest.fixture(scope="module")
def case24_images():
    case = case24()
    return prepare_image(load_image(case.fixed), "fixed"), prepare_image(load_image(case.moving), "moving")


# network -----------------------------------------------------------------------------------------
def test_parameter_count_is_the_papers():
    model = DISANet()
    assert count_parameters(model) == PARAMETER_COUNT == 90752
    # The blur kernels are buffers: in the state dict, not among the parameters.
    names = {n for n, _ in model.named_parameters()}
    assert not any("kernel" in n for n in names)
    assert sum(1 for n in model.state_dict() if n.endswith("kernel")) == 2


@pytest.mark.parametrize("shape", [(37, 41, 29), (33, 33, 33), (5, 6, 7), (16, 17, 18)])
def test_output_shape_is_ceil_quarter(shape):
    model = seeded_model(1)
    with torch.no_grad():
        y = model(torch.randn(2, 1, *shape))
    assert tuple(y.shape) == (2, 16) + tuple(math.ceil(s / 4) for s in shape) == (2, 16) + output_shape(shape)


def test_norm_clipping_scales_only_long_vectors():
    model = distinct_model(2)  # raw norms spread around 1
    with torch.no_grad():
        x = torch.randn(1, 1, 20, 21, 22)
        raw = model.layers(x)
        y = model(x)
    raw_norm, norm = raw.norm(dim=1), y.norm(dim=1)
    assert float((raw_norm > 1).float().mean()) > 0.2 and float((raw_norm < 1).float().mean()) > 0.05
    assert float(norm.max()) <= 1 + 1e-6
    short = raw_norm < 1
    torch.testing.assert_close(y.permute(0, 2, 3, 4, 1)[short], raw.permute(0, 2, 3, 4, 1)[short])
    torch.testing.assert_close(norm[~short], torch.ones_like(norm[~short]))


def test_blurpool_kernel_is_frozen_normalized_binomial():
    taps = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16
    want = taps[:, None, None] * taps[None, :, None] * taps[None, None, :]
    torch.testing.assert_close(binomial_kernel(), want)
    model = seeded_model(3)
    blurs = [m for m in model.modules() if isinstance(m, BlurPool)]
    assert [b.channels for b in blurs] == [16, 32]
    before = [b.kernel.clone() for b in blurs]
    for b in blurs:
        assert not b.kernel.requires_grad
        torch.testing.assert_close(b.kernel.sum(dim=(1, 2, 3, 4)), torch.ones(b.channels))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    model(torch.randn(1, 1, 12, 12, 12)).pow(2).sum().backward()
    opt.step()
    for b, k in zip(blurs, before):
        assert torch.equal(b.kernel, k)
    # A constant input stays constant through the blur (normalized, replicate padding).
    out = BlurPool(2)(torch.full((1, 2, 9, 8, 7), 3.0))
    torch.testing.assert_close(out, torch.full((1, 2, 5, 4, 4), 3.0))


def test_output_voxel_k_is_centred_on_input_voxel_4k():
    """An impulse at input 60 changes exactly the outputs 9..21 (receptive field 49, centre 15),
    and shifting the input by 4 voxels shifts the output by one voxel."""
    model = distinct_model(4)
    x = torch.zeros(1, 1, 121, 9, 9)
    with torch.no_grad():
        base = model(x)
        x[0, 0, 60, 4, 4] = 1.0
        hit = (model(x) - base).abs().sum(dim=(0, 1, 3, 4))
    changed = torch.nonzero(hit > 0).flatten().tolist()
    assert changed == list(range(9, 22))
    v = torch.from_numpy(smooth_volume((64, 24, 24), seed=4))[None, None]
    with torch.no_grad():
        a = model(v[:, :, 4:])
        b = model(v)
    # Away from the z borders (receptive-field radius 24 voxels = 6 outputs), a[k] == b[k + 1].
    assert a.shape[2] == 15 and b.shape[2] == 16
    torch.testing.assert_close(a[:, :, 6:-6], b[:, :, 7:-6], atol=1e-5, rtol=0)


# descriptors -------------------------------------------------------------------------------------
def test_tiled_inference_equals_whole_volume(monkeypatch):
    model = distinct_model(5)
    img = Image.from_array(smooth_volume((37, 41, 30), seed=5, sigma=1.0), spacing=(0.8, 1.0, 1.2))
    whole = compute_descriptors(img, model, dtype=torch.float32)
    for stride, tile in [(4, 16), (4, (12, 4, 48)), (2, 20)]:
        ref = whole if stride == 4 else compute_descriptors(img, model, stride=2, dtype=torch.float32)
        got = compute_descriptors(img, model, stride=stride, tile=tile, dtype=torch.float32)
        assert float((got.data - ref.data).abs().max()) < 1e-5
    # The check is sharp: a halo below the receptive field breaks the equality.
    monkeypatch.setattr(descriptors_module, "HALO", 8)
    bad = compute_descriptors(img, model, tile=16, dtype=torch.float32)
    assert float((bad.data - whole.data).abs().max()) > 1e-4


def test_auto_tiling_keeps_a_256_volume_in_one_piece(monkeypatch):
    """A 256^3 volume is padded to 257^3 (the last descriptor reaches the last voxel); tiling
    it doubled the cost on a GPU. On CUDA the choice follows the free memory."""
    fits = descriptors_module.fits_untiled
    assert fits((257, 257, 257), torch.device("cpu")) and not fits((300, 300, 300), torch.device("cpu"))
    gib = 1 << 30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (80 * gib, 80 * gib))
    assert fits((512, 512, 300), torch.device("cuda"))  # 20 GiB for one pass: fits half of 80
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (4 * gib, 80 * gib))
    assert not fits((257, 257, 257), torch.device("cuda"))


@pytest.mark.parametrize("stride", [2, 1])
def test_substride_descriptors_are_the_network_on_shifted_inputs(stride):
    """One "a trous" pass equals the stride-4 network run on inputs shifted by d, wherever the
    receptive field (24 voxels each way) lies inside both the volume and the shifted input."""
    model = distinct_model(6)
    vol = smooth_volume((62, 60, 64), seed=6, sigma=1.5)
    img = Image.from_array(vol, spacing=(1.0, 1.5, 2.0), origin=(3.0, -2.0, 7.0))
    desc = compute_descriptors(img, model, stride=stride, dtype=torch.float32)
    assert desc.shape == tuple(math.ceil((n - 1) / stride) + 1 for n in vol.shape)
    np.testing.assert_allclose(desc.spacing, img.spacing * stride)
    np.testing.assert_allclose(desc.origin, img.origin)
    x = normalized_input(img)
    step = 4 // stride
    checked = 0
    for d in [(0, 0, 0), (stride, 0, 3 % 4 if stride == 1 else 2), (0, 2, 0), (3 // stride * stride,) * 3]:
        with torch.no_grad():
            direct = model(x[d[0]:, d[1]:, d[2]:][None, None])[0]
        inter = desc.data[:, d[0] // stride::step, d[1] // stride::step, d[2] // stride::step]
        lo, hi = 6, [(n - 1 - 24 - dd) // 4 + 1 for n, dd in zip(vol.shape, d)]  # 4k >= 24, 4k + d + 24 < n
        assert min(hi) - lo >= 2
        torch.testing.assert_close(inter[:, lo:hi[0], lo:hi[1], lo:hi[2]], direct[:, lo:hi[0], lo:hi[1], lo:hi[2]],
                                   atol=1e-5, rtol=0)
        checked += 1
    assert checked == 4


def test_descriptor_grid_geometry_follows_physical_space():
    """Cropping 4/8 voxels off the start (origin moved accordingly) gives the same descriptors at
    the same physical points; the grid's nodes map through the engine's own resampler."""
    from scipy.spatial.transform import Rotation

    model = distinct_model(7)
    vol = smooth_volume((64, 60, 68), seed=7, sigma=1.5)
    direction = Rotation.from_rotvec([0.3, -0.2, 0.5]).as_matrix()
    spacing = np.array([0.7, 1.1, 1.3])
    mask = np.zeros(vol.shape, bool)
    mask[4:, 8:, 4:] = True  # the same physical region in both images: same normalization
    big = Image.from_array(vol, spacing, (10.0, -5.0, 2.0), direction, torch.from_numpy(mask)[None])
    off = np.array([4, 8, 4])  # x, y, z index offset of the crop
    origin = big.origin + direction @ (spacing * off)
    small = Image.from_array(vol[4:, 8:, 4:], spacing, origin, direction,
                             torch.from_numpy(mask[4:, 8:, 4:])[None])
    d_big = compute_descriptors(big, model, dtype=torch.float32)
    d_small = compute_descriptors(small, model, dtype=torch.float32)
    np.testing.assert_allclose(d_small.origin, d_big.index_to_world()[:3] @ np.r_[off / 4, 1.0])
    np.testing.assert_allclose(d_small.spacing, 4 * spacing)
    # Node m of the crop is node m + off/4 of the full image; compare away from the borders.
    a = d_small.data[:, 6:-6, 6:-6, 6:-6]
    assert d_big.data[:, 1:, 2:, 1:].shape == d_small.data.shape
    b = d_big.data[:, 1:, 2:, 1:][:, 6:-6, 6:-6, 6:-6]
    assert a.numel() > 16 * 20
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    on_small = resample_image(d_big.same_geometry(d_big.data, None), d_small)
    torch.testing.assert_close(on_small.data[:, 6:-6, 6:-6, 6:-6], a, atol=1e-4, rtol=0)


@pytest.mark.skipif(not cpu_bfloat16_supported(), reason="oneDNN has no bfloat16 convolution on this CPU")
def test_bfloat16_descriptors_agree_with_float32_within_the_8bit_step():
    """bfloat16 descriptors (on request) stay within one step of the 8-bit storage."""
    model = distinct_model(9)
    img = Image.from_array(smooth_volume((40, 44, 36), seed=9, sigma=1.5))
    exact = compute_descriptors(img, model, dtype=torch.float32).data
    fast = compute_descriptors(img, model, dtype=torch.bfloat16).data
    err = float((fast - exact).abs().max())
    assert 0 < err < 1 / 127, err  # one 8-bit step; 0.002 with the trained weights


@pytest.mark.parametrize("stride", [4, 2])
def test_inference_in_onednn_channels_last_equals_the_training_path(stride):
    """Inference takes oneDNN in channels-last order (2x faster on a CPU); with gradients on,
    the same layers run through torch's own convolutions, as in training: the same descriptors."""
    model = distinct_model(11)
    x = torch.from_numpy(smooth_volume((38, 44, 33), seed=11, sigma=1.2))[None, None]
    with torch.no_grad():
        fast = model.forward_strided(x, stride)
    with torch.enable_grad():
        reference = model.forward_strided(x, stride).detach()
    assert fast.shape == reference.shape and float(reference.abs().max()) > 0.1
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=0)
    img = Image.from_array(x[0, 0].numpy())
    assert compute_descriptors(img, model, stride=stride).data.is_contiguous()


def test_descriptor_mask_and_padding_keep_every_voxel():
    model = seeded_model(8)
    vol = smooth_volume((38, 21, 25), seed=8)
    mask = torch.ones(1, 38, 21, 25, dtype=torch.bool)
    mask[:, :, :, :9] = False
    desc = compute_descriptors(Image.from_array(vol, mask=mask), model)
    assert desc.shape == (11, 6, 7)  # node 10 (input 40) reaches past the last slice (37)
    assert desc.mask.shape == (1, 11, 6, 7)
    assert not desc.mask[:, 10].any() and desc.mask[:, 9, :, 3:].all()
    assert not desc.mask[..., :3].any()  # input x 0, 4, 8 lie outside the image mask
    with pytest.raises(InputError):
        compute_descriptors(Image.from_array(np.ones((8, 8, 8))), model)
    with pytest.raises(InputError):
        compute_descriptors(Image.from_array(vol), model, stride=3)


def test_quantization_is_8_bit_with_a_fixed_symmetric_scale():
    x = torch.randn(16, 30, 30)
    x = x / x.norm(dim=0, keepdim=True).clamp_min(1.0)
    x[:, 0, 0] = torch.tensor([1.0] + [0.0] * 15)
    x[:, 0, 1] = torch.tensor([-1.0] + [0.0] * 15)
    q, scale = quantize(x)
    assert q.dtype == torch.uint8 and scale == pytest.approx(1 / 127)
    back = dequantize(q, scale)
    assert float((back - x).abs().max()) <= 0.5 / 127 + 1e-7
    assert float(back[0, 0, 0]) == 1.0 and float(back[0, 0, 1]) == -1.0


def test_cache_runs_the_network_once_per_volume():
    model = seeded_model(9)
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    cache = DescriptorCache(max_items=2)
    img = Image.from_array(smooth_volume((20, 20, 20), seed=9))
    a = cache.get(img, model)
    b = cache.get(img, model)
    assert a is b and len(calls) == 1 and cache.hits == 1
    img.data.mul_(2.0).add_(0.5)  # edited in place: a new volume
    cache.get(img, model)
    assert len(calls) == 2
    strided = model.forward_strided
    model.forward_strided = lambda *args, **kw: (calls.append(2), strided(*args, **kw))[1]
    cache.get(img, model, stride=2)  # one "a trous" pass
    cache.get(img, model, stride=2)
    assert calls == [1, 1, 2] and len(cache) == 2


# DISA similarity ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def disa_level(case24_images):
    f, mv = case24_images
    fl, ml = resample_to_spacing(f, 2.0), moving_level(mv, 2.0)
    return fl, ml


def test_disa_prepare_grids_and_single_cnn_run(disa_level, case24_images):
    fl, ml = disa_level
    model = distinct_model(10)
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    sim = DISA(model=model, cache=DescriptorCache(), stride=4)  # (registration's default is 2)
    assert sim.at_scale(1.0) is sim and sim.name == "disa" and DISA(model=model).stride == 2
    coarse = sim.at_scale(0.5)  # a coarse level: stride 4, plain trilinear, every point weighted
    assert (coarse.stride, coarse.sampling, coarse.border) == (4, "linear", 0)
    assert coarse.at_scale(0.5) is coarse
    prep = sim.prepare(fl, ml)
    # Both grids: stride 4 at the fixed level's spacing (the moving level, oversampled 2x, is
    # described at the fixed spacing), each with its image's own origin.
    np.testing.assert_allclose(prep.fixed_grid.spacing, 4 * fl.spacing)
    np.testing.assert_allclose(prep.fixed_grid.origin, fl.origin)
    np.testing.assert_allclose(prep.moving_grid.spacing, 4 * fl.spacing)
    np.testing.assert_allclose(prep.moving_grid.center(), ml.center(), atol=2 * fl.spacing.max())
    assert prep.moving.shape[0] == 16 and prep.weighted_fixed.shape == (16, len(prep.points))
    x, y, z = prep.points.T  # weighted points lie on the fixed descriptor grid
    assert len(x) > 0 and x.max() < prep.fixed_grid.shape[2] and z.max() < prep.fixed_grid.shape[0]
    n_prepare = len(calls)
    assert n_prepare == 2
    obj = Objective(prep, fl, ml, make_model("rigid", case24_images[0].center()))
    obj.similarity(torch.randn(5, 6, dtype=torch.float64))
    sim.prepare(fl, ml)
    assert len(calls) == n_prepare  # no CNN run inside the optimizer loop or on re-preparing


def test_disa_points_sample_where_the_dense_grid_does(disa_level, case24_images):
    """Only weighted points are warped: their sampling positions are those of the whole
    descriptor grid under the same poses (affine_grid), and zero-weight points are left out."""
    fl, ml = disa_level
    prep = DISA(model=distinct_model(16), cache=DescriptorCache(), sampling="linear").prepare(fl, ml)
    obj = Objective(prep, fl, ml, make_model("rigid", case24_images[0].center()))
    params = torch.tensor([[0, 0, 0, 0, 0, 0], [4, -3, 2, 5, -6, 3.0], [-8, 1, 6, -2, 9, -4]], dtype=torch.float64)
    m = obj.matrices(params)
    dense = F.affine_grid(sampling_theta(obj.fixed, obj.moving, m).float(), [3, 1, *obj.fixed.shape],
                          align_corners=True)
    x, y, z = prep.points.T
    np.testing.assert_allclose(obj.grid(m)[:, 0, 0].numpy(), dense[:, z, y, x].numpy(), atol=1e-5)
    assert 0 < len(x) < int(np.prod(obj.fixed.shape))  # the fan: far fewer points than the grid


def test_jittered_points_stay_in_their_cell_and_repeat(disa_level):
    """Jittered sampling moves each fixed point within its own descriptor cell by a seeded
    offset: the same offsets on every preparation, spread over the whole cell, the fixed
    descriptors and weights unchanged."""
    fl, ml = disa_level
    model = distinct_model(16)
    plain = DISA(model=model, cache=DescriptorCache(), sampling="linear").prepare(fl, ml)
    one, two = (DISA(model=model, cache=DescriptorCache(), sampling="jittered").prepare(fl, ml) for _ in range(2))
    offsets = (one.points - plain.points.double()).numpy()
    assert np.array_equal(one.points.numpy(), two.points.numpy())
    assert np.abs(offsets).max() <= 0.5 and offsets.std(axis=0).min() > 0.25  # uniform: std 0.29
    assert torch.equal(one.weighted_fixed, plain.weighted_fixed)


def test_thinned_points_are_a_regular_sub_lattice():
    """``thinned`` keeps about 1/k of the points, k = ceil(N / max_points), spread over the grid:
    every 6^3 block of a full grid keeps its share, whichever k (a checkerboard, planes, a cubic
    lattice, planes on a cubic lattice)."""
    grid = torch.stack(torch.meshgrid(*[torch.arange(24)] * 3, indexing="ij"), dim=-1).reshape(-1, 3)
    n = len(grid)
    assert disa_module.thinned(grid, n) is None
    for k in (2, 3, 8, 16):
        keep = disa_module.thinned(grid, n // k)
        assert abs(int(keep.sum()) - n / k) <= 0.02 * n / k
        blocks = keep.view(4, 6, 4, 6, 4, 6).sum(dim=(1, 3, 5)).float()
        assert float((blocks - 216 / k).abs().max()) <= 0.1 * 216 / k
    with pytest.raises(InputError, match="max_points"):
        DISA(model=distinct_model(3), max_points=10)


def test_sampled_points_estimate_the_same_weighted_mean(case24_images):
    """A capped level scores a sub-lattice of its weighted points with their weights renormalized:
    the same similarity, estimated on fewer points, and what ``DISA(max_points=...)`` prepares."""
    f, mv = case24_images
    fl, ml = resample_to_spacing(f, 1.0), moving_level(mv, 1.0)
    model = distinct_model(17)
    full = DISA(model=model, cache=DescriptorCache(), max_points=None).prepare(fl, ml)
    capped = DISA(model=model, cache=DescriptorCache(), max_points=1000).prepare(fl, ml)
    n = len(full.points)
    assert n > 2000 and 1000 / 2 <= len(capped.points) <= 1000 * 1.05
    assert torch.equal(full.sampled(1000).points, capped.points) and full.sampled(n) is full
    assert float(capped.shares.sum()) == pytest.approx(1.0, rel=1e-5)
    rigid = make_model("rigid", case24_images[0].center())
    params = torch.tensor([[0, 0, 0, 0, 0, 0], [3, -2, 1, 4, -3, 2], [-5, 0, 4, -6, 2, 5.0]], dtype=torch.float64)
    values = [Objective(p, fl, ml, rigid).similarity(params).numpy() for p in (full, capped)]
    assert np.all(np.abs(values[0]) > 0.05)
    np.testing.assert_allclose(values[1], values[0], rtol=0.01)
    assert np.array_equal(np.argsort(values[1]), np.argsort(values[0]))  # the poses rank alike


def test_quantized_and_float_similarity_agree(disa_level, case24_images):
    fl, ml = disa_level
    model = distinct_model(11)
    rigid = make_model("rigid", case24_images[0].center())
    params = torch.tensor([[0, 0, 0, 0, 0, 0], [3, -2, 1, 4, -3, 2], [-5, 0, 4, -6, 2, 5.0]],
                          dtype=torch.float64)
    values = {}
    for quantized in (True, False):
        sim = DISA(model=model, quantized=quantized, cache=DescriptorCache())
        obj = Objective(sim.prepare(fl, ml), fl, ml, rigid)
        values[quantized] = obj.similarity(params).numpy()
    assert np.all(np.abs(values[False]) > 0.05)
    np.testing.assert_allclose(values[True], values[False], rtol=0.01)


def test_gradient_with_respect_to_rigid_parameters_matches_finite_differences(disa_level, case24_images):
    fl, ml = disa_level
    sim = DISA(model=distinct_model(12), quantized=True, cache=DescriptorCache())
    obj = Objective(sim.prepare(fl, ml), fl, ml, make_model("rigid", case24_images[0].center()))
    p0 = torch.tensor([2.0, -1.5, 1.0, 1.3, -0.7, 2.1], dtype=torch.float64)
    p = p0.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(obj.similarity(p[None]).sum(), p)
    h = 0.02
    fd = np.zeros(6)
    with torch.no_grad():
        for i in range(6):
            e = torch.zeros(6, dtype=torch.float64)
            e[i] = h
            pair = obj.similarity(torch.stack([p0 + e, p0 - e])).double()
            fd[i] = float(pair[0] - pair[1]) / (2 * h)
    assert np.abs(fd).max() > 1e-4
    np.testing.assert_allclose(grad.numpy(), fd, rtol=0.05, atol=0.03 * np.abs(fd).max())


def test_points_out_of_view_score_zero_but_keep_their_weight():
    rng = np.random.default_rng(13)
    fixed = torch.from_numpy(rng.standard_normal((16, 6, 7, 8))).float()
    weights = torch.rand(1, 6, 7, 8)
    weights[..., 0] = 0  # flat fixed patches: dropped, they add nothing
    prep = PreparedDISA(fixed, fixed, weights, None, None)
    assert len(prep.points) == 6 * 7 * 7 and not prep.needs_valid
    x, y, z = prep.points.T
    warped = fixed[:, z, y, x][None] + 0.1 * torch.randn(1, 16, len(x))
    warped[..., :40] = 0  # out of view: zero-padded sampling of descriptors reads 0
    got = float(prep.evaluate(warped[:, :, None, None], None))
    dots = (fixed[:, z, y, x] * warped[0]).sum(0)
    want = float((dots * weights[0, z, y, x])[40:].sum() / weights.sum())
    assert got == pytest.approx(want, rel=1e-5)


def test_leaving_the_field_of_view_never_pays(case24_images):
    """The MR against itself seen through the ultrasound's field of view: shifts that push part
    of the fixed image out of the moving one score below the truth."""
    f, mv = case24_images
    fixed = prepare_image(resample_image(mv, f), "fixed", mask=f.mask)
    fl, ml = resample_to_spacing(fixed, 2.0), moving_level(mv, 2.0)
    # border 0: the points next to the fixed faces are the first to leave the view
    sim = DISA(model=distinct_model(14), cache=DescriptorCache(), border=0)
    obj = Objective(sim.prepare(fl, ml), fl, ml, make_model("rigid", f.center()))
    assert_leaving_view_never_pays(obj)
    far = torch.zeros(1, 6, dtype=torch.float64)
    far[0, 3] = 300.0
    assert float(obj.similarity(far)) == 0.0  # all out of view: 0, the weights still count
    # Leaving the view is gradual: no jumps as planes of descriptor points cross the border
    # (a hard cut-off makes single 0.5 mm steps 30-60x the median step here).
    steps = torch.zeros(81, 6, dtype=torch.float64)
    steps[:, 3] = torch.linspace(-20.0, 20.0, 81)
    diffs = np.abs(np.diff(obj.similarity(steps).numpy()))
    assert diffs.max() < 6 * np.median(diffs)


# weights files -----------------------------------------------------------------------------------
def test_weights_round_trip_with_checksum(tmp_path):
    model = seeded_model(15)
    path = tmp_path / "net.pt"
    digest = save_weights(path, model, {"epochs": 3, "loss": 0.01, "sha256": "ignored"})
    card = json.loads((tmp_path / "net.json").read_text())
    assert card["sha256"] == digest and card["trainable_parameters"] == 90752 and card["epochs"] == 3
    loaded, meta = load_weights(path)
    assert meta["epochs"] == 3 and not loaded.training
    x = torch.randn(1, 1, 12, 13, 14)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)
    assert load_weights(path, expected_sha256=digest.upper())[1]["loss"] == 0.01


def test_missing_corrupt_and_unreadable_weights_raise_input_error(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere.pt"
    with pytest.raises(InputError, match="nowhere.pt"):
        DISA(weights=missing)
    # The default location names the file and says the shipped weights are missing.
    monkeypatch.setattr(weights_module, "DEFAULT_WEIGHTS", tmp_path / "disa_lc2.pt")
    monkeypatch.setattr(disa_module, "DEFAULT_WEIGHTS", tmp_path / "disa_lc2.pt")
    with pytest.raises(InputError, match=r"disa_lc2\.pt.*shipped weights are missing"):
        DISA()
    path = tmp_path / "net.pt"
    save_weights(path, seeded_model(16), {})
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError, match=r"net\.pt.*corrupt or modified"):
        load_weights(path)
    with pytest.raises(InputError, match="corrupt or modified"):
        load_weights(path, expected_sha256="0" * 64)
    # Checksum right but not a weights file.
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="junk.pt"):
        load_weights(junk, expected_sha256=weights_module.sha256_of(junk))
    with pytest.raises(InputError, match=r"junk\.json"):
        load_weights(junk)  # no model card, no checksum
    # A file torch can read that holds something else.
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else"}, other)
    with pytest.raises(InputError, match="not a DISA weights file"):
        load_weights(other, require_checksum=False)


# similarity maps ---------------------------------------------------------------------------------
def test_lc2_patch_map_matches_least_squares():
    rng = np.random.default_rng(17)
    a = torch.from_numpy(smooth_volume((14, 15, 16), seed=17, sigma=1.0)).double()
    g = a.abs() + 0.3 * torch.from_numpy(rng.standard_normal(a.shape))
    r = 2
    noise = 0.5 * torch.from_numpy(rng.standard_normal((5, 5, 5)))
    patch = 0.7 * a[3:8, 4:9, 5:10] - 0.4 * g[3:8, 4:9, 5:10] + noise
    got = lc2_patch_map(patch, a, g, ridge=0.0)
    b = patch.flatten().numpy()
    checked = 0
    for z, y, x in [(5, 6, 7), (7, 7, 7), (9, 10, 11), (4, 11, 6)]:
        sl = (slice(z - r, z + r + 1), slice(y - r, y + r + 1), slice(x - r, x + r + 1))
        design = np.stack([a[sl].flatten().numpy(), g[sl].flatten().numpy(), np.ones(b.size)], 1)
        coef, *_ = np.linalg.lstsq(design, b, rcond=None)
        want = 1 - ((b - design @ coef) ** 2).mean() / b.var()
        assert float(got[z, y, x]) == pytest.approx(want, abs=1e-6)
        checked += 1
    assert float(got[5, 6, 7]) > 0.4 and checked == 4


@pytest.fixture(scope="module")
def mr_small(case24_images):
    return resample_to_spacing(case24_images[1], 1.5)


@pytest.mark.parametrize("metric,tolerance", [("mind", 1.0), ("lc2", 1.0), ("disa", 6.0)])
def test_similarity_map_peaks_at_the_point_for_an_image_with_itself(mr_small, metric, tolerance):
    img = mr_small
    model = distinct_model(18)
    for idx in ([12, 14, 11], [16, 12, 15]):
        point = (img.index_to_world() @ np.r_[idx, 1.0])[:3]
        m = similarity_map(point, img, img, metric, model=model)
        assert m.shape == img.shape and m.channels == 1
        np.testing.assert_allclose(m.origin, img.origin)
        np.testing.assert_allclose(m.direction, img.direction)
        peak = np.unravel_index(int(m.data[0].argmax()), img.shape)[::-1]
        assert np.linalg.norm(np.subtract(peak, idx)) <= tolerance, (metric, idx, peak)


def test_similarity_map_rejects_bad_requests(mr_small):
    with pytest.raises(InputError, match="outside image A"):
        similarity_map(mr_small.origin - 500.0, mr_small, mr_small, "mind")
    with pytest.raises(InputError, match="unknown similarity map metric"):
        similarity_map(mr_small.center(), mr_small, mr_small, "ssd")


def test_inside_faces_drops_descriptors_near_the_faces_only():
    from disa.similarity.disa import inside_faces

    keep = inside_faces((96, 96, 40), (48, 48, 20), stride=2, border=8)[0]
    # 96 voxels: descriptors at 0, 2, ..., 94; kept from voxel 8 to 87 (40 of 48)
    assert keep.shape == (48, 48, 20) and int(keep[:, 0, 0].sum()) == 0
    z = keep[:, 24, 10].nonzero().flatten()
    assert (int(z.min()) * 2, int(z.max()) * 2) == (8, 86)
    # 40 voxels: the border shrinks to 5 (an eighth), so 3/4 of the axis stays
    x = keep[24, 24].nonzero().flatten()
    assert (int(x.min()) * 2, int(x.max()) * 2) == (6, 34)
    assert bool(inside_faces((96, 96, 40), (48, 48, 20), 2, 0).all())
