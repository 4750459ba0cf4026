"""The bundled sample case (RESECT Case 24, CC BY 4.0) and known perturbations of it."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .spatial import Image
from .transforms.linear import Rigid

#: Where the module's resources live, in the source tree and inside a Slicer extension alike.
RESOURCES = Path(__file__).resolve().parent.parent / "Resources"
CASE24 = RESOURCES / "SampleData" / "Case24"


@dataclass
class SampleCase:
    fixed: Path
    moving: Path
    landmarks: Path
    fixed_landmarks: str  # read_landmarks specs
    moving_landmarks: str


def case24(folder=None) -> SampleCase:
    """Paths of RESECT Case 24: ultrasound (fixed), T1 MR (moving) and the landmark tag file.

    In the tag file volume 1 is the MR and volume 2 the ultrasound.
    """
    folder = Path(os.environ.get("DISA_SAMPLE_DATA", CASE24) if folder is None else folder)
    tag = folder / "Case24-MRI-beforeUS.tag"
    case = SampleCase(folder / "Case24-US.nii.gz", folder / "Case24-T1.nii.gz", tag, f"{tag}:2", f"{tag}:1")
    for p in (case.fixed, case.moving, case.landmarks):
        if not p.exists():
            raise InputError(f"sample data file missing: {p}")
    return case


def rigid_matrix(rotvec_deg, translation_mm, center) -> np.ndarray:
    """4x4 of x -> R (x - c) + c + t, R from a rotation vector in degrees (the Rigid model)."""
    params = np.concatenate([np.asarray(rotvec_deg, dtype=np.float64), np.asarray(translation_mm, dtype=np.float64)])
    return Rigid(center).matrix(params)[0].numpy()


def random_rigid(rng: np.random.Generator, max_deg: float, max_mm: float, center) -> np.ndarray:
    """A rigid perturbation with each Euler-like rotation-vector component and translation
    component drawn uniformly from [-max, max]."""
    return rigid_matrix(rng.uniform(-max_deg, max_deg, 3), rng.uniform(-max_mm, max_mm, 3), center)


def move_image(image: Image, matrix: np.ndarray) -> Image:
    """The same voxels placed elsewhere: physical points y = matrix @ x (a header-only change).

    If ``matrix`` is rigid the result is exact (no resampling). For an image moved this way,
    the true fixed -> moving transform becomes ``matrix @ previous``.
    """
    r = matrix[:3, :3]
    if np.abs(r.T @ r - np.eye(3)).max() > 1e-6:
        raise InputError("move_image needs a rigid matrix")
    origin = r @ image.origin + matrix[:3, 3]
    return Image(image.data, image.spacing, origin, r @ image.direction, image.mask)
