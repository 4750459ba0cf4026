"""Shared by the suites: the module folder on sys.path (as Slicer puts a scripted module's folder
there, so DISARegistrationLib imports as in Slicer) and one torch thread for tests that register."""
from __future__ import annotations

import os
import sys

import pytest
import torch

MODULE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "DISARegistration")
if MODULE_DIR not in sys.path:
    sys.path.insert(0, MODULE_DIR)


@pytest.fixture(scope="module")
def one_thread():
    """Another heavy job may share the CPU: one torch thread is much faster than two contending."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
