"""The DISA descriptor network (Ronchetti et al., MICCAI 2023), exactly as published.

A small fully convolutional 3-D CNN maps a normalized single-channel volume to a 16-channel
descriptor volume at stride 4; the dot product of two descriptors approximates the LC²
similarity of the patches around them (trained elsewhere, see ``disa.train``).

Layers (90,752 trainable parameters; no normalization layers, as in the paper)::

    conv(1,8) res(8) conv(8,16) blur(16) res(16) conv(16,32) blur(32) res(32) Conv3d(32,16,1)

then per-voxel norm clipping ``y / max(|y|, 1)``.

Geometry (what registration relies on): 3x3x3 convolutions with padding 1 keep voxel
centres in place. A BlurPool with replicate padding 2, a 5-tap kernel and stride 2 centres its
output k on padded input 2k+2, i.e. on input voxel 2k. Two of them put output voxel (k, j, i)
exactly on input voxel (4k, 4j, 4i): the descriptor grid has the input's origin and direction
and 4x its spacing, and an input of n voxels gives ceil(n / 4) outputs (the last output may sit
up to 3 voxels past the last input voxel; there it sees replicated border values).
The receptive field is about 49 voxels (``RECEPTIVE_FIELD``).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

#: Trainable parameters of the published architecture.
PARAMETER_COUNT = 90752
#: Output stride of the network (input voxels per output voxel along each axis).
STRIDE = 4
#: Number of descriptor channels.
CHANNELS = 16
#: Receptive field (input voxels along one axis) of one output voxel.
RECEPTIVE_FIELD = 49
#: Input voxels on each side of an output voxel's centre that can influence it.
HALF_RECEPTIVE_FIELD = RECEPTIVE_FIELD // 2


def _use_mkldnn(x: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and not torch.is_grad_enabled()
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels-last order, oneDNN's native layout: in NCDHW order oneDNN reorders every
    layer's input and output, which took half the time of a pass (106 x 106 x 93 voxels at
    stride 2, 2 threads: 0.67 s -> 0.34 s; descriptors equal to 1e-6)."""
    return x.to(memory_format=torch.channels_last_3d)


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` (same parameters and state-dict keys) that always takes oneDNN on the CPU
    at inference. PyTorch's heuristic sends single-volume batches with few channels to its
    im2col fallback, about 10x slower for this network's first layers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _use_mkldnn(x) and self.padding_mode == "zeros":
            return torch.mkldnn_convolution(_channels_last(x), self.weight, self.bias, list(self.padding),
                                            list(self.stride), list(self.dilation), self.groups)
        return super().forward(x)


class Conv(nn.Sequential):
    """3x3x3 convolution (padding 1, bias) followed by LeakyReLU(0.01)."""

    def __init__(self, cin: int, cout: int):
        super().__init__(Conv3d(cin, cout, 3, padding=1, bias=True), nn.LeakyReLU(0.01))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return super().forward(x)
        # inference: activate in place (full-resolution activations are 64+ MB; allocating
        # one per layer costs more than the activation itself on a CPU)
        return F.leaky_relu_(self[0](x), self[1].negative_slope)


class Residual(nn.Module):
    """x + conv(conv(x)); no activation after the sum."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(Conv(channels, channels), Conv(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return x + self.body(x)
        return self.body(x).add_(x)


def binomial_kernel(taps=(1.0, 4.0, 6.0, 4.0, 1.0)) -> torch.Tensor:
    """Normalized 3-D binomial kernel (outer product of ``taps``), shape (5, 5, 5)."""
    t = torch.tensor(taps, dtype=torch.float32)
    k = t[:, None, None] * t[None, :, None] * t[None, None, :]
    return k / k.sum()


class BlurPool(nn.Module):
    """Anti-aliased downsampling: depthwise binomial blur, replicate padding 2, stride 2.

    The kernel is a buffer (saved in the state dict, never trained) so the parameter count
    stays that of the paper.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.register_buffer("kernel", binomial_kernel()[None, None].repeat(channels, 1, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blur(x, 2, 1)

    def blur(self, x: torch.Tensor, stride: int, dilation: int) -> torch.Tensor:
        """The blur with its taps ``dilation`` voxels apart, keeping every ``stride``-th voxel."""
        x = F.pad(x, (2 * dilation,) * 6, mode="replicate")
        kernel = self.kernel.to(x.dtype)
        if _use_mkldnn(x):
            return torch.mkldnn_convolution(_channels_last(x), kernel, None, [0, 0, 0], [stride] * 3, [dilation] * 3,
                                            self.channels)
        return F.conv3d(x, kernel, stride=stride, dilation=dilation, groups=self.channels)


def _conv_block(block: "Conv", x: torch.Tensor, dilation: int) -> torch.Tensor:
    """``block`` (3x3x3 convolution + LeakyReLU) with its taps ``dilation`` voxels apart."""
    if dilation == 1:
        return block(x)
    conv, pad = block[0], [dilation] * 3
    if _use_mkldnn(x):
        y = torch.mkldnn_convolution(_channels_last(x), conv.weight, conv.bias, pad, [1, 1, 1], [dilation] * 3, 1)
    else:
        y = F.conv3d(x, conv.weight, conv.bias, padding=pad, dilation=dilation)
    return F.leaky_relu(y, block[1].negative_slope)


def clip_norm(y: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Scale vectors longer than 1 to unit length (per voxel along ``dim``)."""
    return y / torch.linalg.vector_norm(y, dim=dim, keepdim=True).clamp_min(1.0)


class DISANet(nn.Module):
    """The DISA-LC² descriptor CNN: (B, 1, Z, Y, X) -> (B, 16, ceil(Z/4), ceil(Y/4), ceil(X/4)).

    Inputs should be normalized to zero mean and unit standard deviation (as in training).
    Output norms are <= 1.
    """

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(
            Conv(1, 8), Residual(8), Conv(8, 16), BlurPool(16), Residual(16),
            Conv(16, 32), BlurPool(32), Residual(32), Conv3d(32, CHANNELS, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != 1:
            raise ValueError(f"DISANet expects (B, 1, Z, Y, X) input, got {tuple(x.shape)}")
        return clip_norm(self.layers(x))

    def forward_strided(self, x: torch.Tensor, stride: int = STRIDE) -> torch.Tensor:
        """Descriptors at every ``stride``-th input voxel (4, 2 or 1) in one pass, with the same
        weights: (B, 16, ceil(Z/s), ceil(Y/s), ceil(X/s)), output k on input voxel s*k.

        "A trous": a BlurPool that would halve the grid keeps it instead, and every later
        layer's taps are dilated by 2 so they reach the same input voxels as before. In the
        interior this equals the 8 (stride 2) or 64 (stride 1) shifted stride-4 runs exactly;
        at the borders it sees the real voxels a shifted run would have cut off. At stride 2 it
        costs about a fifth of the 8 runs."""
        if x.dim() != 5 or x.shape[1] != 1:
            raise ValueError(f"DISANet expects (B, 1, Z, Y, X) input, got {tuple(x.shape)}")
        if stride == STRIDE:
            return self.forward(x)
        if stride not in (1, 2):
            raise ValueError(f"descriptor stride must be 4, 2 or 1, got {stride}")
        keep = {2: 1, 1: 0}[stride]  # BlurPools that still halve the grid
        dilation = 1
        for layer in self.layers:
            if isinstance(layer, BlurPool):
                if keep > 0:
                    x, keep = layer(x), keep - 1
                else:
                    x = layer.blur(x, 1, dilation)
                    dilation *= 2
            elif isinstance(layer, Residual):
                x = x + _conv_block(layer.body[1], _conv_block(layer.body[0], x, dilation), dilation)
            elif isinstance(layer, Conv):
                x = _conv_block(layer, x, dilation)
            else:  # the final 1x1 convolution has no taps to dilate
                x = layer(x)
        return clip_norm(x)


def output_shape(shape) -> tuple:
    """Output spatial shape for an input spatial shape: ceil(n / 4) per axis."""
    return tuple(int(math.ceil(int(n) / STRIDE)) for n in shape)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (the frozen blur kernels are buffers and do not count)."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


def seeded_model(seed: int = 0) -> DISANet:
    """A randomly initialized network with a fixed seed (for tests and demos without weights)."""
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = DISANet()
    finally:
        torch.random.set_rng_state(gen_state)
    return model.eval()
