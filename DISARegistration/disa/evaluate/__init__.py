"""Evaluation: landmark I/O (LPS mm), target registration error statistics, Dice and HD95."""

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
