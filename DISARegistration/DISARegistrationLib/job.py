"""A registration on a worker thread: the engine runs there, the scene is written only on the
thread that started the job (``RegistrationLogic.registerAsync`` builds one)."""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Optional

from disa.errors import CancelledError


class RegistrationJob:
    """A registration running on a worker thread (see RegistrationLogic.registerAsync): ``work``
    (progress, cancelled) runs there on copies of the inputs; ``finish`` (its result) writes the
    nodes, on the thread that started the job.

    ``done``: the worker has stopped (finished, failed or cancelled). ``error``: the exception
    (disa.errors.CancelledError when cancelled), else None. ``progress``: the latest
    (stage, fraction, message) or None. ``elapsed``: seconds since the start (until the worker
    stopped). ``result``: the output transform node once the job is finished on the scene's thread
    (``finish()``, or reading ``result``/``poll()`` there after the worker stopped).
    """

    def __init__(self, work: Callable[[Callable, Callable[[], bool]], Any], finish: Callable[[Any], Any],
                 progress=None, cancel=None):
        self._engineWork, self._writeScene = work, finish
        self._userProgress, self._userCancel = progress, cancel
        self._cancelEvent = threading.Event()
        self._owner = threading.get_ident()
        self._engineResult = None
        self._finished = False
        self._reported = None
        self.progress = None
        self.error: Optional[BaseException] = None
        self._result = None
        self._started = time.perf_counter()
        self._ended: Optional[float] = None
        self._thread = threading.Thread(target=self._work, name="DISA registration", daemon=True)
        self._thread.start()

    def _cancelled(self) -> bool:
        return self._cancelEvent.is_set() or (self._userCancel is not None and bool(self._userCancel()))

    def _onProgress(self, stage, fraction, message):
        self.progress = (stage, float(fraction), message)  # one assignment: atomic for readers

    def _work(self):
        try:
            self._engineResult = self._engineWork(self._onProgress, self._cancelled)
        except BaseException as exc:  # reported through .error / finish() on the scene's thread
            self.error = exc
        finally:
            self._ended = time.perf_counter()

    # control ------------------------------------------------------------------------------------
    def cancel(self) -> None:
        """Ask the worker to stop at its next check (within a second); no node is changed."""
        self._cancelEvent.set()

    @property
    def cancelled(self) -> bool:
        return isinstance(self.error, CancelledError)

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    @property
    def elapsed(self) -> float:
        return (self._ended if self._ended is not None else time.perf_counter()) - self._started

    def poll(self) -> bool:
        """Forward the latest progress to the callback and, once the worker stopped, write the
        result into the scene (only on the thread that started the job). Returns ``done``."""
        if self._userProgress is not None and self.progress is not None and self.progress != self._reported:
            self._reported = self.progress
            self._userProgress(*self.progress)
        done = self.done
        if done and not self._finished and threading.get_ident() == self._owner:
            self._finalize()
        return done

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the worker stopped (or ``timeout`` seconds passed); returns ``done``."""
        self._thread.join(timeout)
        return self.poll()

    def _finalize(self):
        self._finished = True
        if self.error is not None:
            return
        try:
            self._result = self._writeScene(self._engineResult)
        except BaseException as exc:
            self.error = exc

    @property
    def result(self):
        self.poll()
        return self._result

    def finish(self):
        """Wait for the worker, write the result into the scene; returns the output transform node.

        Raises the run's error (CancelledError when cancelled). Call it on the scene's thread.
        """
        if threading.get_ident() != self._owner:
            raise RuntimeError("RegistrationJob.finish() must be called on the thread that started the job")
        self.wait()
        if self.error is not None:
            raise self.error
        return self._result
