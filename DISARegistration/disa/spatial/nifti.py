"""What ITK's NIfTI reader hides: non-finite voxels and truncated voxel data.

ITK reads NaN and Inf voxels of a NIfTI file as 0 and a file cut short as zeros, so the checks
that hold for NRRD and MHA would silently pass a NIfTI with holes in it. This module reads the
header and streams the raw voxel data (NIfTI-1 and NIfTI-2, .nii and .nii.gz) to count them.
"""
from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from typing import Optional

import numpy as np

#: NIfTI datatype codes of the floating-point types that can hold NaN or Inf.
FLOAT_TYPES = {16: "f4", 64: "f8"}
#: Bytes read at a time (the check never holds the whole volume).
CHUNK_BYTES = 1 << 24


@dataclass(frozen=True)
class NiftiLayout:
    byte_order: str  # "<" or ">"
    datatype: int
    bitpix: int
    shape: tuple
    vox_offset: int

    @property
    def n_bytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.bitpix // 8


def is_nifti(path: str) -> bool:
    return path.lower().endswith((".nii", ".nii.gz"))


def _open(path: str):
    return gzip.open(path, "rb") if path.lower().endswith(".gz") else open(path, "rb")


def read_layout(path: str) -> Optional[NiftiLayout]:
    """The voxel layout from a single-file NIfTI header, or None if the header is not one."""
    with _open(path) as fh:
        head = fh.read(540)
    if len(head) < 348:
        return None
    for order in "<>":
        size = struct.unpack(order + "i", head[:4])[0]
        if size == 348 and head[344:347] == b"n+1":
            dim = struct.unpack(order + "8h", head[40:56])
            datatype, bitpix = struct.unpack(order + "2h", head[70:74])
            offset = int(struct.unpack(order + "f", head[108:112])[0])
            break
        if size == 540 and len(head) >= 540 and head[4:7] == b"n+2":
            datatype, bitpix = struct.unpack(order + "2h", head[12:16])
            dim = struct.unpack(order + "8q", head[16:80])
            offset = struct.unpack(order + "q", head[168:176])[0]
            break
    else:
        return None
    n = int(dim[0])
    if not 1 <= n <= 7 or any(d < 1 for d in dim[1:n + 1]):
        return None
    return NiftiLayout(order, int(datatype), int(bitpix), tuple(int(d) for d in dim[1:n + 1]), int(offset))


def scan_voxels(path: str, layout: NiftiLayout):
    """(non-finite voxels, bytes of voxel data present) of a NIfTI file, streamed."""
    dtype = np.dtype(layout.byte_order + FLOAT_TYPES[layout.datatype]) if layout.datatype in FLOAT_TYPES else None
    item = dtype.itemsize if dtype is not None else 1
    chunk = CHUNK_BYTES - CHUNK_BYTES % item
    bad = present = 0
    with _open(path) as fh:
        fh.seek(layout.vox_offset)
        remaining = layout.n_bytes
        while remaining > 0:
            block = fh.read(min(chunk, remaining))
            if not block:
                break
            present += len(block)
            remaining -= len(block)
            if dtype is not None:
                values = np.frombuffer(block[:len(block) - len(block) % item], dtype=dtype)
                bad += int(values.size - np.count_nonzero(np.isfinite(values)))
    return bad, present
