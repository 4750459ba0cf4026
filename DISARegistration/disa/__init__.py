"""DISA registration engine: images in physical space, descriptors, similarities, transforms,
optimizers, registration pipelines and evaluation. Never imports slicer or qt.

Coordinate convention of the whole engine: physical points are LPS millimetres (as in ITK and
SimpleITK); arrays are indexed [z, y, x]; index vectors are (i, j, k) = (x, y, z).
Transforms map fixed-space points to moving-space points (the resampling direction).
"""

__version__ = "0.1.0"

#: What the engine needs, as pip requirements (pyproject.toml lists the same; the Slicer module
#: installs and checks these, and refuses an older torch than MIN_TORCH).
REQUIREMENTS = ("torch>=2.1", "numpy>=1.24", "scipy>=1.10", "SimpleITK>=2.3", "Py-BOBYQA>=1.4")
MIN_TORCH = REQUIREMENTS[0].split(">=")[1]

from .errors import DISAError, InputError, CancelledError  # noqa: F401
