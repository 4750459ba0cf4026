"""DISA-LC²: the dot product of learned descriptors, a fast differentiable stand-in for LC².

Eq. 2 of the paper: ``f(T) = sum_p w(p) <phi_F(p), phi_M(T(p))> / sum_p w(p)`` over the
points p of the fixed descriptor grid (stride 4 by default). The CNN runs once per image and
level (through :class:`~disa.features.descriptors.DescriptorCache`), never inside the
optimizer loop; the optimizer only warps the moving descriptors and takes dot products, so the
gradient with respect to the pose flows through the warp, never through the CNN.

- Scale: both images are described at the fixed level's spacing (the moving level image,
  oversampled by the pipeline, is resampled to it first) so the descriptors of both see
  patches of the same physical size, and registration works at 1 mm (2 mm on the coarse
  level), the scale of the training crops, unless the content is very large, or small: under
  64 mm across (an intra-operative ultrasound fan of a few cm), the fixed image's own spacing
  down to 0.5 mm (``fine_spacing``), even where the moving image is coarser.
- Stride 2 by default (one "a trous" network pass per image, descriptors 2 mm apart at 1 mm): trilinear
  interpolation between descriptors 4 mm apart biased the optimum by 2-3 mm on the held-out
  synthetic pairs (the MIND-SSC oracle through this path: median 2.40 mm at stride 4, 0.54 mm
  at stride 2, both at 2/1 mm; at the old 48-voxels-per-fan spacing 2.40 and 2.06 mm).
- Lattice coincidence (``sampling``): trilinear sampling blurs a sampled descriptor by an amount
  that depends on where the point falls between descriptor nodes (none on a node), so with
  parallel fixed and moving grids of equal spacing the pose where the lattices coincide scores
  above its neighbours: the global search found it from the truth on a held-out T2-T1 pair
  (2.6 mm off, every network and the oracle). ``"jittered"`` (default) moves each fixed point
  by a seeded offset within its own cell, so the points fall at every sub-cell offset whatever
  the pose and the blur averages out, at no cost; ``"cubic"`` samples by cubic B-spline, whose
  blur is the same at every offset (``spatial.bspline``), at 8 lookups per point. Both gave the
  same held-out figures (session-6 weights: median 1.16/1.17 mm; oracle 0.36/0.36 mm); coarse
  levels sample plainly (``at_scale``).
- Faces of the fixed image (``border``, default 8 input voxels, at most an eighth of the axis,
  finest level only: see ``at_scale``): descriptors that close to a face of the fixed grid see
  the network's zero padding where the field of view cuts through anatomy; no moving patch
  looks like that at the truth, so they carry no weight (a CT-T1 held-out pair cut to a 96 mm
  box, LC²'s patch-variance weights: oracle 4.5 mm off with them, 0.4 mm without; with the
  regional weights below, the network on the held-out check: worst 1.60 mm with them, 1.06
  without).
- Weights ``w``: the variance of the fixed level image within ``weight_radius`` voxels (24, a
  regional measure rather than LC²'s 5-voxel patch variance), averaged over each descriptor's
  footprint, zero outside the fixed mask. The network already maps flat patches to short
  descriptors; LC²'s patch variance on top of that let the few highest-contrast structures of
  the fixed image decide, which fails where they are ambiguous: with a CT fixed, the skull
  (held-out CT-T1 pair from 12 mm: 34.9 mm off at radius 5, 0.71 mm at 24). On the held-out
  check (8 pairs x 3 starts, 1 thread): radius 5 median 0.67 mm, 88% < 2 mm, worst 33.8 mm; 12:
  0.59 mm, 96%, 36.2; 16: 0.58 mm, 100%, 1.09; 24: 0.57 mm, 100%, 1.06; 32: 0.58 mm, 100%,
  1.05. Fans cut to 48 mm (6 pairs x 3 starts): radius 5 mean 1.25 mm, worst 1.96; 24: mean
  1.04, worst 1.54.
- Field of view: a fixed point that maps outside the moving image (or its mask) scores 0, the
  value of unrelated patches under LC², while its weight still counts, so a pose cannot gain by
  pushing the fixed image out of view. The cut-off is a linear fade over one moving descriptor
  cell rather than a hard edge, so the objective stays continuous (see ``PreparedDISA``).
- ``quantized=True`` (default): descriptors are stored as 8 bits and dequantized, as in the
  paper; the similarity changes by well under 1 %.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..features.descriptors import DEFAULT_CACHE, HALO, STRIDES, DescriptorCache, dequantize, precision_dtype, quantize
from ..features.weights import DEFAULT_WEIGHTS, load_weights
from ..spatial import Image
from ..spatial.image import crop_to_mask
from .base import Prepared, Similarity
from .lc2 import fixed_weights
from .mind import MIN_SAMPLED_POINTS

#: Descriptor stride of registration (see the module notes on scale and stride).
DEFAULT_STRIDE = 2
#: Finest working spacing (mm): the voxel size of the network's training crops (1-2 mm).
NETWORK_SPACING = 1.0
#: Content narrower than ``SMALL_ACROSS`` voxels of ``NETWORK_SPACING`` is registered at the fixed
#: image's own spacing, down to ``SMALL_SPACING`` mm (see ``DISA.fine_spacing``).
SMALL_ACROSS = 64
SMALL_SPACING = 0.5
#: Most moving voxels at such a fine level (a 128 mm cube at 0.5 mm: about 4 GB and 8 s of
#: network on two cores); a larger moving image (a whole-head MR) keeps the network's scale.
MAX_SMALL_MOVING_VOXELS = 1 << 24
#: Most voxels across the fixed content at the finest level (bounds the cost of the network).
MAX_ACROSS = 128
#: Fewest voxels across the fixed content at the coarse level (see ``DISA.coarse_spacing``).
COARSE_ACROSS = 48
#: Radius (voxels of the fixed level) of the variance weight (see the module notes).
DEFAULT_WEIGHT_RADIUS = 24
#: How the moving descriptors are sampled at the fixed points (see the module notes).
SAMPLINGS = ("jittered", "cubic", "linear")
DEFAULT_SAMPLING = "jittered"
#: Seed of the fixed points' sub-cell offsets (``sampling="jittered"``): the same on every machine.
JITTER_SEED = 20231008
#: Fixed descriptors this close (input voxels) to a face of the fixed image carry no weight.
DEFAULT_BORDER = 8
#: Most fixed points a level scores (``PreparedDISA.sampled``; see ``DISA``).
DEFAULT_MAX_POINTS = 16384


def inside_faces(shape, size, stride: int, border: int, device=None) -> torch.Tensor:
    """(1, Z, Y, X) 1 on the descriptors of grid ``size`` (stride ``stride`` over an input of
    ``shape`` voxels) that lie at least ``border`` input voxels inside every face of the input,
    the border capped at an eighth of the axis so that a small volume keeps 3/4 of its extent."""
    out = torch.ones(1, *[int(s) for s in size], device=device)
    for axis, (n, m) in enumerate(zip(shape, size)):
        pos = torch.arange(int(m), device=device) * stride
        b = min(int(border), int(n) // 8)
        keep = ((pos >= b) & (pos <= int(n) - 1 - b)).to(out.dtype)
        view = [1, 1, 1, 1]
        view[axis + 1] = int(m)
        out = out * keep.view(view)
    return out


def jittered(points: torch.Tensor) -> torch.Tensor:
    """(N, 3) float positions: integer descriptor indices ``points`` moved by seeded offsets drawn
    uniformly within their own cell (+-0.5 descriptor spacing per axis)."""
    g = torch.Generator().manual_seed(JITTER_SEED)
    offsets = torch.rand(points.shape, generator=g, dtype=torch.float64) - 0.5
    return points.to(torch.float64) + offsets.to(points.device)


def thinned(indices: torch.Tensor, max_points: int) -> Optional[torch.Tensor]:
    """(N,) bool: a regular sub-lattice of (N, 3) integer grid ``indices`` keeping about 1/k of
    them, k = ceil(N / ``max_points``), or None when N <= ``max_points``. Every s-th node along
    each axis (s^3 <= k), then on that lattice the planes (x + y + z) / s = 0 mod r, r =
    ceil(k / s^3): for k = 2 a checkerboard, for k = 3 every third node of each row along every
    axis. A lattice rather than a random subset: on the held-out 1 mm check, at most 8,192 points
    each, a seeded random subset gave a mean error of 0.637 mm, a lattice 0.591 mm."""
    n = len(indices)
    if n <= max_points:
        return None
    k = int(math.ceil(n / max_points))
    s = max(1, int(round(k ** (1.0 / 3.0))))
    while s ** 3 > k:
        s -= 1
    r = int(math.ceil(k / s ** 3))
    on_lattice = (indices % s == 0).all(dim=1)
    return on_lattice & ((indices // s).sum(dim=1) % r == 0)


def pool_to_grid(values: torch.Tensor, size, stride: int) -> torch.Tensor:
    """Mean of (C, Z, Y, X) ``values`` over the (stride+1)-wide footprint centred on each
    descriptor (input voxel stride*m), cropped or zero-extended to the descriptor grid ``size``."""
    if stride == 1:
        out = values
    else:
        half = stride // 2
        out = F.avg_pool3d(values[None], 2 * half + 1, stride=stride, padding=half,
                           count_include_pad=False)[0]
    pad = [max(0, int(s) - int(o)) for s, o in zip(size, out.shape[1:])]
    if any(pad):
        out = F.pad(out, (0, pad[2], 0, pad[1], 0, pad[0]))
    return out[:, :size[0], :size[1], :size[2]]


def grid_weights(values: torch.Tensor, size, stride: int, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """``pool_to_grid`` of (1, Z, Y, X) weights, zero where the descriptor grid's ``mask`` is."""
    w = pool_to_grid(values, size, stride)
    return w if mask is None else w * mask.to(w.dtype)


