"""Dense DISA descriptors of a volume, on a grid whose physical geometry is exact.

``compute_descriptors(image, model)`` normalizes the intensities (zero mean, unit standard
deviation over the image mask, or over all voxels), optionally resamples to a working spacing,
and runs :class:`~disa.features.network.DISANet` once. It returns a 16-channel
:class:`~disa.spatial.Image`:

- stride 4 (the network's own): descriptor m sits on input voxel 4m (see ``network.py``), so
  the grid has the input's origin and direction and 4x its spacing. An axis of n voxels gives
  ``ceil((n - 1) / 4) + 1`` descriptors: the input is extended at the far end by replicating its
  last slice so the grid reaches (or passes, by < 4 voxels) the last input voxel and no border
  voxel is lost. Descriptors past the last input voxel lie outside the returned mask.
- stride 2 and 1 (the paper's Table 2): one "a trous" pass of the same network
  (``DISANet.forward_strided``: the last one or two BlurPools keep the grid and later taps are
  dilated), equal in the interior to the 8 (64) runs on the input shifted by 2 (1, 2, 3) voxels
  along each axis, at about a fifth of their cost for stride 2.

Large volumes run in tiles whose halos cover the receptive field (24 input voxels each side,
tile starts on multiples of 4), so tiled output equals whole-volume output to float rounding.
Precision: float32 unless asked, on every device, so results do not depend on the machine
(bfloat16 chosen silently on CPUs that support it moved the DISA demo from 1.89 to 2.06 mm).
``dtype=torch.bfloat16`` runs a bfloat16 copy of the network on a CPU (about 1.5x faster with
AVX512-BF16 or AMX) or bfloat16 autocast on CUDA; ``torch.float16`` runs float16 autocast on
CUDA. Descriptors come back as float32.

8-bit storage (the paper quantizes its features): descriptor norms are <= 1, so every
component lies in [-1, 1] and one fixed symmetric scale fits all volumes: q = round(127 x) + 128
as uint8, x ~ (q - 128) / 127, error <= 0.5 / 127 per component; no per-volume range to store.
"""
from __future__ import annotations

import functools
import hashlib
import math
import threading
from collections import OrderedDict
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..spatial import Image, foreground_mask, resample_to_spacing
from .network import CHANNELS, HALF_RECEPTIVE_FIELD, STRIDE

#: Descriptor strides supported (input voxels between neighbouring descriptors).
STRIDES = (1, 2, 4)
#: Halo of a tile in input voxels: the receptive-field radius rounded up to the network stride.
HALO = int(math.ceil(HALF_RECEPTIVE_FIELD / STRIDE) * STRIDE)
#: On a CPU, volumes with more voxels than this run in tiles by default (memory of the full-size
#: layers). A 256^3 volume is padded to 257^3 (the last descriptor reaches the last voxel), hence
#: the margin: tiling it costs about 2x (H100: 50 ms tiled, 27.6 ms for the network in one piece).
AUTO_TILE_VOXELS = 260 ** 3
#: Peak bytes per input voxel of one untiled float32 pass (16 channels at full size, about four
#: tensors alive at once); on CUDA, a volume runs untiled when this fits half the free memory.
PASS_BYTES_PER_VOXEL = 16 * 4 * 4
#: Default tile edge (input voxels) when tiling is automatic.
AUTO_TILE = 192
#: Quantization: component value x is stored as round(QUANT_SCALE * x) + QUANT_OFFSET.
QUANT_SCALE = 127.0
QUANT_OFFSET = 128


