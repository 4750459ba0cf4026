"""Checks shared by the similarity tests."""
from __future__ import annotations

import torch


def assert_leaving_view_never_pays(objective) -> None:
    """Translations of 12-20 mm along each axis push part of the fixed image out of the moving
    one; none may score as high as the aligned pose (parameters zero)."""
    truth = float(objective.similarity(torch.zeros(1, 6, dtype=torch.float64)))
    shifts = []
    for axis in range(3):
        for mm in (-20.0, -12.0, 12.0, 20.0):
            p = torch.zeros(1, 6, dtype=torch.float64)
            p[0, 3 + axis] = mm
            shifts.append(float(objective.similarity(p)))
            assert objective.overlap(p[0].numpy()) < 0.95
    assert max(shifts) < truth
