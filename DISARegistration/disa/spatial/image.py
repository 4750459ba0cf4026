"""A volume with its physical geometry, and the operations that keep that geometry right.

Conventions (the whole engine uses them):
- ``data`` is a float tensor shaped (C, Z, Y, X): channels first, then array axes z, y, x, as
  ``SimpleITK.GetArrayFromImage`` returns them.
- ``spacing``, ``origin`` and ``direction`` are SimpleITK's, in LPS millimetres: index vector
  (i, j, k) = (x, y, z) maps to ``origin + direction @ (spacing * ijk)``; the columns of
  ``direction`` are the physical directions of the x, y and z index axes.
- Sampling goes through ``torch.nn.functional.grid_sample`` with ``align_corners=True``, so the
  normalized coordinate -1 is the centre of the first voxel and +1 that of the last.
"""
from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass, replace
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError, existing_file, itk_error_summary
from . import nifti
from .sampling import grid_sample

PathLike = Union[str, "os.PathLike[str]"]

#: Files the engine reads and writes through SimpleITK.
SUPPORTED_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")

#: Fewest voxels along any axis for a volume to be registered.
MIN_VOXELS_PER_AXIS = 4


@dataclass
class Image:
    """A (multi-channel) volume in LPS physical space.

    ``mask`` (optional, (1, Z, Y, X) bool) marks the voxels that carry image content, such as the
    inside of an ultrasound fan; similarities ignore the rest.
    """

    data: torch.Tensor
    spacing: np.ndarray
    origin: np.ndarray
    direction: np.ndarray
    mask: Optional[torch.Tensor] = None

    def __post_init__(self):
        self.spacing = np.asarray(self.spacing, dtype=np.float64).reshape(3)
        self.origin = np.asarray(self.origin, dtype=np.float64).reshape(3)
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        if self.data.dim() == 3:
            self.data = self.data[None]
        if self.data.dim() != 4:
            raise InputError(f"image data must be (C, Z, Y, X), got shape {tuple(self.data.shape)}")

    # geometry ---------------------------------------------------------------------------------
    @property
    def shape(self) -> Tuple[int, int, int]:
        """Array shape (Z, Y, X)."""
        return tuple(int(s) for s in self.data.shape[1:])

    @property
    def size(self) -> Tuple[int, int, int]:
        """Grid size in index order (X, Y, Z), as SimpleITK's GetSize."""
        return self.shape[::-1]

    @property
    def channels(self) -> int:
        return int(self.data.shape[0])

    def index_to_world(self) -> np.ndarray:
        """4x4 matrix from index (x, y, z) to LPS millimetres."""
        m = np.eye(4)
        m[:3, :3] = self.direction @ np.diag(self.spacing)
        m[:3, 3] = self.origin
        return m

    def world_to_index(self) -> np.ndarray:
        return np.linalg.inv(self.index_to_world())

    def center(self) -> np.ndarray:
        """LPS position of the grid centre (midway between the first and last voxel centres)."""
        half = (np.asarray(self.size, dtype=np.float64) - 1.0) / 2.0
        return self.origin + self.direction @ (self.spacing * half)

    def extent(self) -> np.ndarray:
        """Physical edge lengths of the grid (x, y, z) in mm."""
        return self.spacing * np.asarray(self.size, dtype=np.float64)

    def same_geometry(self, data: torch.Tensor, mask: Optional[torch.Tensor] = None) -> "Image":
        """A new image on this grid with other voxel values."""
        return replace(self, data=data, mask=mask)

    def to(self, device) -> "Image":
        mask = None if self.mask is None else self.mask.to(device)
        return replace(self, data=self.data.to(device), mask=mask)

    # conversion -------------------------------------------------------------------------------
    @classmethod
    def from_array(cls, array, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                   direction=np.eye(3), mask=None) -> "Image":
        """From a (Z, Y, X) or (C, Z, Y, X) array."""
        data = torch.as_tensor(np.asarray(array, dtype=np.float32))
        return cls(data, np.asarray(spacing), np.asarray(origin), np.asarray(direction), mask)

    @classmethod
    def from_sitk(cls, img) -> "Image":
        import SimpleITK as sitk

        # One float32 copy of the voxels (GetArrayFromImage then astype would make two).
        arr = np.array(sitk.GetArrayViewFromImage(img), dtype=np.float32)
        if img.GetNumberOfComponentsPerPixel() > 1:
            arr = np.moveaxis(arr, -1, 0)
        return cls(torch.from_numpy(np.ascontiguousarray(arr)), np.array(img.GetSpacing()),
                   np.array(img.GetOrigin()), np.array(img.GetDirection()).reshape(3, 3))

    def to_sitk(self, channel: Optional[int] = 0):
        """A SimpleITK image (one channel, or a vector image when ``channel`` is None)."""
        import SimpleITK as sitk

        arr = self.data.detach().cpu().numpy()
        if channel is None:
            img = sitk.GetImageFromArray(np.moveaxis(arr, 0, -1), isVector=True)
        else:
            img = sitk.GetImageFromArray(arr[channel])
        img.SetSpacing([float(s) for s in self.spacing])
        img.SetOrigin([float(o) for o in self.origin])
        img.SetDirection([float(d) for d in self.direction.ravel()])
        return img


