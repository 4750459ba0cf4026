"""Exceptions the engine raises for problems a user can fix (bad input, cancelled runs)."""


class DISAError(Exception):
    """Base class of every error the engine raises on purpose."""


class InputError(DISAError, ValueError):
    """An input file, image, transform or landmark set is unusable; the message says why."""


class CancelledError(DISAError):
    """A run was cancelled by its caller; no output was written."""
