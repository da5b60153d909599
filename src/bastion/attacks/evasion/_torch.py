"""Torch helpers shared by the gradient attacks: ε-ball projection in each feature's scale,
bound clipping, losses and the success test. Everything stays on torch tensors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bastion.core.targets.base import DifferentiableTarget


@dataclass
class Geometry:
    """Bounds, ε scale and mutability mask of a target's inputs, as tensors of the sample shape.

    Attacks optimise ``delta`` in ε units: the input is ``x + scale * delta``.
    """

    lo: torch.Tensor
    hi: torch.Tensor
    scale: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def of(cls, target: DifferentiableTarget) -> Geometry:
        spec, dev = target.input_spec, target.device
        lo, hi = spec.bounds_arrays()
        t = lambda a: torch.as_tensor(np.asarray(a, np.float32), device=dev)  # noqa: E731
        return cls(t(lo), t(hi), t(spec.scale_array()), t(spec.mutable_mask()))

    def apply(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """``x + scale * delta`` clipped to the bounds."""
        return torch.maximum(torch.minimum(x + self.scale * delta, self.hi), self.lo)

    def delta_of(self, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        return (x_adv - x) / self.scale


def flat_norm(t: torch.Tensor, norm: str) -> torch.Tensor:
    flat = t.flatten(1)
    return flat.abs().amax(dim=1) if norm == "linf" else flat.norm(dim=1)


def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def project_ball(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project onto the ε-ball of the given norm."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    n = flat_norm(delta, "l2")
    factor = torch.where(n > eps, eps / n.clamp_min(1e-12), torch.ones_like(n))
    return delta * _view(factor, delta)


def ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent direction under the norm: sign for L∞, unit-L2 gradient for L2."""
    if norm == "linf":
        return grad.sign()
    return grad / _view(flat_norm(grad, "l2").clamp_min(1e-12), grad)


def random_start(shape: tuple[int, ...], eps: float, norm: str, gen: torch.Generator, device: str) -> torch.Tensor:
    """Uniform sample of the ε-ball (L∞: per coordinate; L2: direction times eps * u^(1/d))."""
    if norm == "linf":
        return (torch.rand(shape, generator=gen, device=device) * 2 - 1) * eps
    g = torch.randn(shape, generator=gen, device=device)
    d = int(np.prod(shape[1:]))
    r = eps * torch.rand(shape[0], generator=gen, device=device) ** (1.0 / d)
    return g / _view(flat_norm(g, "l2").clamp_min(1e-12), g) * _view(r, g)


def attack_loss(logits: torch.Tensor, goal: torch.Tensor, loss: str, targeted: bool) -> torch.Tensor:
    """Per-sample loss to *maximise*: cross-entropy or the Carlini-Wagner margin."""
    if loss == "ce":
        ce = F.cross_entropy(logits, goal, reduction="none")
        return -ce if targeted else ce
    goal_logit = logits.gather(1, goal[:, None]).squeeze(1)
    other = logits.clone()
    other.scatter_(1, goal[:, None], -torch.inf)
    margin = other.amax(dim=1) - goal_logit
    return -margin if targeted else margin


def is_fooled(logits: torch.Tensor, goal: torch.Tensor, targeted: bool) -> torch.Tensor:
    pred = logits.argmax(dim=1)
    return pred == goal if targeted else pred != goal


def to_tensor(a: np.ndarray, device: str, dtype: Any = torch.float32) -> torch.Tensor:
    return torch.as_tensor(a, device=device, dtype=dtype)
