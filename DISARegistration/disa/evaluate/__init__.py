"""Evaluation: landmark I/O (LPS mm), target registration error statistics, Dice and HD95 (per
label and over label maps warped by a transform)."""

from .landmarks import (  # noqa: F401
    Landmarks,
    read_landmarks,
    read_tag,
    read_fcsv,
    read_mrk_json,
    read_csv,
    write_fcsv,
    write_mrk_json,
    write_csv,
)
from .metrics import (  # noqa: F401
    transform_points,
    registration_errors,
    error_statistics,
    format_statistics,
    dice,
    surface_distances,
    hd95,
)
from .labels import format_label_statistics, label_statistics, warp_labels  # noqa: F401
