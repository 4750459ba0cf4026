"""How much memory a registration needs, checked before any work starts.

A run that does not fit must stop at once with a message that says how much it needs, not
grow for minutes and die. ``estimate_bytes`` adds up the peaks from the image sizes and the
working spacings (constants measured on this engine, rounded up); ``available_bytes`` reads
the memory the system can still give (``MemAvailable``, cgroup limits, ``ulimit -v``);
``DISA_MEMORY_LIMIT`` (e.g. ``8G``, ``500M``) caps it for a run.
"""
from __future__ import annotations

import os
import re
from typing import Optional, Sequence, Tuple

from ..errors import InputError
from ..spatial.image import SLAB_VOXELS, VolumeInfo as Volume

GB = float(1 << 30)
#: Environment variable that caps the memory a run may use.
LIMIT_VARIABLE = "DISA_MEMORY_LIMIT"

#: Bytes per voxel of a prepared (normalized, masked) image while it is made, and kept after.
PREPARE_BYTES, KEPT_BYTES = 13, 5
#: Bytes per fixed-level voxel and per moving-level voxel while a level is prepared and poses
#: are scored (features, sampling grids, warped features and gradients for a batch of poses),
#: measured on Case 24 at 1 and 0.5 mm (peak RSS) and rounded up; DISA's moving side is its
#: network's stride-2 pass over a whole 144x181x177 volume (+975 MB, 212 bytes per voxel).
LEVEL_BYTES = {"lc2": (2500, 60), "mind": (1300, 150), "mi": (2400, 60), "ncc": (400, 40), "mse": (400, 40),
               "lncc": (700, 50), "ngf": (300, 50), "disa": (250, 230)}
#: Bytes per source voxel of a slab while a large image is reduced (blurred copies, grids).
REDUCE_BYTES = 32
#: A registration's small tensors and the kernels' working space.
BASE_BYTES = 100 * (1 << 20)


def estimate_bytes(fixed: Volume, moving: Volume, levels: Sequence[Tuple[int, int]],
                   reduced: Sequence[Optional[float]], metrics: Sequence[str], loading: bool) -> int:
    """Peak memory (bytes) of a registration beyond the inputs already in memory.

    ``levels``: (fixed, moving) voxels of each level's grids. ``reduced``: the spacing each
    image (fixed, moving) is first reduced to, or None. ``metrics``: the names of the measures
    (several for a weighted sum). ``loading``: the inputs are still to be read from files.
    """
    total = BASE_BYTES
    if loading:  # the reader's copy of the larger image, then both as float32
        total += 4 * (fixed.voxels + moving.voxels) + max(v.voxels * v.bytes_per_voxel for v in (fixed, moving))
    kept = [v.voxels if r is None else v.voxels_at(r) for v, r in zip((fixed, moving), reduced)]
    per_fixed = sum(LEVEL_BYTES.get(name, max(LEVEL_BYTES.values()))[0] for name in metrics)
    per_moving = sum(LEVEL_BYTES.get(name, max(LEVEL_BYTES.values()))[1] for name in metrics)
    level = max(per_fixed * f + per_moving * m for f, m in levels)
    reducing = max([REDUCE_BYTES * min(v.voxels, SLAB_VOXELS) for v, r in zip((fixed, moving), reduced)
                    if r is not None], default=0)
    return int(total + KEPT_BYTES * sum(kept) + max(PREPARE_BYTES * max(kept), level, reducing))


def parse_bytes(text: str) -> int:
    """``"8G"``, ``"512M"``, ``"1.5GB"``, ``"1000000"`` -> bytes; InputError otherwise."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)i?b?\s*", str(text).lower())
    if not match:
        raise InputError(f"{LIMIT_VARIABLE} must be a size such as 8G or 500M, got {text!r}")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[match.group(2)]
    return int(float(match.group(1)) * scale)


def _read_int(path: str) -> Optional[int]:
    try:
        with open(path) as fh:
            text = fh.read().strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def _kib_field(path: str, field: str) -> Optional[int]:
    """Bytes of a ``Field:  N kB`` line of /proc/meminfo or /proc/self/status."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def available_bytes() -> Optional[int]:
    """Memory this process can still allocate, or None where the system does not say."""
    candidates = []
    if os.environ.get(LIMIT_VARIABLE):
        rss = _kib_field("/proc/self/status", "VmRSS") or 0
        candidates.append(parse_bytes(os.environ[LIMIT_VARIABLE]) - rss)
    avail = _kib_field("/proc/meminfo", "MemAvailable")
    if avail is None and hasattr(os, "sysconf"):
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            avail = None
    if avail is not None:
        candidates.append(avail)
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < (1 << 60):
            candidates.append(limit - usage)
    try:
        import resource  # POSIX only
    except ImportError:
        resource = None
    if resource is not None:
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            candidates.append(soft - (_kib_field("/proc/self/status", "VmSize") or 0))
    return max(0, min(candidates)) if candidates else None


def check_memory(needed: int, what: str = "this registration") -> None:
    """InputError when ``needed`` bytes exceed what is available (nothing said if unknown)."""
    available = available_bytes()
    if available is not None and needed > available:
        raise InputError(f"{what} needs about {needed / GB:.1f} GB of memory, {available / GB:.1f} GB available: "
                         "use coarser --spacings, crop the volumes or free memory")
