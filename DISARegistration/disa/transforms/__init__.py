"""Spatial transforms. Each maps fixed-space LPS points to moving-space LPS points.

Parametric models turn a batch of parameter vectors (B, n) into (B, 4, 4) matrices so that many
poses can be evaluated at once; ``itk_io`` converts matrices to and from ITK transform files.
"""

from .linear import LinearModel, Rigid, Affine, make_model, rotation_matrix  # noqa: F401
from .itk_io import (read_itk_transform, write_itk_transform, matrix_to_sitk,  # noqa: F401
                     itk_to_slicer_to_parent_ras, slicer_to_parent_ras_to_itk)
from ..spatial.frames import lps_to_ras_matrix, ras_to_lps_matrix  # noqa: F401  (the flips live there)
