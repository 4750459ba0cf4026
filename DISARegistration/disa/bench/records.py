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


__all__ = ["load_average", "json_default"]


def report_files(output_dir, names):
    """A benchmark report's files ``names`` in ``output_dir`` as OutputFiles (written together,
    all or none), checked writable before the runs."""
    from ..outputs import OutputFiles

    return OutputFiles({name: os.path.join(os.fspath(output_dir), name) for name in names}, inputs={})