@dataclass(frozen=True)
class VolumeInfo:
    """A volume's grid without its voxels (from a file header): size (x, y, z), spacing, and
    bytes per voxel as stored; enough to size the memory a run needs."""

    size: tuple
    spacing: tuple
    bytes_per_voxel: int = 4

    @property
    def voxels(self) -> int:
        return int(np.prod(np.asarray(self.size, dtype=np.int64)))

    def extent(self) -> np.ndarray:
        return np.asarray(self.size, dtype=np.float64) * np.asarray(self.spacing, dtype=np.float64)

    def voxels_at(self, spacing: float) -> int:
        """Voxels of this box resampled at ``spacing`` mm (as ``resample_to_spacing`` does)."""
        return int(np.prod(np.maximum(np.round(self.extent() / spacing), 2)))

    @classmethod
    def of(cls, image: "Union[Image, VolumeInfo]") -> "VolumeInfo":
        if isinstance(image, VolumeInfo):
            return image
        return cls(tuple(int(s) for s in image.size), tuple(float(s) for s in image.spacing), 4)


# I/O --------------------------------------------------------------------------------------------
def load_image(path: PathLike, name: str = "image") -> Image:
    """Read a 3-D scalar volume (NIfTI, NRRD, MHA) and check that it can be registered."""
    import SimpleITK as sitk

    path = existing_file(path, name)
    try:
        img = sitk.ReadImage(path)
    except RuntimeError as exc:
        raise InputError(f"could not read {name} '{path}': {itk_error_summary(exc)} (supported: "
                         f"{', '.join(SUPPORTED_SUFFIXES)})") from exc
    if img.GetDimension() != 3:
        raise InputError(f"{name} '{path}' is {img.GetDimension()}-D; DISA registers 3-D volumes")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{name} '{path}' has {img.GetNumberOfComponentsPerPixel()} components "
                         "per voxel; give a scalar volume")
    if nifti.is_nifti(path):
        check_nifti_voxels(path, f"{name} '{path}'")
    image = Image.from_sitk(img)
    del img
    check_image(image, f"{name} '{path}'")
    return image


def read_volume_info(path: PathLike, name: str = "image") -> VolumeInfo:
    """The grid of an image file from its header (no voxels are read); InputError if unusable."""
    import SimpleITK as sitk

    path = existing_file(path, name)
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(f"could not read {name} '{path}': {itk_error_summary(exc)} (supported: "
                         f"{', '.join(SUPPORTED_SUFFIXES)})") from exc
    if reader.GetDimension() != 3:
        raise InputError(f"{name} '{path}' is {reader.GetDimension()}-D; DISA registers 3-D volumes")
    item = sitk.Image([1] * 3, reader.GetPixelID()).GetSizeOfPixelComponent()
    return VolumeInfo(tuple(reader.GetSize()), tuple(reader.GetSpacing()),
                      int(item) * int(reader.GetNumberOfComponents()))


def check_nifti_voxels(path: str, name: str) -> None:
    """Refuse NaN/Inf voxels and truncated voxel data, which ITK's NIfTI reader turns into 0."""
    import zlib

    layout = nifti.read_layout(path)
    if layout is None:
        return
    try:
        bad, present = nifti.scan_voxels(path, layout)
    except (EOFError, OSError, zlib.error) as exc:
        raise InputError(f"{name} is damaged: its voxel data cannot be read to the end ({exc})") from None
    if present < layout.n_bytes:
        raise InputError(f"{name} is truncated: {present} of {layout.n_bytes} bytes of voxel data")
    if bad:
        raise InputError(f"{name} contains {bad} non-finite voxels (NaN or Inf); "
                         "replace or mask them before registering")


