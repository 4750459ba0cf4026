"""What a registration returns: the fixed -> moving matrix and how it was found."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import numpy as np


@dataclass
class LevelReport:
    spacing: float
    evaluations: int
    similarity: float
    seconds: float
    message: str


@dataclass
class RegistrationResult:
    """Outcome of one registration. ``matrix`` maps fixed LPS points to moving LPS points."""

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

    def save_transform(self, path) -> None:
        """Write an ITK transform file (.h5, .tfm) usable to resample the moving image."""
        from ..transforms.itk_io import write_itk_transform

        kind = "rigid" if self.transform == "rigid" else "affine"
        write_itk_transform(path, self.matrix, center=self.center, kind=kind)

    def as_dict(self) -> dict:
        """The result as JSON-ready values (``disa register --json``)."""
        return {"matrix_lps_fixed_to_moving": self.matrix.tolist(), "params": self.params.tolist(),
                "transform": self.transform, "metric": self.metric, "center": self.center.tolist(),
                "initial_similarity": self.initial_similarity, "final_similarity": self.final_similarity,
                "seconds": self.seconds, "device": self.device, "precision": self.precision,
                "seed": self.seed, "threads": self.threads, "levels": [vars(level) for level in self.levels]}

    def summary(self) -> str:
        return (f"{self.metric} {self.transform}: similarity {self.initial_similarity:.4f} -> "
                f"{self.final_similarity:.4f} in {self.seconds:.1f} s on {self.device}")
