"""Training sources packed as NumPy archives, for a training machine without SimpleITK.

``disa train --pack-sources DIR --source-dir ../shared/data`` writes DIR with the layout the
trainer reads (``templates/``, ``resect/us_only/``), each NIfTI file replaced by a ``.npz``
holding what the trainer takes from it: a template's voxels (float32), and an ultrasound
volume already resampled to the training grid (1 mm, anti-aliased) with its fan mask, before
normalization. NumPy alone reads them, and the volume pairs rendered from DIR are the same as
those rendered from the original folder. Why: the GPU machine this project is lent has PyTorch
but no SimpleITK, and the packed folder is under half the original's size. Case 24 is never
packed (it is never training data).

With ``--fine-us-share`` the ultrasound archives also hold the volume at 0.5 mm (``fine_spacing``)
for the fine self pairs, in float16: 19 MiB for the 14 training volumes instead of 41 in float32
(47 MiB in all), so that the folder, the repository and a checkpoint travel to the GPU machine
together (64 MiB). Fine pairs rendered from the original folder pass through the same float16
rounding (``fine_storage``), so both give the same pairs there too.
"""
from __future__ import annotations

import glob
import os
import shutil
from typing import Callable, Optional, Tuple

import numpy as np

#: Suffix of a packed volume (it replaces .nii / .nii.gz).
PACKED_SUFFIX = ".npz"
#: How the fine (0.5 mm) ultrasound is stored, packed or not (see the module notes).
FINE_DTYPE = np.float16


def packed_path(path: str) -> str:
    """Where the packed form of a source file lives: the same name with ``.npz`` for its suffix."""
    for suffix in (".nii.gz", ".nii"):
        if path.lower().endswith(suffix):
            return path[: -len(suffix)] + PACKED_SUFFIX
    return path


def read_packed_volume(path: str) -> np.ndarray:
    """The voxels (Z, Y, X) of a packed template volume."""
    with np.load(path) as z:
        return np.array(z["voxels"])


def read_packed_ultrasound(path: str, spacing: Optional[float] = None) -> Tuple[np.ndarray, np.ndarray]:
    """A packed ultrasound volume on the training grid (None) or its fine form at ``spacing`` mm,
    and its fan mask (not normalized)."""
    from ..errors import InputError

    with np.load(path) as z:
        if spacing is None:
            return np.array(z["voxels"], dtype=np.float32), np.array(z["fan"], dtype=bool)
        if "fine_voxels" not in z.files or abs(float(z["fine_spacing"]) - float(spacing)) > 1e-6:
            raise InputError(f"{os.path.basename(path)} holds no ultrasound at {spacing:g} mm: pack the sources "
                             "again with --fine-us-share, or train fine pairs from the source folder")
        return np.array(z["fine_voxels"], dtype=np.float32), np.array(z["fine_fan"], dtype=bool)


def fine_storage(voxels: np.ndarray) -> np.ndarray:
    """A fine ultrasound volume as its packed form holds it (float16, read back as float32)."""
    return voxels.astype(FINE_DTYPE).astype(np.float32)


def pack_sources(source_dir: str, out_dir: str, progress: Callable[[str], None] = print,
                 fine_spacing: Optional[float] = None) -> dict:
    """Pack the templates and ultrasound volumes of ``source_dir`` into ``out_dir``; each
    ultrasound volume also at ``fine_spacing`` mm when given."""
    from ..errors import InputError
    from ..spatial.image import load_image
    from .synth import SPACING, ultrasound_at_spacings, ultrasound_files

    tdir = os.path.join(source_dir, "templates")
    if not os.path.isdir(tdir):
        raise InputError(f"{source_dir} has no templates/ folder: give the training data folder "
                         "(e.g. ../shared/data) as --source-dir")
    os.makedirs(os.path.join(out_dir, "templates"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "resect", "us_only"), exist_ok=True)
    written = []
    for src in sorted(glob.glob(os.path.join(tdir, "*"))):
        dst = os.path.join(out_dir, "templates", os.path.basename(src))
        if src.lower().endswith((".nii", ".nii.gz")):
            # the engine's reader: a missing, unreadable or non-finite file is a one-line error
            _save(packed_path(dst), voxels=load_image(src, "template").data[0].numpy())
            dst = packed_path(dst)
        else:  # already NumPy (the voxelmorph template)
            shutil.copyfile(src, dst)
        written.append(dst)
    for src in ultrasound_files(source_dir):
        # one read of the file for both grids
        grids = ultrasound_at_spacings(src, (SPACING,) if fine_spacing is None else (SPACING, fine_spacing))
        voxels, fan = grids[0]
        dst = packed_path(os.path.join(out_dir, "resect", "us_only", os.path.basename(src)))
        fine = {}
        if fine_spacing is not None:
            fine_voxels, fine_fan = grids[1]
            fine = {"fine_voxels": fine_voxels.astype(FINE_DTYPE), "fine_fan": fine_fan.astype(bool),
                    "fine_spacing": np.float64(fine_spacing)}
        _save(dst, voxels=voxels.astype(np.float32), fan=fan.astype(bool), **fine)
        written.append(dst)
        progress(f"packed {os.path.basename(src)} {tuple(voxels.shape)}")
    size = sum(os.path.getsize(p) for p in written)
    return {"files": len(written), "bytes": size, "out_dir": out_dir}


def _save(path: str, **arrays) -> None:
    """Write an archive whole or not at all (a cut-off run leaves no truncated file)."""
    tmp = path + ".part.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


__all__ = ["pack_sources", "packed_path", "read_packed_volume", "read_packed_ultrasound", "fine_storage",
           "PACKED_SUFFIX"]
