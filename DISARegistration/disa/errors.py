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


def itk_error_summary(exc: BaseException) -> str:
    """The informative part of an ITK/SimpleITK/OS error message: the text after
    'ITK ERROR: Class(0x...):' or 'sitk::ERROR:', not the C++ source location before it."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        if "sitk::ERROR:" in line:
            return line.split("sitk::ERROR:", 1)[1].strip()
        if "ITK ERROR:" in line:
            text = line.split("ITK ERROR:", 1)[1]
            text = text.split("): ", 1)[1] if "): " in text else text
            if i + 1 < len(lines) and text.rstrip().endswith(("Template", ":")):
                text += " " + lines[i + 1]  # the reason is on the next line
            return text.strip()
    meaningful = [ln for ln in lines if not ln.startswith("Exception thrown in SimpleITK")]
    return (meaningful or lines or [type(exc).__name__])[0]