# -------------------------------------------------------------------------------------------------
def normalized_input(image: Image) -> torch.Tensor:
    """(Z, Y, X) float32 intensities with zero mean / unit std over the mask, or, without one,
    over ``foreground_mask(image, "auto")`` (zero padding is not anatomy): the same
    normalization the training volumes get (``disa.train.synth.normalize``).

    Voxels outside the mask are set to 0, the mean, as the registration pipeline does.
    """
    data = image.data[0].float()
    fg = image.mask if image.mask is not None else foreground_mask(image, "auto")
    mask = None if fg is None else fg[0].to(data.device).bool()
    values = data[mask] if mask is not None else data.flatten()
    if values.numel() < 2:
        raise InputError("cannot compute DISA descriptors: the image mask is empty")
    mean, std = values.mean(), values.std()
    if not torch.isfinite(std) or float(std) <= 1e-12 * max(1.0, abs(float(mean))):
        raise InputError("cannot compute DISA descriptors: the image has constant intensity "
                         "(zero variance) over its foreground")
    out = (data - mean) / std
    if mask is not None:
        out = out * mask
    return out


def grid_size(n: int, stride: int) -> int:
    """Descriptors along an axis of ``n`` voxels: the grid reaches the last voxel."""
    return int(math.ceil((n - 1) / stride)) + 1


#: Descriptor precisions by name (``disa register --precision``).
PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def precision_dtype(precision: str) -> torch.dtype:
    """The torch dtype of a precision name; InputError for others."""
    try:
        return PRECISIONS[str(precision).lower()]
    except KeyError:
        raise InputError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}") from None


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", enabled=False)


