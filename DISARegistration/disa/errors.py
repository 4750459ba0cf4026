"""Exceptions the engine raises for problems a user can fix (bad input, cancelled runs)."""


class DISAError(Exception):
    """Base class of every error the engine raises on purpose."""


class InputError(DISAError, ValueError):
    """An input file, image, transform or landmark set is unusable; the message says why."""


class CancelledError(DISAError):
    """A run was cancelled by its caller; no output was written."""


def existing_file(path, what: str) -> str:
    """``path`` as a string if it names an existing file; else InputError naming ``what``."""
    import os

    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{what} file not found: {path}")
    if os.path.isdir(path):
        raise InputError(f"{what} path is a folder, not a file: {path}")
    return path
