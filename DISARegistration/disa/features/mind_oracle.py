"""The known-good descriptor, fed through the DISA path: a parameter-free stand-in for the network.

``MINDOracle`` maps a normalized volume (B, 1, Z, Y, X) to (B, 16, ceil(Z/4), ceil(Y/4),
ceil(X/4)) exactly as :class:`~disa.features.network.DISANet` does (output k on input voxel
4k, norms <= 1), so everything downstream of the network (descriptor cache, quantization,
weights, the objective, global search) runs unchanged. The descriptor is MIND-SSC (12
channels) centred per voxel, so that a flat patch gives the zero vector (as LC² scores a flat
patch 0), zero-padded to 16 channels and norm-clipped.

Uses: the baseline a learned network must beat on the held-out registration check, a test
that the DISA path itself registers, and a teacher to distill from.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .mind import mind_ssc
from .network import CHANNELS, STRIDE, clip_norm


class MINDOracle(nn.Module):
    """Centred MIND-SSC at stride 4, padded to 16 channels, norm-clipped; no parameters."""

    def __init__(self, radius: int = 2, dilation: int = 2, gain: float = 1.0):
        super().__init__()
        self.radius, self.dilation, self.gain = int(radius), int(dilation), float(gain)
        # a buffer so that descriptor caches keyed on the state dict tell settings apart
        self.register_buffer("settings", torch.tensor([self.radius, self.dilation, self.gain]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_strided(x, STRIDE)

    def forward_strided(self, x: torch.Tensor, stride: int = STRIDE) -> torch.Tensor:
        """The descriptors at every ``stride``-th voxel (the network's interface)."""
        if x.dim() != 5 or x.shape[1] != 1:
            raise ValueError(f"MINDOracle expects (B, 1, Z, Y, X) input, got {tuple(x.shape)}")
        d = mind_ssc(x.float(), self.radius, self.dilation)
        d = (d - d.mean(1, keepdim=True))[:, :, ::stride, ::stride, ::stride] * self.gain
        return clip_norm(F.pad(d, (0, 0, 0, 0, 0, 0, 0, CHANNELS - d.shape[1])))


__all__ = ["MINDOracle"]
