"""Output files written all-or-nothing, never over an input.

    outputs = OutputFiles({"--json": "r.json", "--output-volume": "mr_on_us.nii.gz"},
                          inputs={"--moving": "mr.nii.gz"})      # checked now, before any work
    with outputs.staged() as staged:
        write_json(staged["--json"], ...)                       # temporary files in the same folders
        ...
    # every output renamed into place together; on an error, none is and the temporaries go

Each output is checked before the work starts: it must not name an input (after resolving
links), two outputs must not name one file, and its folder must be writable (a probe file is
created and removed, which also covers read-only file systems and root's permissions).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Dict, Iterator, Mapping, Optional

from .errors import InputError

#: Prefix of the temporary files (they end with the final name, so writers see its suffix).
TEMP_PREFIX = ".disa-partial-"


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _existing_ancestor(folder: str) -> str:
    while folder and not os.path.exists(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return folder


def check_writable(path: str, what: str) -> None:
    """InputError unless a file can be written at ``path`` (its folder may still be missing)."""
    if os.path.isdir(path):
        raise InputError(f"{what} '{path}' is a folder, not a file")
    folder = os.path.dirname(os.path.abspath(path))
    existing = _existing_ancestor(folder)
    if not os.path.isdir(existing):
        raise InputError(f"cannot write {what} '{path}': '{existing}' is not a folder")
    if existing != folder:  # created when written; its nearest existing parent must take it
        if not os.access(existing, os.W_OK | os.X_OK):
            raise InputError(f"cannot write {what} '{path}': folder '{existing}' is not writable")
        return
    try:
        fd, probe = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise InputError(f"cannot write {what} '{path}': {exc.strerror or exc}") from None
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise InputError(f"cannot write {what} '{path}': the file is read-only")


class OutputFiles:
    """Named output paths (None entries are skipped), checked against the inputs and each other."""

    def __init__(self, outputs: Mapping[str, Optional[str]], inputs: Mapping[str, Optional[str]]):
        self.paths: Dict[str, str] = {k: os.fspath(v) for k, v in outputs.items() if v is not None}
        names = list(self.paths)
        for i, name in enumerate(names):
            path = self.paths[name]
            for what, source in inputs.items():
                if source is not None and _same_file(path, os.fspath(source)):
                    raise InputError(f"{name} '{path}' is the {what} input: choose another file; "
                                     "inputs are never overwritten")
            for other in names[:i]:
                if _same_file(path, self.paths[other]):
                    raise InputError(f"{name} and {other} name the same file '{path}'")
            check_writable(path, name)

    @contextlib.contextmanager
    def staged(self) -> Iterator[Dict[str, str]]:
        """Temporary paths per name; renamed over the final paths together when the block ends
        without an error, removed otherwise."""
        temps: Dict[str, str] = {}
        try:
            for name, path in self.paths.items():
                folder = os.path.dirname(os.path.abspath(path))
                os.makedirs(folder, exist_ok=True)
                fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix="-" + os.path.basename(path), dir=folder)
                os.close(fd)
                temps[name] = temp
                os.remove(temp)  # the name is ours; the writer creates the file with the usual mode
            yield dict(temps)
            for name, temp in temps.items():
                os.replace(temp, self.paths[name])
            temps.clear()
        except OSError as exc:
            raise InputError(f"could not write the outputs: {exc}") from exc
        finally:
            for temp in temps.values():
                with contextlib.suppress(OSError):
                    os.remove(temp)
