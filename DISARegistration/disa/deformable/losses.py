"""Dense similarity terms and the combined-metric loss (Eq. 1 of combined_similarity_metrics.md).

A :class:`DenseTerm` holds the features of both images on the working grid (MIND-SSC or DISA
descriptors, or intensities) and scores a voxel displacement in either direction:

- forward: the moving features warped by ``disp`` against the fixed ones;
- backward: the fixed features warped by ``-disp`` (the inverse to first order) against the
  moving ones.

Each term is a loss (lower is better) averaged over the voxels where both images have content.
``combined_loss`` adds ``sum_n w_n (L_n^forward + L_n^backward) + lambda * L_reg``; a term whose
weight is 0 is left out, so the loss equals that of the remaining terms exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import InputError
from ..features.mind import mind_ssc, shared_components
from ..similarity.mi import mutual_information, robust_range
from ..similarity.mind import descriptor_ssd
from ..similarity.mse import mse
from ..similarity.ncc import lncc, ncc
from ..similarity.ngf import mean_gradient_norm, ngf
from ..spatial import Image, resample_image
from ..spatial.filters import box_mean
from ..spatial.sampling import channels_fastest
from .defaults import DENSE_METRICS
from .fields import smoothness_loss, warp_features

#: Radius (working voxels) of local normalization (lncc, and ncc's discrete features).
LOCAL_RADIUS = 2
#: Terms whose loss is a region mean of the channel-mean squared difference (``DenseTerm.score``),
#: the form ``linearized`` models.
SQUARED_DIFFERENCE_TERMS = ("mind", "disa", "mse")


@dataclass
class DenseTerm:
    """One similarity measure on the working grid. ``fixed``/``moving``: (1, C, Z, Y, X) features;
    ``fixed_valid``/``moving_valid``: (1, 1, Z, Y, X) float, 1 where each image has content."""

    name: str
    fixed: torch.Tensor
    moving: torch.Tensor
    fixed_valid: torch.Tensor
    moving_valid: torch.Tensor
    spacing: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    extra: Dict[str, object] = field(default_factory=dict)
    #: "fixed"/"moving": (1, C + 1, Z, Y, X) features with the content mask as a last channel
    stacks: Dict[str, torch.Tensor] = field(init=False, repr=False)

    def score(self, reference: torch.Tensor, warped: torch.Tensor, region: torch.Tensor,
              backward: bool = False) -> torch.Tensor:
        """The loss (scalar) of ``warped`` features against ``reference`` over ``region``."""
        name = self.name
        if name in ("mind", "disa"):
            return -descriptor_ssd(reference[0], warped, region)[0]
        if name == "mse":
            return -mse(reference, warped, region)[0]
        if name == "ncc":
            return 1.0 - ncc(reference, warped, region)[0]
        if name == "lncc":
            return 1.0 - lncc(reference, warped, region, LOCAL_RADIUS)[0]
        if name == "mi":
            ranges = self.extra["ranges"]
            ref_range, warped_range = (ranges[1], ranges[0]) if backward else (ranges[0], ranges[1])
            return -mutual_information(reference, warped, region, ref_range, warped_range)[0]
        if name == "ngf":
            eta = self.extra["eta"]
            eta_ref, eta_warped = (eta[1], eta[0]) if backward else (eta[0], eta[1])
            return 1.0 - ngf(reference, warped, region, self.spacing, eta_ref, eta_warped)[0]
        raise InputError(f"similarity {name!r} has no dense form; use one of {', '.join(DENSE_METRICS)}")

    def voxel_weights(self, warped: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        """Per-voxel weights a(x) of a squared-difference term: its loss is
        sum_x a(x) sum_c (reference - warped)^2, the mean over ``region`` and the channels."""
        if self.name not in SQUARED_DIFFERENCE_TERMS:
            raise InputError(f"similarity {self.name!r} is not a squared difference")
        return region / (warped.shape[1] * region.sum().clamp_min(1e-12))

    def __post_init__(self):
        # Each image's features with its content mask as a last channel, so that one sampling
        # warps both (each channel is interpolated on its own: the values are those of two
        # samplings): instance optimization 6% faster (median of 4 interleaved runs, 2.97 against
        # 3.16 s). The stack is laid out channel-fastest (``channels_fastest``: a trilinear sample
        # reads one cache line for all channels; 13 channels onto 66^3 voxels 16.5 instead of 21.6
        # ms, the same values bit for bit); ``fixed`` and ``moving`` stay channel-first for the
        # whole-grid arithmetic, whose mixed layouts had cancelled the gain (session 23), so the
        # features are held twice (about 14 MB an image at 66^3 with 12 channels). Both
        # tuning sets (session 24): diffeomorphic 2.01 against 2.11 s a run, deformable the same
        # (1.48 against 1.49 s, two runs each), identical results.
        self.stacks = {}
        for which in ("fixed", "moving"):
            features = getattr(self, which)
            stack = torch.cat([features, getattr(self, which + "_valid").to(features.dtype)], 1)
            self.stacks[which] = channels_fastest(stack)

    def forward_loss(self, disp: torch.Tensor) -> torch.Tensor:
        return self.direction(disp)[0]

    def backward_loss(self, disp: torch.Tensor) -> torch.Tensor:
        return self.direction(disp, backward=True)[0]

    def direction(self, disp: torch.Tensor, backward: bool = False) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, warped features, region) of one direction: the moving features warped by
        ``disp`` against the fixed ones, or (``backward``) the fixed ones warped by ``-disp``
        against the moving ones; ``region``: where both have content."""
        if backward:
            warped, valid = self._warp_with_valid("fixed", -disp)
            region = (valid > 0.5).to(warped.dtype) * self.moving_valid
            return self.score(self.moving, warped, region, backward=True), warped, region
        warped, valid = self._warp_with_valid("moving", disp)
        region = (valid > 0.5).to(warped.dtype) * self.fixed_valid
        return self.score(self.fixed, warped, region), warped, region

    def _warp_with_valid(self, which: str, disp: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The features of one image and its content mask (no gradient) warped by ``disp``."""
        out = warp_features(self.stacks[which], disp)
        return out[:, :-1], out[:, -1:].detach()

    def discrete_features(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(fixed, moving) features compared by squared differences in the discrete search."""
        return self.extra.get("discrete", (self.fixed, self.moving))


def local_normalize(x: torch.Tensor, radius: int = LOCAL_RADIUS) -> torch.Tensor:
    """Intensities centred and scaled by their local mean and standard deviation (patch SSD of
    these is 2 - 2 local NCC)."""
    mean = box_mean(x, radius)
    var = (box_mean(x * x, radius) - mean * mean).clamp_min(0.0)
    return (x - mean) / torch.sqrt(var + 1e-3)


def mind_features(image: torch.Tensor, radius: int, dilation: int) -> torch.Tensor:
    """MIND-SSC (1, 12, Z, Y, X) of a (1, 1, Z, Y, X) image."""
    return mind_ssc(image, radius=radius, dilation=dilation)


def disa_features(image: Image, descriptor, stride: int) -> torch.Tensor:
    """DISA descriptors (1, 16, Z, Y, X) of a working image, computed at ``stride`` and
    interpolated back onto the working grid. ``descriptor``: a ``disa.similarity.disa.DISA``."""
    desc = descriptor.descriptors(image, stride)
    desc = desc.same_geometry(desc.data.float(), None)
    return resample_image(desc, image).data[None]


def build_term(name: str, fixed: Image, moving: Image, fixed_valid: torch.Tensor, moving_valid: torch.Tensor,
               mind_radius: int = 1, mind_dilation: int = 2, descriptor=None, stride: int = 2,
               seed: int = 0, mind_components: int = 12) -> DenseTerm:
    """The DenseTerm ``name`` of two (normalized, 1-channel) images on one working grid;
    MIND-SSC (of ``mind``, and the discrete step of ``mi`` and ``ngf``) projected onto its
    ``mind_components`` shared principal components (12: all channels as they are)."""
    if name not in DENSE_METRICS:
        raise InputError(f"similarity {name!r} has no dense form; use one of {', '.join(DENSE_METRICS)}")
    f = fixed.data[:1].float()[None]
    m = moving.data[:1].float()[None]
    spacing = tuple(float(s) for s in fixed.spacing)
    extra: Dict[str, object] = {}
    mind_pair = None
    if name in ("mind", "mi", "ngf"):  # mi and ngf search on MIND-SSC in the discrete step
        mind_pair = shared_components(mind_features(f, mind_radius, mind_dilation),
                                      mind_features(m, mind_radius, mind_dilation), mind_components)
    if name == "mind":
        tf, tm = mind_pair
    elif name == "disa":
        if descriptor is None:
            from ..similarity.disa import DISA

            descriptor = DISA()
        tf, tm = disa_features(fixed, descriptor, stride), disa_features(moving, descriptor, stride)
    else:
        tf, tm = f, m
        if name in ("ncc", "lncc"):
            extra["discrete"] = (local_normalize(f), local_normalize(m))
        elif name == "mi":
            extra["ranges"] = (robust_range(f[0], fixed_valid[0], (0.5, 99.5), seed),
                               robust_range(m[0], moving_valid[0], (0.5, 99.5), seed))
        elif name == "ngf":
            extra["eta"] = (mean_gradient_norm(f[0], spacing, fixed_valid[0]),
                            mean_gradient_norm(m[0], spacing, moving_valid[0]))
        if mind_pair is not None:
            extra["discrete"] = mind_pair
    return DenseTerm(name, tf, tm, fixed_valid, moving_valid, spacing, extra)


def normalized_weights(weights: Sequence[float]) -> Tuple[float, ...]:
    """Weights scaled to sum to one (the paper's equal weighting of the similarity terms)."""
    total = float(sum(weights))
    if not np.isfinite(total) or total <= 0:
        raise InputError("the similarity weights must be finite and add up to a positive number")
    return tuple(float(w) / total for w in weights)


def combined_loss(terms: Sequence[Tuple[float, DenseTerm]], disp: torch.Tensor, smoothness: float = 1.0,
                  bidirectional: bool = True, regularizer: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Eq. 1: ``sum_n w_n (L_n^fwd + L_n^bwd) + smoothness * L_reg`` for a (1, 3, Z, Y, X) voxel
    displacement. Weights are used as given (0 drops a term exactly); ``regularizer``: the
    regularization term if not the diffusion of ``disp`` itself (e.g. of a velocity field)."""
    total = None
    for weight, term in terms:
        if weight == 0:
            continue
        loss = term.forward_loss(disp)
        if bidirectional:
            loss = loss + term.backward_loss(disp)
        total = weight * loss if total is None else total + weight * loss
    if total is None:
        raise InputError("a combined loss needs at least one similarity term with a positive weight")
    if smoothness:
        total = total + regularization(disp, smoothness, regularizer)
    return total


def regularization(disp: torch.Tensor, smoothness: float, regularizer: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``smoothness`` times ``regularizer``, or times the diffusion of ``disp`` when it is None."""
    return smoothness * (smoothness_loss(disp) if regularizer is None else regularizer)