def save_image(image: Image, path: PathLike) -> None:
    import SimpleITK as sitk

    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sitk.WriteImage(image.to_sitk(channel=0 if image.channels == 1 else None), path)


def check_image(image: Image, name: str = "image") -> None:
    """Raise InputError if ``image`` is not a usable 3-D volume (too small, non-finite, flat)."""
    if any(s < MIN_VOXELS_PER_AXIS for s in image.shape):
        raise InputError(f"{name} has size {image.size}: a 3-D volume needs at least "
                         f"{MIN_VOXELS_PER_AXIS} voxels along every axis (is it a 2-D image?)")
    if not np.all(np.isfinite(image.spacing)) or np.any(image.spacing <= 0):
        raise InputError(f"{name} has invalid spacing {tuple(image.spacing)}")
    if abs(abs(np.linalg.det(image.direction)) - 1.0) > 1e-3:
        raise InputError(f"{name} has a direction matrix that is not orthonormal")
    bad = count_non_finite(image.data)
    if bad:
        raise InputError(f"{name} contains {bad} non-finite voxels (NaN or Inf); "
                         "replace or mask them before registering")
    if float(image.data.max() - image.data.min()) == 0.0:
        raise InputError(f"{name} has constant intensity {float(image.data.flatten()[0]):g}: "
                         "there is nothing to register")


