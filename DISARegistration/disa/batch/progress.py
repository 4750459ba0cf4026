"""A progress bar over the cases of a cohort on stderr: done, failed, running, skipped and the
time left (from the mean time per finished case and the worker count). Rewritten in place on a
terminal; otherwise one line per finished case and at most one every 30 seconds between."""
from __future__ import annotations

import sys
import time

#: Seconds between two lines when stderr is not a terminal and nothing finished.
QUIET_INTERVAL = 30.0
BAR = 30


def format_seconds(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class CohortProgress:
    """``update(done=, failed=, running=)`` as cases finish; ``close()`` ends the line."""

    def __init__(self, total: int, skipped: int = 0, workers: int = 1, stream=None, quiet: bool = False):
        self.total, self.skipped, self.workers = total, skipped, max(1, workers)
        self.stream = sys.stderr if stream is None else stream
        self.quiet = quiet
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self.done = self.failed = self.running = 0
        self.last_line = 0.0
        self.last_finished = -1

    def time_left(self) -> float | None:
        finished = self.done + self.failed
        if finished == 0:
            return None
        per_case = (time.perf_counter() - self.start) / finished  # wall time per case, workers included
        return per_case * (self.total - self.skipped - finished)

    def line(self) -> str:
        finished = self.done + self.failed + self.skipped
        fraction = finished / self.total if self.total else 1.0
        left = self.time_left()
        parts = [f"{finished}/{self.total} cases", f"{self.done} done", f"{self.failed} failed",
                 f"{self.running} running"]
        if self.skipped:
            parts.append(f"{self.skipped} skipped")
        parts.append("time left " + ("?" if left is None else format_seconds(left)))
        bar = "#" * int(BAR * fraction)
        return f"[{bar:<{BAR}}] {100 * fraction:3.0f}% " + ", ".join(parts)

    def update(self, done: int, failed: int, running: int) -> None:
        self.done, self.failed, self.running = done, failed, running
        if self.quiet:
            return
        now = time.perf_counter()
        finished = done + failed
        if self.tty:
            self.stream.write("\r" + self.line()[:120].ljust(120))
        elif finished != self.last_finished or now - self.last_line >= QUIET_INTERVAL:
            self.stream.write("disa batch: " + self.line() + "\n")
            self.last_line, self.last_finished = now, finished
        else:
            return
        self.stream.flush()

    def note(self, message: str) -> None:
        if not self.quiet:
            self.stream.write(("\n" if self.tty else "") + f"disa batch: {message}\n")
            self.stream.flush()

    def close(self) -> None:
        if not self.quiet and self.tty:
            self.stream.write("\n")
            self.stream.flush()
