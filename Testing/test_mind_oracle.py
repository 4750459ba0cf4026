"""The MIND-SSC oracle: a parameter-free module with the DISA network's geometry."""
from __future__ import annotations

import math

import torch

from disa.features.descriptors import compute_descriptors
from disa.features.mind_oracle import MINDOracle
from disa.features.network import DISANet
from disa.spatial import Image


def test_oracle_has_the_network_geometry_and_flat_patches_give_zero():
    x = torch.randn(1, 1, 33, 34, 37)
    oracle, net = MINDOracle(), DISANet().eval()
    with torch.no_grad():
        y, z = oracle(x), net(x)
    assert y.shape == z.shape == (1, 16, 9, 9, 10)
    assert float(torch.linalg.vector_norm(y, dim=1).max()) <= 1.0 + 1e-6
    assert float(y[:, 12:].abs().max()) == 0.0  # 12 MIND channels, zero padding to 16
    flat = oracle(torch.full((1, 1, 24, 24, 24), 3.0))
    assert float(flat.abs().max()) < 1e-6
    assert not list(oracle.parameters())


def test_oracle_descriptors_are_invariant_to_linear_intensity_changes():
    img = Image.from_array(torch.randn(40, 40, 40).numpy())
    a = compute_descriptors(img, MINDOracle())
    b = compute_descriptors(img.same_geometry(-2.5 * img.data + 7.0), MINDOracle())
    assert a.shape == b.shape and math.isclose(float((a.data - b.data).abs().max()), 0.0, abs_tol=1e-4)