class PreparedDISA(Prepared):
    """Fixed descriptors and weights at the fixed grid points that carry weight; moving
    descriptors set to 0 outside the moving image/mask.

    Only points with weight > 0 are warped (``points``): the others add nothing to the sum, so
    dropping them changes no value and leaves a few hundred points on a typical ultrasound level.
    ``evaluate`` needs no validity mask: zero-padded trilinear sampling of descriptors that are
    already 0 outside the moving image gives out-of-view points the score 0, fading linearly
    over one moving-grid cell. With descriptor grids 4 voxels apart, a hard cut would switch
    whole planes of points on and off at once and make the objective jump as the pose moves
    (steps of several percent on Case 24), which misleads gradient-based optimizers.
    ``sampling`` (see the module notes): "jittered" moves the points within their cells, "cubic"
    has the objective sample the moving descriptors by cubic B-spline.
    """

    needs_valid = False

    def __init__(self, fixed: torch.Tensor, moving: torch.Tensor, weights: torch.Tensor,
                 fixed_grid: Image, moving_grid: Image, sampling: str = "linear", thin_search: bool = False):
        super().__init__(moving, None, fixed_grid, moving_grid)
        # what ``for_search`` thins, kept only when asked (a stride-2 level searched alone)
        self._unthinned = (fixed, weights) if thin_search else None
        self._search: Optional[PreparedDISA] = None
        zyx = torch.nonzero(weights[0] > 0)
        self.indices = zyx.flip(1)  # (N, 3) voxel indices (x, y, z)
        self.points = jittered(self.indices) if sampling == "jittered" else self.indices
        self.interpolation = "cubic" if sampling == "cubic" else "linear"
        # each point's share of the total weight; the fixed descriptor times it: the value is one contraction
        self.shares = weights[0][tuple(zyx.T)] / weights.sum()
        self.weighted_fixed = fixed[:, zyx[:, 0], zyx[:, 1], zyx[:, 2]] * self.shares.to(fixed.dtype)

    def evaluate(self, warped, valid):
        return torch.einsum("bcn,cn->b", warped.flatten(2), self.weighted_fixed.to(warped.dtype))

    def sampled(self, max_points: int) -> "PreparedDISA":
        """At most about ``max_points`` of the weighted points, a regular sub-lattice of them
        (``thinned``), their weights renormalized: the value stays a weighted mean over the
        fixed grid, estimated on fewer points (see ``DISA``'s ``max_points``)."""
        keep = thinned(self.indices, max_points)
        if keep is None:
            return self
        out = copy.copy(self)
        share = self.shares[keep].sum()
        out.indices, out.points, out.shares = self.indices[keep], self.points[keep], self.shares[keep] / share
        out.weighted_fixed = self.weighted_fixed[:, keep] / share.to(self.weighted_fixed.dtype)
        return out

    def for_search(self) -> Prepared:
        """Every second fixed descriptor along each axis (8x fewer points, weights pooled as a
        stride-4 level pools them), sampled plainly, against the same moving descriptors: what a
        coarse level gives the global search, without computing descriptors a second time. Used
        when the search has no coarser level (content up to 48 mm: see ``DISA.coarse_spacing``).
        Case 24 (``disa benchmark``, 20 starts, 2 threads): 0.9 s a registration instead of 1.9 s,
        the same landmark errors (median 3.54 mm)."""
        if self._unthinned is None:
            return self
        if self._search is None:
            fixed, weights = self._unthinned
            grid = self.fixed_grid
            size = [int(math.ceil(n / 2)) for n in grid.shape]
            mask = None if grid.mask is None else grid.mask[:, ::2, ::2, ::2]
            w = grid_weights(weights, size, 2, mask)
            thin = Image(torch.zeros(1, *size, device=fixed.device), grid.spacing * 2, grid.origin.copy(),
                         grid.direction.copy(), mask)
            self._search = PreparedDISA(fixed[:, ::2, ::2, ::2], self.moving, w, thin, self.moving_grid, "linear")
        return self._search


