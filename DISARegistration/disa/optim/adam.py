"""Adam for the dense registrations' per-case optimization.

The update is torch.optim.Adam's with its defaults (Kingma & Ba 2015; betas 0.9 / 0.999,
eps 1e-8, no weight decay). torch's own class is not used because its first construction in a
process imports torch._dynamo, 1-3 s on a 2-core CPU, which every one-off ``disa register
--transform deformable`` would pay again (more than a dense level's whole optimization).
"""
from __future__ import annotations

import math
from typing import Iterable

import torch


class Adam:
    """``zero_grad()`` / ``step()`` over tensors that require gradients."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params = list(params)
        if not self.params or not all(p.requires_grad for p in self.params):
            raise ValueError("Adam needs at least one tensor, each requiring gradients")
        self.lr, (self.beta1, self.beta2), self.eps = float(lr), betas, float(eps)
        self.steps = 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        correction1 = 1 - self.beta1 ** self.steps
        correction2 = math.sqrt(1 - self.beta2 ** self.steps)
        for p, m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            m.lerp_(p.grad, 1 - self.beta1)
            v.mul_(self.beta2).addcmul_(p.grad, p.grad, value=1 - self.beta2)
            p.addcdiv_(m, (v.sqrt() / correction2).add_(self.eps), value=-self.lr / correction1)


__all__ = ["Adam"]
