"""What a registration returns: the fixed -> moving matrix and how it was found."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, List, Optional

import numpy as np

from .defaults import DENSE_TRANSFORMS  # noqa: F401  (models whose result holds a field)

if TYPE_CHECKING:
    from ..spatial import Image
    from ..transforms.probe_pressure import Compression


@dataclass
class LevelReport:
    spacing: float
    evaluations: int
    similarity: float
    seconds: float
    message: str


@dataclass
class RegistrationResult:
    """Outcome of one registration. ``matrix`` maps fixed LPS points to moving LPS points.

    With the probe-pressure model (``transform == "pressure"``), ``matrix`` is the rigid part and
    ``compression`` the fixed-space compression applied before it: a fixed point ``x`` maps to
    ``matrix @ compression.apply(x)`` (:meth:`transform_points`), and the output files hold both.
    A dense result (``transform`` in ``DENSE_TRANSFORMS``) holds ``field``, the fixed-space
    displacement (3 channels x, y, z, LPS mm, on a grid over the fixed image) applied before the
    linear ``matrix``: ``x -> matrix @ (x + field(x))``, as an ITK composite transform applies a
    displacement field added after the linear part.
    """

    matrix: np.ndarray
    params: np.ndarray
    transform: str
    metric: str
    center: np.ndarray
    initial_similarity: float
    final_similarity: float
    seconds: float
    device: str
    levels: List[LevelReport] = field(default_factory=list)
    #: Precision of the descriptors (float32 unless reduced precision was asked for).
    precision: str = "float32"
    seed: int = 0
    #: CPU threads the run used (a result is reproducible for one thread count).
    threads: int = 1
    #: Objective evaluations of the whole run: global-search poses and every local step.
    evaluations: int = 0

    #: The probe compression of a probe-pressure result (None for linear ones).
    compression: Optional["Compression"] = None
    #: The dense displacement field of a deformable result (None for linear ones).
    field: Optional["Image"] = None
    #: Deformation statistics of a dense result (Jacobian determinant, iterations, seconds).
    deformation: Optional[dict] = None

    def displacement_field(self) -> Optional["Image"]:
        """The fixed-space displacement applied before ``matrix`` as a 3-channel Image (LPS mm),
        the dense field or the probe compression sampled on its grid; None for linear results."""
        if self.field is not None:
            return self.field
        return None if self.compression is None else self.compression.field()

    def displacement(self, points):
        """Fixed-space displacement (..., 3), mm, of LPS ``points`` (a torch tensor (..., 3)) applied
        before ``matrix``: zero for linear results (what ``resample_image(displacement=...)`` takes)."""
        import torch

        if self.compression is not None:
            return self.compression.displacement(points)
        if self.field is None:
            return torch.zeros_like(points)
        from ..spatial.image import sample_field

        flat = points.detach().reshape(-1, 3).cpu().numpy()
        return torch.as_tensor(sample_field(self.field, flat), dtype=points.dtype).reshape(points.shape)

    @property
    def linear(self) -> bool:
        return self.field is None and self.compression is None

    def save_transform(self, path) -> None:
        """Write an ITK transform file (.h5, .tfm) usable to resample the moving image: the
        transform of :meth:`sitk_transform`."""
        from ..transforms.itk_io import write_sitk_transform

        write_sitk_transform(path, self.sitk_transform())

    def sitk_transform(self):
        """The result as a SimpleITK transform (what :meth:`save_transform` writes): the linear
        part (Euler3D for a rigid result, else affine), or a composite of it and the displacement
        field, which ITK applies first."""
        from ..transforms.itk_io import composite_to_sitk, matrix_to_sitk

        field = self.displacement_field()
        if field is not None:
            return composite_to_sitk(self.matrix, self.center, field)
        return matrix_to_sitk(self.matrix, center=self.center, kind="rigid" if self.transform == "rigid" else "affine")

    def transform_points(self, points) -> np.ndarray:
        """(N, 3) fixed LPS points -> moving LPS points (the displacement first, if any)."""
        from ..spatial.image import sample_field

        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        if self.compression is not None:
            pts = self.compression.apply(pts)
        elif self.field is not None:
            pts = pts + sample_field(self.field, pts)
        return pts @ self.matrix[:3, :3].T + self.matrix[:3, 3]

    def as_dict(self) -> dict:
        """The result as JSON-ready values (``disa register --json``)."""
        data = {"matrix_lps_fixed_to_moving": self.matrix.tolist(), "params": self.params.tolist(),
                "transform": self.transform, "metric": self.metric, "center": self.center.tolist(),
                "initial_similarity": self.initial_similarity, "final_similarity": self.final_similarity,
                "seconds": self.seconds, "device": self.device, "precision": self.precision,
                "seed": self.seed, "threads": self.threads, "evaluations": self.evaluations,
                "levels": [vars(level) for level in self.levels]}
        if self.compression is not None:
            data["probe_pressure"] = self.compression.as_dict()
        if self.field is not None:
            data["displacement_field"] = {"size_xyz": list(self.field.size), "spacing_mm": self.field.spacing.tolist(),
                                          "origin_lps": self.field.origin.tolist(),
                                          "direction": self.field.direction.ravel().tolist()}
        if self.deformation is not None:
            data["deformation"] = self.deformation
        return data

    def summary(self) -> str:
        pressure = "" if self.compression is None else (
            f" (probe compression {self.compression.amplitude:.1f} mm, decay {self.compression.decay:.0f} mm)")
        return (f"{self.metric} {self.transform}{pressure}: similarity {self.initial_similarity:.4f} -> "
                f"{self.final_similarity:.4f} in {self.seconds:.1f} s on {self.device}")