def _load_default(path: Path):
    return load_weights(path)[0]


class DISA(Similarity):
    """DISA-LC² similarity (Ronchetti et al., MICCAI 2023): dot products of CNN descriptors.

    ``weights``: a weights file (default: the shipped ``Resources/Models/disa_lc2.pt``,
    checked against its model card's SHA-256). ``model``: a network to use instead (e.g. a
    seeded random one in tests). ``stride``: fixed descriptor stride (4, 2, 1).
    ``moving_stride``: stride of the moving descriptors (None: same as ``stride``).
    ``quantized``: use 8-bit descriptors. ``weight_radius``: radius of the (regional) variance
    weight. ``cache``: a :class:`DescriptorCache` (default: a shared one). ``precision``: of the
    network (float32; bfloat16 or, on CUDA, float16 are faster but change results slightly).
    ``sampling``: jittered, cubic or linear (see the module notes). ``border``: input voxels
    next to the fixed image's faces whose descriptors carry no weight. ``max_points``: the most
    fixed points a level scores (a regular sub-lattice beyond it, ``PreparedDISA.sampled``; None:
    every weighted point). A 0.5 mm ultrasound level has tens of thousands (RESECT Case 24:
    44,447, each L-BFGS evaluation about 15 ms on 2 threads); on the held-out checks (1 thread,
    never Case 24) 16,384 changed no figure (1 mm pairs: median 0.575 against 0.570 mm, mean 0.574
    against 0.569, worst 1.07 both; 0.5 mm fans: 0.891 / 0.782 / 1.06 against 0.895 / 0.792 /
    1.09 mm), 8,192 a little (an earlier lattice; 1 mm: mean 0.591, worst 1.11 mm).
    """

    name = "disa"
    #: The moving level at the working spacing itself: the descriptors are computed at the fixed
    #: spacing anyway, so an oversampled level would only be resampled back (see ``moving_level``).
    oversampled_moving = False

    def __init__(self, weights: Union[str, Path, None] = None, model: Optional[torch.nn.Module] = None,
                 stride: int = DEFAULT_STRIDE, moving_stride: Optional[int] = None, quantized: bool = True,
                 weight_radius: int = DEFAULT_WEIGHT_RADIUS, cache: Optional[DescriptorCache] = None,
                 precision: str = "float32", sampling: str = DEFAULT_SAMPLING,
                 border: int = DEFAULT_BORDER, max_points: Optional[int] = DEFAULT_MAX_POINTS):
        if stride not in STRIDES or (moving_stride is not None and moving_stride not in STRIDES):
            raise InputError(f"DISA descriptor strides must be one of {STRIDES}")
        if model is None:
            model = _load_default(Path(weights) if weights is not None else DEFAULT_WEIGHTS)
        self.model = model.eval()
        self.stride, self.moving_stride = int(stride), moving_stride
        self.quantized = bool(quantized)
        self.weight_radius = int(weight_radius)
        if sampling not in SAMPLINGS:
            raise InputError(f"DISA sampling must be one of {', '.join(SAMPLINGS)}")
        self.sampling, self.border = sampling, int(border)
        if max_points is not None and (isinstance(max_points, bool) or not isinstance(max_points, (int, np.integer))
                                       or max_points < MIN_SAMPLED_POINTS):
            raise InputError(f"DISA max_points must be a whole number of at least {MIN_SAMPLED_POINTS}, or None")
        self.max_points = None if max_points is None else int(max_points)
        self.cache = DEFAULT_CACHE if cache is None else cache
        self.precision, self.dtype = precision, precision_dtype(precision)
        self._models: Dict[str, torch.nn.Module] = {}

    def _model_on(self, device: torch.device) -> torch.nn.Module:
        key = str(device)
        if key not in self._models:
            here = next(iter(list(self.model.parameters()) + list(self.model.buffers())), None)
            on_device = here is None or here.device == device  # a parameter-free module runs anywhere
            self._models[key] = self.model if on_device else _copy_to(self.model, device)
        return self._models[key]

    def descriptors(self, image: Image, stride: int, spacing=None) -> Image:
        """Descriptor image of ``image`` (cached), quantized and dequantized if ``quantized``."""
        model = self._model_on(image.data.device)
        desc = self.cache.get(image, model, spacing=spacing, stride=stride, dtype=self.dtype)
        if self.quantized:
            q, scale = quantize(desc.data)
            desc = desc.same_geometry(dequantize(q, scale), desc.mask)
        return desc

    def prepare(self, fixed: Image, moving: Image) -> PreparedDISA:
        m_stride = self.stride if self.moving_stride is None else self.moving_stride
        # only the fixed content carries weight: describe its box and the receptive field around it
        fixed = crop_to_mask(fixed, margin=HALO)
        f_desc = self.descriptors(fixed, self.stride)
        same_scale = np.allclose(moving.spacing, fixed.spacing, rtol=1e-3)
        m_desc = self.descriptors(moving, m_stride, spacing=None if same_scale else fixed.spacing)
        if f_desc.data.device != m_desc.data.device:
            m_desc = m_desc.to(f_desc.data.device)
        b = fixed.data[:1].float()[None]
        fm = torch.ones_like(b) if fixed.mask is None else fixed.mask[None].to(b.dtype)
        w = grid_weights(fixed_weights(b, fm, self.weight_radius)[0], f_desc.shape, self.stride, f_desc.mask)
        if self.border > 0:
            w = w * inside_faces(fixed.shape, f_desc.shape, self.stride, self.border, w.device)
        if float(w.sum()) <= 0:
            raise InputError("the fixed image has no local intensity variation inside its mask: "
                             "nothing for DISA to register")
        moving_grid = m_desc.same_geometry(torch.zeros(1, *m_desc.shape, device=m_desc.data.device),
                                           m_desc.mask)
        fixed_grid = f_desc.same_geometry(torch.zeros(1, *f_desc.shape, device=f_desc.data.device),
                                          f_desc.mask)
        moving_data = m_desc.data * m_desc.mask.to(m_desc.data.dtype)
        prepared = PreparedDISA(f_desc.data, moving_data, w, fixed_grid, moving_grid, self.sampling,
                                thin_search=self.stride == 2)
        return prepared if self.max_points is None else prepared.sampled(self.max_points)

    @classmethod
    def fine_spacing(cls, finest: float, extent: float) -> float:
        """The network's own scale (1 mm), coarser only for very large content; for small
        content (under ``SMALL_ACROSS`` mm) the fixed image's own spacing down to 0.5 mm.

        Chosen on the held-out ultrasound pairs rendered at 0.5 mm (``heldout_registration(...,
        scale="fine")``: fans of 30-55 mm, 6 pairs x 3 starts, 1 thread), shipped weights: one
        1 mm level median 1.88 mm, 50% of runs < 2 mm, worst 2.94 mm; a 0.5 mm fine level 0.90 mm,
        100%, worst 1.07 mm (with the MR stored at 1 mm: 1.89 against 0.74 mm), at about 5x the
        time (the network's pass over 8x the voxels). RESECT Case 24 (0.5 mm, 47 mm fan),
        evaluated afterwards: 4.48 -> 2.82 mm."""
        small = extent < SMALL_ACROSS * NETWORK_SPACING
        return max(finest, SMALL_SPACING if small else NETWORK_SPACING, extent / MAX_ACROSS)

    @classmethod
    def working_spacing(cls, fixed, moving, extent: float) -> float:
        """``fine_spacing`` at the fixed image's voxels: the moving image is described at the fixed
        level's spacing anyway, so a 0.5 mm ultrasound fan gets its 0.5 mm level against a 1 mm
        MR (on the fine check: 1.89 mm at 1 mm, 0.74 mm at 0.5 mm). Unless the moving image would
        then hold more than ``MAX_SMALL_MOVING_VOXELS``: then the network's scale, never finer
        than either image, as before the small-content rule."""
        fine = cls.fine_spacing(float(min(fixed.spacing)), extent)
        if fine < NETWORK_SPACING and moving.voxels_at(fine) > MAX_SMALL_MOVING_VOXELS:
            return max(super().working_spacing(fixed, moving, extent), NETWORK_SPACING)
        return fine

    @classmethod
    def coarse_spacing(cls, fine: float, extent: float) -> float:
        """Twice the fine spacing, finer for small content: the coarse level (stride 4, where
        the global search runs) keeps about ``COARSE_ACROSS`` voxels across the fixed content,
        and no level is coarser than twice the fine one. Held-out ultrasound pairs with the
        fixed fan cut to a 48 / 64 mm box (2 threads; 6 pairs x 3 starts): at 2 mm 78% / 83% of
        runs < 2 mm, worst 35 / 18 mm (6-8 coarse descriptors across); at 1 mm 100%, worst 2.0 /
        1.1 mm. The full pairs (70-96 mm fans) gave the same errors at 1 mm and 2 mm, at 3x the
        time at 1 mm. (Seen first on RESECT Case 24; chosen on these held-out pairs.)"""
        return float(min(2.0 * fine, max(fine, extent / COARSE_ACROSS)))

    def at_scale(self, factor: float) -> "DISA":
        """The measure of a coarser level (``factor`` < 1): descriptors follow each level's
        spacing by construction, at stride 4: a coarse level only has to find the basin (its
        global search scores hundreds of poses), and 8x fewer points make it 8x cheaper. For
        the same reason it samples plainly (trilinear, no jitter): a lattice bias of a voxel or
        two there is corrected by the finer levels. All its fixed points carry weight (no
        ``border``): 8 voxels of a 2 mm level are 16 mm, which would leave little of an
        ultrasound volume cropped tightly to its fan (Case 24's is)."""
        if factor >= 1.0 or (self.stride == 4 and self.moving_stride is None and self.border == 0
                             and self.sampling == "linear"):
            return self
        coarse = copy.copy(self)
        coarse.stride, coarse.moving_stride, coarse.border = 4, None, 0
        coarse.sampling = "linear"
        return coarse

    def __repr__(self):
        return (f"DISA(stride={self.stride}, moving_stride={self.moving_stride}, "
                f"quantized={self.quantized}, precision={self.precision!r}, "
                f"sampling={self.sampling!r}, border={self.border}, max_points={self.max_points})")


def _copy_to(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model).to(device).eval()
