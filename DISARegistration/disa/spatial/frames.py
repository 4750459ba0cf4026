"""RAS <-> LPS: the one module that converts between Slicer's and the engine's world coordinates.

The engine, ITK and SimpleITK use LPS (x to the patient's left, y posterior, z superior); 3D
Slicer stores node geometry, transforms and markups in RAS (x right, y anterior). The two differ
by negating x and y, ``diag(-1, -1, 1)``, which is its own inverse, so each pair of functions
below does the same arithmetic and the names only say which way the caller is going.

What is converted, and how:
- points and vectors (positions, displacements): negate x and y;
- a map between two world frames (a transform matrix, 4x4): conjugate, ``F @ m @ F``;
- a matrix whose *output* is world coordinates but whose input is not (IJK -> RAS, a 3x3
  direction): flip the output rows only, ``F @ m``.

Every other module calls these; none negates coordinates on its own.
"""
from __future__ import annotations

import numpy as np

__all__ = ["ras_to_lps_points", "lps_to_ras_points", "ras_to_lps_matrix", "lps_to_ras_matrix",
           "ras_to_lps_output", "lps_to_ras_output"]

#: The sign of each axis under the flip (elementwise products: exact, and NaN stays where it was).
_SIGNS = np.array([-1.0, -1.0, 1.0])
_SIGNS4 = np.array([-1.0, -1.0, 1.0, 1.0])


def _flip_points(points) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    if p.shape[-1:] != (3,):
        raise ValueError(f"points must have 3 coordinates in their last axis, got shape {p.shape}")
    return p * _SIGNS


def _flip_rows(m: np.ndarray) -> np.ndarray:
    if m.shape not in ((3, 3), (4, 4)):
        raise ValueError(f"expected a 3x3 or 4x4 matrix, got shape {m.shape}")
    return m * _SIGNS4[:len(m), None]


def ras_to_lps_points(points) -> np.ndarray:
    """(..., 3) RAS points or vectors -> LPS (a new float64 array)."""
    return _flip_points(points)


def lps_to_ras_points(points) -> np.ndarray:
    """(..., 3) LPS points or vectors -> RAS (a new float64 array)."""
    return _flip_points(points)


def ras_to_lps_matrix(m) -> np.ndarray:
    """A 4x4 map between RAS frames -> the same map between LPS frames (its direction unchanged)."""
    a = np.asarray(m, dtype=np.float64)
    if a.shape != (4, 4):
        raise ValueError(f"expected a 4x4 matrix, got shape {a.shape}")
    return a * _SIGNS4[:, None] * _SIGNS4[None, :]  # F @ a @ F


def lps_to_ras_matrix(m) -> np.ndarray:
    """A 4x4 map between LPS frames -> the same map between RAS frames (its direction unchanged)."""
    return ras_to_lps_matrix(m)


def ras_to_lps_output(m) -> np.ndarray:
    """A 3x3 or 4x4 matrix giving RAS coordinates (IJK -> RAS, a RAS direction) -> giving LPS;
    its input side (voxel indices) is unchanged."""
    return _flip_rows(np.asarray(m, dtype=np.float64))


def lps_to_ras_output(m) -> np.ndarray:
    """A 3x3 or 4x4 matrix giving LPS coordinates (index -> LPS, an LPS direction) -> giving RAS."""
    return _flip_rows(np.asarray(m, dtype=np.float64))
