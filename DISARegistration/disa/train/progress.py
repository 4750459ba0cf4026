"""Progress lines of the training commands: one rewritten line on a terminal, else a line every
few seconds (logs stay short)."""
from __future__ import annotations

import sys
import time
from typing import Callable


class LineProgress:
    """Progress on stderr: one rewritten line on a terminal, else a line every ``every`` s."""

    def __init__(self, stream=None, every: float = 10.0):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every, self.last = every, 0.0

    def __call__(self, message: str, final: bool = False) -> None:
        now = time.perf_counter()
        if self.tty:
            self.stream.write("\r" + message[:150].ljust(150) + ("\n" if final else ""))
        elif final or now - self.last >= self.every:
            self.stream.write(message + "\n")
            self.last = now
        else:
            return
        self.stream.flush()


def quiet(message: str, final: bool = False) -> None:
    return None


def progress_of(progress) -> Callable:
    if progress is False or progress is None:
        return quiet
    if progress is True:
        return LineProgress()
    return progress


__all__ = ["LineProgress", "progress_of"]
