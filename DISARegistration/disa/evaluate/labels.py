"""Label-map overlap after a registration: Dice per label with its quartiles, and HD95."""
from __future__ import annotations

import os
from typing import Dict, Iterable, Optional

import numpy as np

from ..errors import InputError
from .metrics import dice, hd95


def warp_labels(moving_labels_path, fixed_path, transform) -> "tuple[np.ndarray, np.ndarray, np.ndarray]":
    """(fixed labels array, moving labels resampled on the fixed labels' grid through
    ``transform``, nearest neighbour, and the fixed spacing x, y, z). ``transform``: a 4x4 fixed -> moving LPS
    matrix, any SimpleITK transform (composites with displacement fields too) or None (identity)."""
    import SimpleITK as sitk

    from ..transforms.itk_io import matrix_to_sitk

    try:
        fixed = sitk.ReadImage(os.fspath(fixed_path))
        moving = sitk.ReadImage(os.fspath(moving_labels_path))
    except RuntimeError as exc:
        raise InputError(f"cannot read label maps '{fixed_path}' / '{moving_labels_path}': "
                         f"{str(exc).strip().splitlines()[-1]}") from exc
    for image, path in ((fixed, fixed_path), (moving, moving_labels_path)):
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(f"{path}: a label map must be a 3-D single-component image")
    tx = sitk.Transform() if transform is None else (
        transform if hasattr(transform, "TransformPoint") else matrix_to_sitk(transform))
    warped = sitk.Resample(moving, fixed, tx, sitk.sitkNearestNeighbor, 0.0, moving.GetPixelID())
    return (np.round(sitk.GetArrayFromImage(fixed)).astype(np.int64),
            np.round(sitk.GetArrayFromImage(warped)).astype(np.int64), np.array(fixed.GetSpacing()))


def label_statistics(fixed: np.ndarray, warped: np.ndarray, spacing, labels: Optional[Iterable[int]] = None) -> Dict:
    """Dice and HD95 (mm) per label of two label arrays on one grid (``spacing`` x, y, z), and
    over the labels: mean Dice, its 25th/50th/75th percentiles, mean HD95. Labels absent from
    both arrays are left out."""
    per_dice = dice(fixed, warped, labels)
    rows = {}
    for label, value in per_dice.items():
        if np.isfinite(value):
            rows[int(label)] = {"dice": value, "hd95": hd95(fixed, warped, spacing, label)}
    if not rows:
        raise InputError("the label maps share no non-zero label")
    d = np.array([r["dice"] for r in rows.values()])
    h = np.array([r["hd95"] for r in rows.values()])
    return {"labels": rows, "dice_mean": float(d.mean()), "dice_p25": float(np.percentile(d, 25)),
            "dice_p50": float(np.percentile(d, 50)), "dice_p75": float(np.percentile(d, 75)),
            "hd95_mean": float(np.nanmean(h)) if np.isfinite(h).any() else float("nan")}


def format_label_statistics(stats: Dict) -> str:
    return (f"Dice mean {stats['dice_mean']:.3f} (25/50/75th percentile {stats['dice_p25']:.3f} / "
            f"{stats['dice_p50']:.3f} / {stats['dice_p75']:.3f}) over {len(stats['labels'])} labels, "
            f"HD95 mean {stats['hd95_mean']:.2f} mm")
