"""What a registration returns: the fixed -> moving matrix and how it was found."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, List, Optional

import numpy as np

if TYPE_CHECKING:
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

    def save_transform(self, path) -> None:
        """Write an ITK transform file (.h5, .tfm) usable to resample the moving image; a
        probe-pressure result is a composite of the rigid part and a displacement field."""
        from ..transforms.itk_io import write_itk_transform, write_sitk_transform

        if self.compression is not None:
            write_sitk_transform(path, self.sitk_transform())
            return
        kind = "rigid" if self.transform == "rigid" else "affine"
        write_itk_transform(path, self.matrix, center=self.center, kind=kind)

    def sitk_transform(self):
        """The result as a SimpleITK transform (what :meth:`save_transform` writes)."""
        from ..transforms.itk_io import matrix_to_sitk
        from ..transforms.probe_pressure import pressure_to_sitk

        if self.compression is not None:
            return pressure_to_sitk(self.matrix, self.center, self.compression)
        return matrix_to_sitk(self.matrix, center=self.center, kind="rigid" if self.transform == "rigid" else "affine")

    def transform_points(self, points) -> np.ndarray:
        """(N, 3) fixed LPS points -> moving LPS points (the compression first, if any)."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        if self.compression is not None:
            pts = self.compression.apply(pts)
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
        return data

    def summary(self) -> str:
        pressure = "" if self.compression is None else (
            f" (probe compression {self.compression.amplitude:.1f} mm, decay {self.compression.decay:.0f} mm)")
        return (f"{self.metric} {self.transform}{pressure}: similarity {self.initial_similarity:.4f} -> "
                f"{self.final_similarity:.4f} in {self.seconds:.1f} s on {self.device}")
