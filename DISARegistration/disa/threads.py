"""Torch's CPU thread count, set for a block of work and restored afterwards.

Torch's count is per thread once a thread has run a parallel operation (OpenMP's own setting);
a new thread starts with the count last set anywhere. Results depend on it: a parallel sum adds
one partial sum per thread, so registrations pin their count (``machine_threads`` by default)
in their own thread and two runs at once do not change each other's result.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator, Optional

import torch

from .errors import InputError

#: Environment variable that sets the default thread count of every entry point.
THREADS_VARIABLE = "DISA_THREADS"


def machine_threads() -> int:
    """The default CPU thread count of a registration, the same for every entry point:
    ``DISA_THREADS`` when set, else every CPU this process may run on."""
    text = os.environ.get(THREADS_VARIABLE, "").strip()
    if text:
        if not text.isdigit() or int(text) < 1:
            raise InputError(f"{THREADS_VARIABLE} must be a positive whole number, got {text!r}")
        return int(text)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


@contextmanager
def torch_threads(n: Optional[int]) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads (None or 0: leave the setting alone).

    The count is the calling thread's (and the default of threads started later; it also sets
    MKL's), so it is restored even on errors.
    """
    if not n:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(previous)
