"""The dense similarity replaced, near a reference displacement, by its Gauss-Newton model.

A squared-difference term (MIND-SSC, DISA descriptors, MSE) of a displacement ``u = r + d``
near a reference ``r`` is, per voxel x (weights ``a(x)``: the term's region over its size),

    L(r + d) ~ L(r) + g . d + sum_x a(x) d(x)^T H(x) d(x),   H(x) = sum_c G_c(x) G_c(x)^T,

with ``G_c`` the spatial gradient of the warped channel c (central differences of the warped
features: the derivative of the features sampled at x + u to first order in the field's own
gradient) and ``g`` the gradient at ``r`` built from them too (the derivative
``fields.warp_features`` gives every dense loss). Between refreshes an iteration costs a few
element-wise operations on 10 numbers per voxel instead of two trilinear warps of all channels
and their gradients, which took about 60-75% of every dense iteration on a CPU. The model is
rebuilt at the current displacement once any voxel has moved more than ``radius`` working voxels
from the reference (trilinear features are close to linear within a voxel). Other terms (NCC,
LNCC, MI, NGF) stay exact.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from .fields import channel_dot, displacement_gradient, spatial_gradients
from .losses import SQUARED_DIFFERENCE_TERMS, DenseTerm, combined_loss, regularization


def gauss_newton_terms(warped: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                       sign: float = 1.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """(gradient (1, 3, Z, Y, X), Hessian (1, 6, Z, Y, X)) of sum_x weight(x) sum_c (target_c -
    warped_c)^2 in the displacement, ``warped`` (1, C, Z, Y, X) sampled at x + sign * disp(x):
    with G_c the (x, y, z) voxel gradient of warped channel c, the gradient is sign * 2 * weight *
    sum_c (warped_c - target_c) G_c (``fields.warp_features``' derivative) and the Hessian's
    entries xx, yy, zz, xy, xz, yz those of weight * sum_c G_c G_c^T."""
    gx, gy, gz = spatial_gradients(warped)
    gradient = displacement_gradient((warped - target) * (2.0 * sign * weight), (gx, gy, gz))
    pairs = ((gx, gx), (gy, gy), (gz, gz), (gx, gy), (gx, gz), (gy, gz))
    hessian = warped.new_empty(warped.shape[0], 6, *warped.shape[2:])
    for k, (a, b) in enumerate(pairs):
        channel_dot(a, b, out=hessian[:, k])
    return gradient, hessian.mul_(weight)


def hessian_times(hessian: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """(1, 3, ...) H d per voxel for a (1, 6, ...) ``hessian`` (xx, yy, zz, xy, xz, yz) and a
    (1, 3, ...) displacement ``d``."""
    h, (x, y, z) = hessian[0], d[0]
    out = torch.empty_like(d)
    for row, (diag, a, b, other_a, other_b) in enumerate(((h[0], h[3], h[4], y, z), (h[1], h[3], h[5], x, z),
                                                          (h[2], h[4], h[5], x, y))):
        torch.mul(diag, d[0, row], out=out[0, row])
        out[0, row].addcmul_(a, other_a).addcmul_(b, other_b)
    return out


class _GaussNewtonModel(torch.autograd.Function):
    """g . d + d^T H d summed over voxels, its gradient g + 2 H d (H symmetric) kept from the
    forward pass: a dozen element-wise passes instead of autograd's graph of thirty (with the
    displacement's resizing 7.7 -> 5.5 ms an iteration at 66^3)."""

    @staticmethod
    def forward(ctx, d, gradient, hessian):
        hd = hessian_times(hessian, d)
        slope = gradient + hd  # the value is d . (g + H d)
        value = torch.dot(d.reshape(-1), slope.reshape(-1))
        ctx.save_for_backward(slope.add_(hd) if ctx.needs_input_grad[0] else None)  # g + 2 H d
        return value

    @staticmethod
    def backward(ctx, grad_output):
        (slope,) = ctx.saved_tensors
        return grad_output * slope, None, None


def gauss_newton_model(d: torch.Tensor, gradient: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    """sum over voxels of g . d + d^T H d for (1, 3, ...) ``gradient`` and ``d`` and a (1, 6, ...)
    ``hessian`` (xx, yy, zz, xy, xz, yz), differentiable in ``d``."""
    return _GaussNewtonModel.apply(d, gradient, hessian)


class LinearizedLoss:
    """``combined_loss(terms, disp, smoothness, bidirectional, regularizer)`` with its
    squared-difference terms replaced by their Gauss-Newton model around a reference displacement,
    rebuilt when the displacement leaves ``radius`` voxels of it. ``radius`` 0: exact every call
    (the deformable pipeline's radius: ``DENSE_DEFAULTS.linearize``)."""

    def __init__(self, terms: Sequence[Tuple[float, DenseTerm]], radius: float, bidirectional: bool = True):
        self.terms, self.bidirectional, self.radius = list(terms), bool(bidirectional), float(radius)
        modelled = [bool(w) and t.name in SQUARED_DIFFERENCE_TERMS and radius > 0 for w, t in self.terms]
        self.modelled = [wt for wt, m in zip(self.terms, modelled) if m]
        self.exact = [wt for wt, m in zip(self.terms, modelled) if wt[0] and not m]
        self.reference: Optional[torch.Tensor] = None
        self.refreshes = 0

    def __call__(self, disp: torch.Tensor, smoothness: float, regularizer: Optional[torch.Tensor] = None):
        if not self.modelled:
            return combined_loss(self.terms, disp, smoothness, self.bidirectional, regularizer)
        current = disp.detach()
        if self.reference is None or float((current - self.reference).abs().max()) > self.radius:
            self.refresh(current)
        d = disp - self.reference
        total = self.value + gauss_newton_model(d, self.gradient, self.hessian)
        if self.exact:
            total = total + combined_loss(self.exact, disp, 0.0, self.bidirectional)
        if smoothness:
            total = total + regularization(disp, smoothness, regularizer)
        return total

    def refresh(self, reference: torch.Tensor) -> None:
        """Rebuild the model at ``reference``: one exact evaluation, its gradient and Hessian from
        the warped features (no autograd: the same derivative as ``warp_features``')."""
        value, gradient, hessian = 0.0, 0.0, 0.0
        with torch.no_grad():
            for weight, term in self.modelled:
                for backward in ((False, True) if self.bidirectional else (False,)):
                    loss, warped, region = term.direction(reference, backward)
                    target = term.moving if backward else term.fixed  # the backward warp is by -disp
                    g, h = gauss_newton_terms(warped, target, term.voxel_weights(warped, region) * weight,
                                              -1.0 if backward else 1.0)
                    value, gradient, hessian = value + weight * loss, gradient + g, hessian + h
        self.value, self.gradient, self.hessian, self.reference = value, gradient, hessian, reference
        self.refreshes += 1
