"""Registration pipelines: objective, multi-resolution driver and the result type.

``defaults`` (the one table of defaults) needs no torch and must load without it: the Slicer
module reads it when Slicer starts, before PyTorch is installed. The torch-based parts below are
therefore imported on first use (PEP 562), not when the package is.
"""
from ..lazy import lazy_exports

#: Public names and the submodule that defines each.
_LAZY = {"Objective": ".objective", "RegistrationResult": ".pipeline", "register": ".pipeline",
         "register_files": ".pipeline"}
__all__ = list(_LAZY)
__getattr__ = lazy_exports(__name__, _LAZY)
