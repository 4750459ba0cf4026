"""Images in physical space: I/O keeps geometry (oblique included), normalization, resampling,
pyramids, and clear errors for unusable volumes."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from disa.errors import InputError
from disa.spatial import (Image, foreground_mask, load_image, normalize_intensity, pyramid,
                          resample_to_spacing, save_image)
from scipy.spatial.transform import Rotation


def oblique_blob(shape=(20, 24, 28), spacing=(0.8, 1.1, 1.3), where=(0.4, 0.55, 0.45)):
    """A Gaussian blob well inside an oblique, anisotropic image (``where``: fraction of the
    grid along x, y, z)."""
    direction = Rotation.from_rotvec([0.3, -0.5, 0.4]).as_matrix()
    origin = np.array([-12.0, 8.0, -15.0])
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    ijk = np.stack([xx, yy, zz], -1).reshape(-1, 3) * np.asarray(spacing)
    world = ijk @ direction.T + origin
    c = origin + direction @ (np.asarray(spacing) * np.asarray(shape[::-1]) * np.asarray(where))
    data = np.exp(-((world - c) ** 2).sum(1) / (2 * 3.0 ** 2)).reshape(shape)
    return Image.from_array(data, spacing, origin, direction)


def centroid_world(image: Image) -> np.ndarray:
    d = image.data[0].double().numpy()
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in d.shape], indexing="ij")
    ijk = np.stack([(xx * d).sum(), (yy * d).sum(), (zz * d).sum()]) / d.sum()
    return (image.index_to_world() @ np.append(ijk, 1.0))[:3]


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_save_and_load_keep_oblique_geometry(tmp_path, suffix):
    img = oblique_blob()
    path = tmp_path / f"blob{suffix}"
    save_image(img, path)
    back = load_image(path)
    np.testing.assert_allclose(back.spacing, img.spacing, atol=1e-6)
    np.testing.assert_allclose(back.origin, img.origin, atol=1e-5)
    np.testing.assert_allclose(back.direction, img.direction, atol=1e-6)
    torch.testing.assert_close(back.data, img.data)
    ref = sitk.ReadImage(str(path))
    np.testing.assert_allclose(back.index_to_world() @ [3, 4, 5, 1],
                               list(ref.TransformContinuousIndexToPhysicalPoint((3, 4, 5))) + [1], atol=1e-5)


def test_resampling_keeps_content_in_place_in_physical_space():
    img = oblique_blob()
    assert float(img.data.max()) > 0.99  # the blob is inside
    for spacing in (2.0, 0.7):
        out = resample_to_spacing(img, spacing)
        np.testing.assert_allclose(out.spacing, spacing)
        np.testing.assert_allclose(out.center(), img.center(), atol=1e-9)
        np.testing.assert_allclose(out.extent(), img.extent(), atol=spacing)
        np.testing.assert_allclose(centroid_world(out), centroid_world(img), atol=0.25)
    levels = pyramid(img, [4.0, 2.0])
    assert [lv.spacing[0] for lv in levels] == [4.0, 2.0]


def test_normalization_over_foreground():
    data = np.zeros((10, 10, 10))
    data[2:8, 2:8, 2:8] = np.random.default_rng(0).normal(50, 7, (6, 6, 6))
    img = Image.from_array(data)
    mask = foreground_mask(img, "auto")
    assert mask is not None and int(mask.sum()) == 216
    norm = normalize_intensity(img.same_geometry(img.data, mask))
    vals = norm.data[mask]
    assert abs(float(vals.mean())) < 1e-5 and abs(float(vals.std()) - 1) < 1e-4
    assert float(norm.data[~mask].abs().max()) == 0.0
    assert foreground_mask(Image.from_array(np.random.default_rng(1).normal(size=(6, 6, 6))), "auto") is None


def test_unusable_volumes_give_clear_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_image(tmp_path / "missing.nii.gz", "fixed image")
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_text("this is not an image")
    with pytest.raises(InputError, match="could not read"):
        load_image(garbage)
    flat2d = tmp_path / "slice.nii"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((16, 16), np.float32)), str(flat2d))
    with pytest.raises(InputError, match="2-D"):
        load_image(flat2d)
    one_slice = tmp_path / "one_slice.nii"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.rand(1, 16, 16).astype(np.float32)), str(one_slice))
    with pytest.raises(InputError, match="2-D"):
        load_image(one_slice)
    nan = np.random.rand(8, 8, 8).astype(np.float32)
    nan[3, 3, 3] = np.nan
    nan_path = tmp_path / "nan.mha"  # (SimpleITK's NIfTI writer drops NaNs)
    sitk.WriteImage(sitk.GetImageFromArray(nan), str(nan_path))
    with pytest.raises(InputError, match="NaN"):
        load_image(nan_path)
    const_path = tmp_path / "const.nii"
    sitk.WriteImage(sitk.GetImageFromArray(np.full((8, 8, 8), 5, np.float32)), str(const_path))
    with pytest.raises(InputError, match="constant intensity"):
        load_image(const_path)
    vec_path = tmp_path / "vector.nii"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.rand(8, 8, 8, 3).astype(np.float32), isVector=True), str(vec_path))
    with pytest.raises(InputError, match="components"):
        load_image(vec_path)


@pytest.mark.parametrize("shape", [(64, 18, 22), (61, 18, 22), (1, 1, 24001)])  # and a list of points
def test_threaded_grid_sample_gives_torch_values_and_gradients(shape):
    """disa.spatial.sampling.grid_sample cuts a batch of one into slabs for the CPU's threads:
    values and grid gradients equal torch's single call bit for bit, the source's gradient up to
    rounding; with one thread it is torch's call."""
    import torch.nn.functional as F

    from disa.spatial.sampling import grid_sample
    from disa.threads import torch_threads

    g = torch.Generator().manual_seed(3)
    source = torch.randn(1, 4, 20, 24, 28, generator=g)
    grid = torch.rand(1, *shape, 3, generator=g) * 2.4 - 1.2  # some points outside

    def run(sampler, threads):
        src, grd = source.clone().requires_grad_(True), grid.clone().requires_grad_(True)
        with torch_threads(threads):
            out = sampler(src, grd, mode="bilinear", padding_mode="zeros", align_corners=True)
            (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        return out.detach(), grd.grad, src.grad

    ref = run(F.grid_sample, 1)
    two, three, one = run(grid_sample, 2), run(grid_sample, 3), run(grid_sample, 1)
    assert two[0].shape == ref[0].shape == (1, 4, *shape)
    assert torch.equal(two[0], ref[0]) and torch.equal(two[1], ref[1])
    assert torch.allclose(two[2], ref[2], atol=1e-5) and not torch.equal(two[2], torch.zeros_like(two[2]))
    assert torch.equal(three[0], ref[0]) and torch.equal(three[1], ref[1])  # another slab count
    assert all(torch.equal(a, b) for a, b in zip(one, ref))


@pytest.mark.parametrize("dims", [4, 5])
def test_channels_fastest_samples_the_same_bit_for_bit(dims):
    """``channels_fastest`` relays a source in memory only: the same shape and values, and the
    same samples and grid gradients, bit for bit, at points (a linear objective) and on a grid."""
    from disa.spatial.image import sample
    from disa.spatial.sampling import channels_fastest

    g = torch.Generator().manual_seed(5)
    source = torch.randn(12, 20, 24, 28, generator=g)
    relaid = channels_fastest(source if dims == 4 else source[None])
    assert relaid.shape == (source.shape if dims == 4 else (1, *source.shape))
    assert torch.equal(relaid.reshape(source.shape), source) and relaid.stride()[-4 if dims == 4 else 1] == 1
    for shape in [(1, 1, 5000), (9, 10, 11)]:
        grid = torch.rand(1, *shape, 3, generator=g) * 2.2 - 1.1
        outs = []
        for src in (source, relaid if dims == 4 else relaid[0]):
            grd = grid.clone().requires_grad_(True)
            out, inside = sample(src, grd)
            (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
            outs.append((out.detach(), inside, grd.grad))
        assert all(torch.equal(a, b) for a, b in zip(*outs))


def test_crop_to_box_keeps_what_a_resampling_reads():
    """``crop_to_box``: the part of an oblique image that a smaller target grid reads through a
    rotation and shift (plus a margin): resampling the crop gives the same values and mask as the
    whole image; a target that covers the image, or a zero crop, returns the image itself."""
    from disa.spatial import resample_image
    from disa.spatial.image import crop_to_box

    img = oblique_blob(shape=(40, 44, 48))
    img = img.same_geometry(img.data, img.data > 0.02)
    target = resample_to_spacing(img, 1.5)
    target = Image(target.data[:, 8:20, 6:18, 5:19], target.spacing,
                   (target.index_to_world() @ [5, 6, 8, 1])[:3], target.direction)
    matrix = np.eye(4)
    matrix[:3, :3] = Rotation.from_rotvec([0.1, 0.05, -0.15]).as_matrix()
    matrix[:3, 3] = [1.5, -2.0, 0.8]
    for m in (None, matrix):
        crop = crop_to_box(img, target, m, margin_mm=2.0)
        assert crop.data.numel() < 0.5 * img.data.numel()
        whole, part = resample_image(img, target, m), resample_image(crop, target, m)
        assert torch.allclose(whole.data, part.data, atol=1e-5) and torch.equal(whole.mask, part.mask)
        assert 0.02 < float(whole.mask.float().mean()) < 0.9 and float(whole.data.max()) > 0.5  # not vacuous
    assert crop_to_box(img, img) is img and crop_to_box(img, target, matrix, margin_mm=500.0) is img
