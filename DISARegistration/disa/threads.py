"""Torch's CPU thread count, set for a block of work and restored afterwards."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import torch


@contextmanager
def torch_threads(n: Optional[int]) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads (None or 0: leave the setting alone).

    The count is process-wide (it also sets MKL's), so it is restored even on errors.
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