def count_non_finite(data: torch.Tensor, chunk_voxels: int = 1 << 20) -> int:
    """NaN and Inf values in (C, Z, Y, X) ``data``, counted a slab at a time (isfinite on a whole
    volume takes 1.7x its size in temporaries)."""
    step = max(1, chunk_voxels // max(1, int(np.prod(data.shape[2:]))))
    return sum(int((~torch.isfinite(part)).sum()) for part in data.split(step, dim=1))


# intensities ------------------------------------------------------------------------------------
def foreground_mask(image: Image, mode: str = "auto") -> Optional[torch.Tensor]:
    """The voxels that carry content.

    ``"none"``: all voxels. ``"nonzero"``: voxels that are not exactly 0 (ultrasound outside the
    fan, skull-stripped or resliced volumes). ``"auto"``: ``"nonzero"`` when more than 10% of the
    voxels are exactly 0, since such a region is padding, not anatomy; else all voxels.
    """
    if mode == "none":
        return None
    nonzero = image.data[:1] != 0
    if mode == "nonzero" or (mode == "auto" and float((~nonzero).sum()) / nonzero.numel() > 0.10):
        return nonzero
    if mode == "auto":
        return None
    raise InputError(f"unknown mask mode {mode!r}; use auto, nonzero or none")


def normalize_intensity(image: Image, mask: Optional[torch.Tensor] = None) -> Image:
    """Zero mean and unit standard deviation over the foreground (all voxels without a mask)."""
    mask = image.mask if mask is None else mask
    data = image.data.float()
    values = data[:, mask[0]] if mask is not None else data.flatten(1)
    if values.shape[1] < 2:
        raise InputError("the image foreground is empty: nothing to register")
    mean = values.mean(dim=1).view(-1, 1, 1, 1)
    std = values.std(dim=1).view(-1, 1, 1, 1)
    if float(std.min()) <= 1e-12 * max(1.0, float(mean.abs().max())):
        raise InputError("the image has zero intensity variance over its foreground: "
                         "there is nothing to register")
    out = data - mean  # then in place: a large volume needs one working copy, not three
    out.div_(std)
    if mask is not None:
        out.mul_(mask)
    return image.same_geometry(out, mask)


# sampling ---------------------------------------------------------------------------------------
def index_to_normalized(size_xyz) -> np.ndarray:
    """4x4 from voxel index (x, y, z) to grid_sample's normalized coordinates."""
    size = np.asarray(size_xyz, dtype=np.float64)
    half = np.maximum(size - 1.0, 1e-9) / 2.0
    m = np.eye(4)
    m[:3, :3] = np.diag(1.0 / half)
    m[:3, 3] = -1.0
    return m


def sampling_theta(target: Image, source: Image, matrix: torch.Tensor) -> torch.Tensor:
    """``affine_grid`` matrices (B, 3, 4) that sample ``source`` on ``target``'s grid.

    ``matrix`` (B, 4, 4) maps target LPS points to source LPS points (the resampling direction).
    The result is differentiable with respect to ``matrix``.
    """
    dt = matrix.dtype
    dev = matrix.device
    left = torch.as_tensor(world_to_normalized(source), dtype=dt, device=dev)
    right = torch.as_tensor(normalized_to_world(target), dtype=dt, device=dev)
    return (left @ matrix @ right)[:, :3, :]


def world_to_normalized(image: Image) -> np.ndarray:
    """4x4 from LPS to ``image``'s grid_sample coordinates (align_corners=True)."""
    return index_to_normalized(image.size) @ image.world_to_index()


def normalized_to_world(image: Image) -> np.ndarray:
    """4x4 from ``image``'s grid_sample coordinates to LPS."""
    return image.index_to_world() @ np.linalg.inv(index_to_normalized(image.size))


def sample(source: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear") -> Tuple[torch.Tensor, torch.Tensor]:
    """Sample (C, z, y, x) ``source`` at normalized ``grid`` (B, Z, Y, X, 3).

    Returns the samples (B, C, Z, Y, X) and a (B, 1, Z, Y, X) float mask that is 1 where the
    point lies inside the source grid. Points outside read 0 and are masked out.
    """
    b = grid.shape[0]
    src = source[None].expand(b, *source.shape) if source.dim() == 4 else source
    out = grid_sample(src, grid, mode=mode, padding_mode="zeros", align_corners=True)
    inside = (grid.detach().abs() <= 1.0 + 1e-6).all(dim=-1, keepdim=True)
    return out, inside.permute(0, 4, 1, 2, 3).to(out.dtype)


def sample_field(field: Image, points) -> np.ndarray:
    """Trilinear samples (N, C) of ``field``'s channels at LPS ``points`` (N, 3), float64; 0
    outside the grid (as an ITK displacement field transform leaves such points where they are)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    m = world_to_normalized(field)
    norm = pts @ m[:3, :3].T + m[:3, 3]
    grid = torch.as_tensor(norm, dtype=torch.float64).reshape(1, 1, 1, -1, 3)
    values, inside = sample(field.data.to(torch.float64), grid)
    return (values[0, :, 0, 0] * inside[0, :, 0, 0]).T.numpy()


def resample_image(source: Image, target: Image, matrix: Optional[np.ndarray] = None,
                   mode: str = "bilinear", displacement=None) -> Image:
    """``source`` resampled on ``target``'s grid through ``matrix`` (target LPS -> source LPS).

    ``displacement``: optional callable giving the target-space displacement (..., 3) in mm of
    LPS points (..., 3), applied before ``matrix`` (the probe-pressure model's compression).
    Voxels that fall outside ``source`` are 0 and outside the returned mask.
    """
    m = torch.as_tensor(np.eye(4) if matrix is None else np.asarray(matrix), dtype=torch.float64)
    theta = sampling_theta(target, source, m[None]).to(torch.float32)
    grid = F.affine_grid(theta, [1, 1, *target.shape], align_corners=True).to(source.data.device)
    if displacement is not None:
        to_world = torch.as_tensor(normalized_to_world(target)[:3], dtype=torch.float32)[None]
        points = F.affine_grid(to_world, [1, 1, *target.shape], align_corners=True)
        linear = (torch.as_tensor(world_to_normalized(source)) @ m)[:3, :3].to(torch.float32)
        grid = grid + (displacement(points).to(torch.float32) @ linear.T).to(grid.device)
    out, inside = sample(source.data.float(), grid, mode=mode)
    mask = inside[0] > 0.5
    if source.mask is not None:
        src_mask, _ = sample(source.mask.float(), grid, mode="bilinear")
        mask = mask & (src_mask[0] > 0.5)
    return target.same_geometry(out[0], mask)


def gaussian_blur(data: torch.Tensor, sigma_vox: Sequence[float]) -> torch.Tensor:
    """Separable Gaussian blur of (C, Z, Y, X) or (B, C, Z, Y, X) data; ``sigma_vox`` in voxels
    along (x, y, z); borders replicated.

    Each axis is a weighted sum of shifted views accumulated in place, so a blur needs one
    extra copy of the volume (a grouped 3-D convolution unfolded it once per kernel tap and
    peaked at 16-20x the image size).
    """
    out = data
    for dim, sigma in zip((-1, -2, -3), sigma_vox):
        if sigma <= 0.05:
            continue
        radius = max(1, int(math.ceil(3.0 * sigma)))
        t = torch.arange(-radius, radius + 1, dtype=data.dtype)
        kernel = torch.exp(-0.5 * (t / sigma) ** 2)
        out = _blur_axis(out, (kernel / kernel.sum()).tolist(), dim)
    return out


def _blur_axis(x: torch.Tensor, kernel: List[float], dim: int) -> torch.Tensor:
    """``x`` convolved with the symmetric ``kernel`` along ``dim``, replicating the border."""
    n, r = x.shape[dim], len(kernel) // 2
    out = x * kernel[r]
    for s in range(1, r + 1):
        w = kernel[r + s]
        if s < n:
            out.narrow(dim, s, n - s).add_(x.narrow(dim, 0, n - s), alpha=w)
            out.narrow(dim, 0, n - s).add_(x.narrow(dim, s, n - s), alpha=w)
            out.narrow(dim, 0, s).add_(x.narrow(dim, 0, 1), alpha=w)
            out.narrow(dim, n - s, s).add_(x.narrow(dim, n - 1, 1), alpha=w)
        else:  # the whole axis lies within the shift: both neighbours are border voxels
            out.add_(x.narrow(dim, 0, 1), alpha=w).add_(x.narrow(dim, n - 1, 1), alpha=w)
    return out


def anti_alias_sigma(factor):
    """Gaussian sigma (in source voxels) that anti-aliases a resampling coarser by ``factor``
    (new spacing over old, a number or an array); 0 where the grid does not get coarser."""
    factor = np.asarray(factor, dtype=np.float64)
    return 0.5 * np.sqrt(np.maximum(factor ** 2 - 1.0, 0.0))


def resample_to_spacing(image: Image, spacing: Union[float, Sequence[float]],
                        resolution: Union[float, Sequence[float], None] = None) -> Image:
    """The same box resampled at ``spacing`` mm, with Gaussian anti-aliasing when coarsening.

    ``resolution`` (mm, default ``spacing``) sets the anti-aliasing blur: a grid finer than
    the resolution (oversampling) keeps later trilinear interpolation nearly exact.
    The new grid keeps the direction and the centre of the old one and covers the same extent.
    A mask is resampled too (a voxel is inside when more than half of it was).
    """
    new_spacing = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,)).copy()
    blur_to = new_spacing if resolution is None else np.broadcast_to(np.asarray(resolution, dtype=np.float64), (3,))
    factor = blur_to / image.spacing
    new_size = np.maximum(np.round(image.extent() / new_spacing).astype(int), 2)
    center = image.center()
    origin = center - image.direction @ (new_spacing * (new_size - 1) / 2.0)
    sigma = anti_alias_sigma(factor)
    target = Image(torch.zeros(1, *new_size[::-1].tolist()), new_spacing, origin, image.direction)
    if image.shape[0] > 1 and int(np.prod(image.shape)) > SLAB_VOXELS:
        out = _resample_in_slabs(image, target, sigma)
    else:
        blurred = gaussian_blur(image.data.float(), sigma)
        out = resample_image(image.same_geometry(blurred, image.mask), target)
    if image.mask is None:
        return target.same_geometry(out.data, None)
    return out


#: Volumes with more voxels than this are blurred and resampled in slabs along z, so a large
#: image needs working memory for a slab, not for a blurred copy of the whole volume.
SLAB_VOXELS = 1 << 23


def _resample_in_slabs(image: Image, target: Image, sigma) -> Image:
    """``resample_to_spacing``'s blur and resampling, a slab of target slices at a time.

    Each source slab carries a halo of the blur radius plus one voxel (trilinear
    neighbours), so the result equals the whole-volume one up to float rounding.
    """
    to_source = image.world_to_index() @ target.index_to_world()  # target (x, y, z, 1) -> source
    halo = (int(math.ceil(3.0 * sigma[2])) if sigma[2] > 0.05 else 0) + 2
    per_slice = max(1, int(np.prod(image.shape[1:])))
    z_step = max(1, SLAB_VOXELS // per_slice - 2 * halo)
    step = max(2, int(z_step / max(abs(to_source[2, 2]), 1e-9)))
    # slabs of at least two slices (affine_grid treats single-slice grids differently)
    bounds = np.linspace(0, target.shape[0], max(1, target.shape[0] // step) + 1).round().astype(int)
    corners = np.array([[x, y, 0.0, 1.0] for x in (0, target.size[0] - 1) for y in (0, target.size[1] - 1)])
    datas, masks = [], []
    for k0, k1 in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        zs = []
        for k in (k0, k1 - 1):
            pts = corners.copy()
            pts[:, 2] = k
            zs.extend((to_source @ pts.T)[2])
        lo = max(int(math.floor(min(zs))) - halo, 0)
        hi = min(int(math.ceil(max(zs))) + halo + 1, image.shape[0])
        origin = image.index_to_world() @ np.array([0.0, 0.0, lo, 1.0])
        slab_mask = None if image.mask is None else image.mask[:, lo:hi]
        slab = Image(gaussian_blur(image.data[:, lo:hi].float(), sigma), image.spacing, origin[:3],
                     image.direction, slab_mask)
        t_origin = target.index_to_world() @ np.array([0.0, 0.0, k0, 1.0])
        part = resample_image(slab, Image(torch.zeros(1, k1 - k0, *target.shape[1:]), target.spacing,
                                          t_origin[:3], target.direction))
        datas.append(part.data)
        masks.append(part.mask)
    return target.same_geometry(torch.cat(datas, dim=1), torch.cat(masks, dim=1))


def crop_to_mask(image: Image, margin: int = 0) -> Image:
    """The sub-image over the bounding box of the mask (plus ``margin`` voxels), same geometry.

    Measures that ignore voxels outside the fixed mask evaluate only this box: exact, and
    cheaper when the content fills a small part of the grid (an ultrasound fan).
    """
    if image.mask is None or not bool(image.mask.any()):
        return image
    nz = image.mask[0].nonzero()
    lo = (nz.min(0).values - margin).clamp_min(0)
    hi = torch.minimum(nz.max(0).values + margin + 1, torch.as_tensor(image.shape))
    return sub_image(image, [int(v) for v in lo.flip(0)], [int(v) for v in hi.flip(0)])


def sub_image(image: Image, low, high) -> Image:
    """The voxels from index ``low`` to ``high`` (x, y, z; ``high`` exclusive) of ``image`` (and of
    its mask) as an Image in the same place: a view, not a copy."""
    (x0, y0, z0), (x1, y1, z1) = low, high
    origin = image.index_to_world() @ np.array([x0, y0, z0, 1.0])
    mask = None if image.mask is None else image.mask[:, z0:z1, y0:y1, x0:x1]
    return Image(image.data[:, z0:z1, y0:y1, x0:x1], image.spacing, origin[:3], image.direction, mask)


def box_corners(image: Image) -> np.ndarray:
    """The LPS points (8, 3) of the corner voxels' centres of ``image``'s grid."""
    size = np.asarray(image.size, dtype=np.float64)
    index = np.array([[*(c * (size - 1)), 1.0] for c in itertools.product((0.0, 1.0), repeat=3)])
    return (index @ image.index_to_world().T)[:, :3]


def crop_to_box(image: Image, target: Image, matrix: Optional[np.ndarray] = None, margin_mm: float = 0.0) -> Image:
    """The sub-image of ``image`` that holds ``target``'s grid mapped through ``matrix`` (target
    LPS -> image LPS), plus ``margin_mm``; ``image`` itself when that is all of it. Resampling
    ``image`` onto ``target`` reads nothing outside (an affine map keeps the box's corners
    outermost), so a filter with a support within the margin gives the same values there."""
    corners = np.concatenate([box_corners(target), np.ones((8, 1))], 1)
    m = np.eye(4) if matrix is None else np.asarray(matrix, dtype=np.float64)
    index = corners @ (image.world_to_index() @ m).T
    pad = margin_mm / np.asarray(image.spacing, dtype=np.float64)
    lo = np.clip(np.floor(index[:, :3].min(0) - pad), 0, None).astype(np.int64)
    hi = np.minimum(np.ceil(index[:, :3].max(0) + pad) + 1, np.asarray(image.size)).astype(np.int64)
    if np.any(hi <= lo) or (np.all(lo == 0) and np.all(hi == np.asarray(image.size))):
        return image
    return sub_image(image, lo, hi)


def pyramid(image: Image, spacings: Sequence[float]) -> List[Image]:
    """The image resampled at each of ``spacings`` (coarse to fine, as given)."""
    return [resample_to_spacing(image, s) for s in spacings]
