"""DISA registration engine: images in physical space, descriptors, similarities, transforms,
optimizers, registration pipelines and evaluation. Never imports slicer or qt.

Coordinate convention of the whole engine: physical points are LPS millimetres (as in ITK and
SimpleITK); arrays are indexed [z, y, x]; index vectors are (i, j, k) = (x, y, z).
Transforms map fixed-space points to moving-space points (the resampling direction).
"""

__version__ = "0.1.0"

from .errors import DISAError, InputError, CancelledError  # noqa: F401
