"""Lazy package exports (PEP 562): a package whose import must not load torch (the command line
and the Slicer module read it before PyTorch is there) names its public objects and the submodule
of each; they are imported on first use."""
from __future__ import annotations

import sys
from importlib import import_module
from typing import Callable, Dict


def lazy_exports(package: str, table: Dict[str, str]) -> Callable[[str], object]:
    """The module ``__getattr__`` of ``package`` for ``table`` (public name -> relative submodule)."""
    def __getattr__(name):
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(table[name], package), name)
        setattr(sys.modules[package], name, value)  # later look-ups skip this function
        return value
    return __getattr__