@functools.lru_cache(maxsize=1)
def cpu_bfloat16_supported() -> bool:
    """oneDNN can run bfloat16 convolutions on this CPU: natively with AVX512-BF16 or AMX
    (about 2x faster than float32), emulated with plain AVX-512 (about 2x slower). Without
    AVX-512 it cannot run them at all."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def check_cpu_precision(dtype: Optional[torch.dtype]) -> None:
    """InputError where this CPU cannot compute descriptors at ``dtype``."""
    if dtype == torch.float16:
        raise InputError("float16 descriptors need a CUDA device; use float32 or bfloat16 on a CPU")
    if dtype == torch.bfloat16 and not cpu_bfloat16_supported():
        raise InputError("bfloat16 descriptors need a CPU with AVX-512 (oneDNN has no bfloat16 convolution "
                         "for this one); use float32")


def _cpu_network(model: torch.nn.Module, x: torch.Tensor, dtype: Optional[torch.dtype]):
    """The model and input to run: a bfloat16 copy on a CPU when ``dtype`` is bfloat16
    (descriptor error about 0.002 with the shipped weights, under the 8-bit storage step of
    0.008), else the float32 model as given. float16 needs CUDA."""
    if x.device.type != "cpu":
        return model, x
    check_cpu_precision(dtype)
    if dtype == torch.bfloat16:
        import copy

        return copy.deepcopy(model).to(torch.bfloat16), x.to(torch.bfloat16)
    return model, x


def _axis_tiles(length: int, tile: int, stride: int = STRIDE):
    """(input start, input stop, output start, output stop, local output offset) per tile."""
    out_len = int(math.ceil(length / stride))
    tiles = []
    for start in range(0, length, tile):
        a = max(start - HALO, 0)
        b = min(start + tile + HALO, length)
        k0, k1 = start // stride, min((start + tile) // stride, out_len)
        if k1 > k0:
            tiles.append((a, b, k0, k1, a // stride))
    return tiles


def fits_untiled(shape: Sequence[int], device: torch.device) -> bool:
    """Whether automatic tiling runs a (Z, Y, X) volume in one piece: on CUDA when one pass
    fits half the free GPU memory, elsewhere up to ``AUTO_TILE_VOXELS``."""
    voxels = int(np.prod([int(s) for s in shape]))
    if torch.device(device).type == "cuda":
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return voxels * PASS_BYTES_PER_VOXEL <= free // 2
    return voxels <= AUTO_TILE_VOXELS


def run_network(model: torch.nn.Module, x: torch.Tensor, tile: Union[int, Sequence[int], None] = None,
                dtype: Optional[torch.dtype] = None, stride: int = STRIDE) -> torch.Tensor:
    """``model`` on (Z, Y, X) ``x`` -> (16, ceil(Z/s), ceil(Y/s), ceil(X/s)) float32, no grad;
    output k on input voxel s*k (``stride`` s: 4, or 2 and 1 through ``model.forward_strided``).

    ``tile`` (input voxels, one int or (z, y, x), rounded up to a multiple of 4) bounds the
    size of the core of each tile; each tile carries a halo of ``HALO`` voxels, so the result
    does not depend on the tiling. None tiles automatically only for large volumes.
    """
    device = x.device
    shape = tuple(int(s) for s in x.shape)
    if tile is None:
        tile = max(shape) if fits_untiled(shape, device) else AUTO_TILE
    tiles = np.broadcast_to(np.asarray(tile, dtype=np.int64), (3,))
    tiles = [max(STRIDE, int(math.ceil(t / STRIDE)) * STRIDE) for t in tiles]
    out_shape = [int(math.ceil(s / stride)) for s in shape]
    net = model if stride == STRIDE else functools.partial(model.forward_strided, stride=stride)
    with torch.no_grad(), _autocast(device, dtype):
        if all(t >= s for t, s in zip(tiles, shape)):
            return net(x[None, None]).float()[0].contiguous()
        out = torch.empty(CHANNELS, *out_shape, dtype=torch.float32, device=device)
        for za, zb, zk0, zk1, zo in _axis_tiles(shape[0], tiles[0], stride):
            for ya, yb, yk0, yk1, yo in _axis_tiles(shape[1], tiles[1], stride):
                for xa, xb, xk0, xk1, xo in _axis_tiles(shape[2], tiles[2], stride):
                    y = net(x[None, None, za:zb, ya:yb, xa:xb]).float()[0]
                    out[:, zk0:zk1, yk0:yk1, xk0:xk1] = \
                        y[:, zk0 - zo:zk1 - zo, yk0 - yo:yk1 - yo, xk0 - xo:xk1 - xo]
        return out


def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def compute_descriptors(image: Image, model: torch.nn.Module, spacing=None, stride: int = STRIDE,
                        tile: Union[int, Sequence[int], None] = None, dtype: Optional[torch.dtype] = None,
                        device=None) -> Image:
    """16-channel DISA descriptors of ``image`` on an exact grid of ``stride`` x its spacing.

    ``spacing`` (mm, scalar or (x, y, z)): resample to this working spacing first (the
    network's scale is that of its training data; both images of a pair need the same one).
    ``stride``: 4, 2 or 1. ``tile``: tile edge in input voxels (None: automatic).
    ``dtype``: None or ``torch.float32`` computes in float32 everywhere; ``torch.bfloat16`` and
    (CUDA only) ``torch.float16`` are faster but change the result slightly. ``device``: where
    to run (default: the model's device). The returned mask marks descriptors whose centre lies
    inside the image (and its mask).
    """
    if stride not in STRIDES:
        raise InputError(f"DISA descriptor stride must be one of {STRIDES}, got {stride}")
    if spacing is not None:
        image = resample_to_spacing(image, spacing)
    device = torch.device(device) if device is not None else _model_device(model)
    if _model_device(model) != device:
        model = model.to(device)
    model.eval()
    if stride != STRIDE and not hasattr(model, "forward_strided"):
        raise InputError(f"this descriptor module computes stride {STRIDE} only (it has no forward_strided)")
    x = normalized_input(image.to(device))
    size = [grid_size(s, stride) for s in x.shape]
    # extend the far end (replicated) so the last descriptor reaches the last voxel
    pad = [stride * (m - 1) + 1 - s for m, s in zip(size, x.shape)]
    ext = F.pad(x[None, None], (0, pad[2], 0, pad[1], 0, pad[0]), mode="replicate")[0, 0] if any(pad) else x
    model, ext = _cpu_network(model, ext, dtype)
    out = run_network(model, ext, tile, dtype, stride)
    return Image(out, image.spacing * stride, image.origin.copy(), image.direction.copy(),
                 _grid_mask(image, size, stride, device))


def _grid_mask(image: Image, size, stride: int, device) -> torch.Tensor:
    """(1, z, y, x) bool: the descriptor centre lies inside the image and its mask."""
    n = image.shape
    inside = torch.ones(1, *size, dtype=torch.bool, device=device)
    src = None if image.mask is None else image.mask.to(device).bool()
    idx = []
    for axis, (m, s) in enumerate(zip(size, n)):
        pos = torch.arange(m, device=device) * stride
        shape = [1, 1, 1]
        shape[axis] = m
        inside = inside & (pos < s).view(1, *shape)
        idx.append(pos.clamp_max(s - 1))
    if src is not None:
        inside = inside & src[:, idx[0]][:, :, idx[1]][:, :, :, idx[2]]
    return inside


# -------------------------------------------------------------------------------------------------
def quantize(desc: torch.Tensor) -> Tuple[torch.Tensor, float]:
    """8-bit descriptors: (uint8 tensor, scale) with x ~ (q - 128) * scale, scale = 1/127.

    Valid for any vectors of norm <= 1 (components in [-1, 1]); larger values saturate.
    """
    q = torch.round(desc.float() * QUANT_SCALE).clamp(-QUANT_SCALE, QUANT_SCALE) + QUANT_OFFSET
    return q.to(torch.uint8), 1.0 / QUANT_SCALE


def dequantize(q: torch.Tensor, scale: float = 1.0 / QUANT_SCALE) -> torch.Tensor:
    """float32 descriptors from :func:`quantize`'s output."""
    return (q.float() - QUANT_OFFSET) * scale


# -------------------------------------------------------------------------------------------------
class DescriptorCache:
    """A small thread-safe LRU cache of descriptor images, so the CNN runs once per volume.

    The key is a hash of the voxel bytes and mask, the geometry, the model's weights and the
    parameters of :func:`compute_descriptors`: content, not tensor identity, because every
    registration builds new level tensors from the same volumes (the Slicer logic extracts fresh
    copies from the nodes on each run). Hashing costs a few ms per registration level; any edit
    to a volume changes the key.

    The network runs outside the lock, so a lookup of other descriptors (a similarity map) never
    waits behind a registration's network run; a second request for a key being computed waits
    for that computation instead of repeating it.
    """

    def __init__(self, max_items: int = 8):
        self.max_items = max_items
        self._items: "OrderedDict[tuple, Image]" = OrderedDict()
        self._pending: "dict[tuple, threading.Event]" = {}
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def key(self, image: Image, model, **params) -> tuple:
        h = hashlib.sha1()
        for t in (image.data, image.mask):
            if t is not None:
                h.update(repr((tuple(t.shape), str(t.dtype))).encode())
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
        for a in (image.spacing, image.origin, image.direction):
            h.update(np.ascontiguousarray(a, dtype=np.float64).tobytes())
        for name, value in model.state_dict().items():
            h.update(name.encode())
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
        spacing = params.get("spacing")
        params = dict(params, spacing=None if spacing is None else tuple(np.broadcast_to(
            np.asarray(spacing, dtype=np.float64), (3,)).tolist()), dtype=params.get("dtype") or torch.float32)
        return (h.hexdigest(), str(image.data.device), tuple(sorted((k, repr(v)) for k, v in params.items())))

    def get(self, image: Image, model, **params) -> Image:
        """Descriptors of ``image`` (computed on a miss); arguments as :func:`compute_descriptors`."""
        key = self.key(image, model, **params)
        while True:
            with self._lock:
                if key in self._items:
                    self.hits += 1
                    self._items.move_to_end(key)
                    return self._items[key]
                pending = self._pending.get(key)
                if pending is None:
                    pending = self._pending[key] = threading.Event()
                    self.misses += 1
                    break
            pending.wait()  # then look again: computed, or failed and ours to try
        try:
            result = compute_descriptors(image, model, **params)
            with self._lock:
                self._items[key] = result
                while len(self._items) > self.max_items:
                    self._items.popitem(last=False)
            return result
        finally:
            with self._lock:
                del self._pending[key]
            pending.set()

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


#: The cache the DISA similarity uses unless given another.
DEFAULT_CACHE = DescriptorCache()
