"""What every benchmark record holds besides its numbers: the machine's load around a run (the
CPUs are shared, so a reader must see when timings were contended) and the JSON form of numpy
values."""
from __future__ import annotations

import os
from typing import List, Optional

import numpy as np


def load_average() -> Optional[List[float]]:
    """1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [float(v) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def json_default(o):
    """``json.dump(default=...)`` for numpy arrays and scalars; anything else as its string."""
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)


def report_files(output_dir, names):
    """A benchmark report's files ``names`` in ``output_dir`` as OutputFiles (written together,
    all or none), checked writable before the runs."""
    from ..outputs import OutputFiles

    return OutputFiles({name: os.path.join(os.fspath(output_dir), name) for name in names}, inputs={})


def choose_methods(methods, known, suite: str) -> list:
    """The known method names asked for (None: all), in ``known``'s (the report's) order; an
    unknown or empty choice is refused naming ``suite``'s methods."""
    from ..errors import InputError

    if methods is None:
        return list(known)
    chosen = [str(m).strip().lower() for m in methods if str(m).strip()]
    unknown = [m for m in chosen if m not in known]
    if unknown:
        raise InputError(f"unknown {suite} method(s) {', '.join(map(repr, unknown))}; choose from {', '.join(known)}")
    if not chosen:
        raise InputError(f"no {suite} method given; choose from {', '.join(known)}")
    return [m for m in known if m in chosen]


def open_runners(methods, make_runner, progress, results: dict, runners: dict, not_run: str = "not run") -> None:
    """For each method, ``make_runner(method)``, its entry in ``results`` (settings, available,
    runs) and, when it can run, the runner in ``runners``; one that cannot says why in
    ``progress``. The dicts are the caller's, so a ``finally`` there closes whatever opened."""
    for method in methods:
        runner = make_runner(method)
        entry = {"settings": runner.settings(), "available": True, "runs": []}
        results[method] = entry
        reason = runner.available()
        if reason is not None:
            entry.update(available=False, reason=reason)
            progress(f"[{method}] {not_run}: {reason}")
            continue
        runners[method] = runner


#: What :func:`call_runner` returns when the method's peer process died.
CRASHED = object()


def call_runner(method: str, runners: dict, results: dict, progress, call):
    """``call()`` for ``method``'s runner: None when it returned, its one-line error when it
    raised, ``CRASHED`` when the method's peer process died (the runner is then closed, dropped
    from ``runners`` and its entry marked unavailable). Cancellation goes on."""
    from ..errors import CancelledError
    from .peers import ElastixCrashed

    try:
        call()
    except (KeyboardInterrupt, CancelledError):
        raise
    except ElastixCrashed as exc:
        results[method].update(available=False, reason=str(exc))
        progress(f"[{method}] crashed: {exc}; skipping it")
        runners.pop(method).close()
        return CRASHED
    except Exception as exc:  # noqa: BLE001  (recorded by the caller; the other methods go on)
        return f"{type(exc).__name__}: {exc}"
    return None


def warm_up_runners(runners: dict, results: dict, warm_up, progress) -> None:
    """One untimed ``warm_up(runner)`` per runner (imports, kernels, caches), so that no timed run
    pays them. A peer whose process died is dropped (:func:`call_runner`); any other error is
    kept in its entry as ``warm_up_error`` and the method still runs."""
    for method, runner in list(runners.items()):
        progress(f"[{method}] warm-up (untimed) ...")
        error = call_runner(method, runners, results, progress, lambda: warm_up(runner))
        if error is not None and error is not CRASHED:
            results[method]["warm_up_error"] = error


__all__ = ["load_average", "json_default", "report_files", "choose_methods", "open_runners", "CRASHED", "call_runner",
           "warm_up_runners"]
