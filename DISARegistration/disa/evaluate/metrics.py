"""Registration accuracy: landmark errors (TRE) and their statistics, Dice overlap and HD95.

Transforms map fixed-space LPS points to moving-space LPS points, so the landmark error of a
pair is ||T(p_fixed) - p_moving|| in millimetres.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, Optional, Sequence, Union

import numpy as np
from scipy import ndimage

from ..errors import InputError
from .landmarks import Landmarks

PointsLike = Union[Landmarks, np.ndarray, Sequence[Sequence[float]]]
TransformLike = Union[None, np.ndarray, Callable[[np.ndarray], np.ndarray]]


def _as_points(points: PointsLike, what: str = "points") -> np.ndarray:
    arr = points.points if isinstance(points, Landmarks) else np.asarray(points, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise InputError(f"{what} must be an (N, 3) array, got shape {arr.shape}")
    return arr.astype(np.float64, copy=False)


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def transform_points(transform: TransformLike, points: PointsLike) -> np.ndarray:
    """Map (N, 3) fixed-space LPS points through ``transform`` into moving space.

    ``transform`` is a 4x4 homogeneous matrix (numpy or torch), a callable taking and returning
    an (N, 3) float64 array, or None for the identity.
    """
    pts = _as_points(points)
    if transform is None:
        return pts.copy()
    if callable(transform):
        out = _to_numpy(transform(pts.copy()))
        if out.shape != pts.shape:
            raise InputError(f"the transform returned shape {out.shape} for {pts.shape} points")
        return out
    matrix = _to_numpy(transform)
    if matrix.shape != (4, 4):
        raise InputError(f"a transform matrix must be 4x4, got shape {matrix.shape}")
    return pts @ matrix[:3, :3].T + matrix[:3, 3]


def registration_errors(transform: TransformLike, fixed: PointsLike, moving: PointsLike) -> np.ndarray:
    """Per-landmark error ||T(p_fixed) - p_moving|| in mm; pairs are matched by row order."""
    f = _as_points(fixed, "fixed landmarks")
    m = _as_points(moving, "moving landmarks")
    if len(f) != len(m):
        raise InputError(f"landmark counts differ: {len(f)} fixed vs {len(m)} moving; pairs are matched by order")
    if len(f) == 0:
        raise InputError("no landmark pairs to evaluate")
    return np.linalg.norm(transform_points(transform, f) - m, axis=1)


def error_statistics(errors: Iterable[float]) -> Dict[str, float]:
    """n, mean, std (population, ddof=0), p25, median, p75 and max of landmark errors in mm."""
    e = np.asarray(list(errors) if not isinstance(errors, np.ndarray) else errors, dtype=np.float64).ravel()
    if e.size == 0:
        raise InputError("no errors to summarise")
    if not np.all(np.isfinite(e)):
        raise InputError("landmark errors contain NaN or infinite values")
    p25, median, p75 = np.percentile(e, [25, 50, 75])
    return {"n": int(e.size), "mean": float(e.mean()), "std": float(e.std()), "p25": float(p25),
            "median": float(median), "p75": float(p75), "max": float(e.max())}


def format_statistics(stats: Dict[str, float]) -> str:
    """One line for logs and reports, e.g. ``n=15 mean 1.23 mm | sd 0.40 | 25% 0.90 | ...``."""
    return (f"n={stats['n']} mean {stats['mean']:.2f} mm | sd {stats['std']:.2f} | 25% {stats['p25']:.2f} | "
            f"median {stats['median']:.2f} | 75% {stats['p75']:.2f} | max {stats['max']:.2f}")


# segmentations --------------------------------------------------------------------------------
def _label_arrays(a, b):
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise InputError(f"label arrays differ in shape: {a.shape} vs {b.shape}")
    return a, b


def dice(a, b, labels: Optional[Iterable[int]] = None) -> Dict[int, float]:
    """Dice overlap 2|A∩B| / (|A| + |B|) per label of two integer label arrays of one shape.

    ``labels`` defaults to every non-zero label present in either array. A label absent from
    both arrays gives NaN (nothing to compare); absent from one only, 0.
    """
    a, b = _label_arrays(a, b)
    if labels is None:
        labels = sorted((set(np.unique(a).tolist()) | set(np.unique(b).tolist())) - {0})
    out: Dict[int, float] = {}
    for label in labels:
        ma, mb = a == label, b == label
        total = int(ma.sum()) + int(mb.sum())
        out[label] = float("nan") if total == 0 else 2.0 * int(np.logical_and(ma, mb).sum()) / total
    return out


def _surface(mask: np.ndarray) -> np.ndarray:
    # Voxels of the mask with a face neighbour outside it (the array border counts as outside).
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances(a, b, spacing: Sequence[float], label: Optional[int] = None) -> np.ndarray:
    """Distances (mm) from each surface voxel of A to B's surface, then from B's to A's, pooled.

    ``spacing`` is in SimpleITK order (x, y, z) while the arrays are indexed [z, y, x], so it is
    reversed before it reaches ``scipy.ndimage``. ``label`` None compares the non-zero voxels.
    Returns an empty array when either label is empty.
    """
    a, b = _label_arrays(a, b)
    spacing = np.asarray(spacing, dtype=np.float64).ravel()
    if spacing.size != a.ndim or np.any(spacing <= 0):
        raise InputError(f"spacing must hold {a.ndim} positive values (x, y, z order), got {spacing.tolist()}")
    sampling = spacing[::-1]
    ma = a != 0 if label is None else a == label
    mb = b != 0 if label is None else b == label
    if not ma.any() or not mb.any():
        return np.zeros(0)
    sa, sb = _surface(ma), _surface(mb)
    dist_to_b = ndimage.distance_transform_edt(~sb, sampling=sampling)
    dist_to_a = ndimage.distance_transform_edt(~sa, sampling=sampling)
    return np.concatenate([dist_to_b[sa], dist_to_a[sb]])


def hd95(a, b, spacing: Sequence[float], label: Optional[int] = None) -> float:
    """95th percentile of the symmetric surface distance in mm (the medpy ``hd95`` convention).

    Surfaces are the mask voxels with a face neighbour outside the mask; distances are between
    voxel centres, so the result carries up to about one voxel of discretisation error.
    ``spacing`` is (x, y, z) as SimpleITK gives it, for arrays indexed [z, y, x]. Returns NaN
    when ``label`` is absent from either array (there is no surface to measure).
    """
    d = surface_distances(a, b, spacing, label)
    return float("nan") if d.size == 0 else float(np.percentile(d, 95))
