"""A case's evaluation: landmark error (TRE) before and after, Dice and HD95 of the label maps,
and the Jacobian statistics of a dense result.

"Before" is the pose the registration started from: the case's initial transform, else the
identity. The moving label map is resampled on the fixed label map's grid through the result
(nearest neighbour), as a clinician would overlay it.
"""
from __future__ import annotations

import math

import numpy as np

from .manifest import CaseSpec

#: Summary columns filled from an evaluation (absent values stay empty).
TRE_COLUMNS = ("tre_before_mean", "tre_before_median", "tre_before_max",
               "tre_after_mean", "tre_after_median", "tre_after_max")
LABEL_COLUMNS = ("dice_before", "dice", "hd95")
#: Dense results: the share of the field's voxels with det J <= 0 (folding), in percent.
JACOBIAN_COLUMNS = ("folding_percent",)


def _start_transform(spec: CaseSpec):
    """The 4x4 fixed -> moving matrix the registration started from."""
    from ..transforms.itk_io import read_itk_transform

    return np.eye(4) if spec.initial_transform is None else read_itk_transform(spec.initial_transform)


def landmark_evaluation(spec: CaseSpec, result) -> dict:
    """Per-landmark errors (mm) and their statistics before and after the registration."""
    from ..evaluate import error_statistics, read_landmarks, registration_errors

    fixed = read_landmarks(spec.fixed_landmarks)
    moving = read_landmarks(spec.moving_landmarks)
    before = registration_errors(_start_transform(spec), fixed, moving)
    after = registration_errors(result.transform_points, fixed, moving)
    return {"labels": list(fixed.labels), "errors_before": before.tolist(), "errors_after": after.tolist(),
            "before": error_statistics(before), "after": error_statistics(after)}


def _nan_to_none(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _overlap(fixed_labels, moving_labels, transform) -> dict:
    """Dice and HD95 per label of the fixed map and the moving map resampled through ``transform``."""
    import SimpleITK as sitk

    from ..evaluate import dice, hd95

    warped = sitk.Resample(moving_labels, fixed_labels, transform, sitk.sitkNearestNeighbor, 0,
                           moving_labels.GetPixelID())
    a = sitk.GetArrayViewFromImage(fixed_labels)
    b = sitk.GetArrayViewFromImage(warped)
    spacing = fixed_labels.GetSpacing()
    dices = dice(a, b)
    distances = {label: hd95(a, b, spacing, label) for label in dices}
    finite_dice = [v for v in dices.values() if math.isfinite(v)]
    finite_hd = [v for v in distances.values() if math.isfinite(v)]
    return {"dice": {str(k): _nan_to_none(v) for k, v in dices.items()},
            "hd95": {str(k): _nan_to_none(v) for k, v in distances.items()},
            "mean_dice": float(np.mean(finite_dice)) if finite_dice else None,
            "mean_hd95": float(np.mean(finite_hd)) if finite_hd else None}


def label_evaluation(spec: CaseSpec, result) -> dict:
    """Dice and HD95 (mm) per label, before (the start pose) and after the registration."""
    import SimpleITK as sitk

    from ..transforms.itk_io import matrix_to_sitk

    fixed = sitk.ReadImage(spec.fixed_labels)
    moving = sitk.ReadImage(spec.moving_labels)
    return {"before": _overlap(fixed, moving, matrix_to_sitk(_start_transform(spec))),
            "after": _overlap(fixed, moving, result.sitk_transform())}


def jacobian_evaluation(result) -> dict | None:
    """Jacobian determinant statistics of a dense result (None for linear ones). The deformable
    package is imported only here, so linear cohorts never need it."""
    if getattr(result, "field", None) is None:
        return None
    if result.deformation:
        return dict(result.deformation)
    try:
        from ..deformable import jacobian_statistics
    except ImportError:
        return {"note": "disa.deformable.jacobian_statistics is not available"}
    return dict(jacobian_statistics(result.field))


def evaluate_case(spec: CaseSpec, result) -> dict[str, object]:
    """Everything the case's files allow: ``landmarks``, ``labels``, ``jacobian`` (absent keys:
    nothing to evaluate)."""
    out: dict[str, object] = {}
    if spec.fixed_landmarks:
        out["landmarks"] = landmark_evaluation(spec, result)
    if spec.fixed_labels:
        out["labels"] = label_evaluation(spec, result)
    jacobian = jacobian_evaluation(result)
    if jacobian is not None:
        out["jacobian"] = jacobian
    return out


def summary_values(evaluation: dict[str, object]) -> dict[str, float | None]:
    """The summary table's evaluation columns of one case."""
    row: dict[str, float | None] = dict.fromkeys(TRE_COLUMNS + LABEL_COLUMNS + JACOBIAN_COLUMNS)
    landmarks = evaluation.get("landmarks")
    if landmarks:
        for when in ("before", "after"):
            for stat in ("mean", "median", "max"):
                row[f"tre_{when}_{stat}"] = landmarks[when][stat]
    labels = evaluation.get("labels")
    if labels:
        row["dice_before"] = labels["before"]["mean_dice"]
        row["dice"] = labels["after"]["mean_dice"]
        row["hd95"] = labels["after"]["mean_hd95"]
    jacobian = evaluation.get("jacobian")
    if jacobian:
        stats = jacobian.get("jacobian", jacobian)  # a dense result's deformation holds them under "jacobian"
        row["folding_percent"] = stats.get("percent_nonpositive") if isinstance(stats, dict) else None
    return row
