"""Registration pipelines: objective, multi-resolution driver and the result type.

``defaults`` (the one table of defaults) needs no torch and must load without it: the Slicer
module reads it when Slicer starts, before PyTorch is installed. The torch-based parts below are
therefore imported on first use (PEP 562), not when the package is.
"""
from importlib import import_module

#: Public names and the submodule that defines each.
_LAZY = {"Objective": ".objective", "RegistrationResult": ".pipeline", "register": ".pipeline",
         "register_files": ".pipeline"}
__all__ = list(_LAZY)


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name], __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value
