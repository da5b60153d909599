"""Automatic straight-through gradients for a torch model whose own gradients are unusable.

BPDA (Athalye, Carlini & Wagner 2018, "Obfuscated Gradients Give a False Sense of Security",
arXiv:1802.00420) with the identity as the substitute, applied without a declaration to the common
steps that break gradients inside ``forward``:

- rounding (``round``, ``floor``, ``ceil``, ``trunc``, ``fix``, ``sign``, as functions or tensor
  methods): the value is the real step's, the backward pass the identity;
- functions singular at the edge of their domain (``sqrt``, ``rsqrt``, ``log``, ``log2``, ``log10``,
  a power with an exponent in (0, 1)): evaluated at the input clamped to at least the dtype's
  machine epsilon (the clamp itself straight-through), so ``sqrt(x) * sqrt(x)`` at ``x = 0`` has the
  gradient 1 of the identity it computes instead of NaN.

The :class:`StraightThroughView` applies these rules through a ``TorchFunctionMode`` while the
logits' values stay the real model's (a second, gradient-free forward pass), so a prediction or a
success is always the real model's. TorchScript code and in-place steps are not intercepted: their
gradients stay as they are, which a gradient-health probe then reports.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from bastion.core.defense import TargetView, straight_through
from bastion.core.targets.base import DifferentiableTarget

_ROUNDING = frozenset({
    torch.round, torch.floor, torch.ceil, torch.trunc, torch.fix, torch.sign,
    torch.Tensor.round, torch.Tensor.floor, torch.Tensor.ceil, torch.Tensor.trunc, torch.Tensor.fix,
    torch.Tensor.sign,
})
_SINGULAR = frozenset({
    torch.sqrt, torch.rsqrt, torch.log, torch.log2, torch.log10,
    torch.Tensor.sqrt, torch.Tensor.rsqrt, torch.Tensor.log, torch.Tensor.log2, torch.Tensor.log10,
})
_POW = frozenset({torch.pow, torch.Tensor.pow, torch.Tensor.__pow__})


def _float(v: Any) -> bool:
    return isinstance(v, torch.Tensor) and v.is_floating_point()


class StraightThrough(TorchFunctionMode):
    """Inside this mode, the rounding steps pass the identity's gradient and the singular
    functions are evaluated at an input clamped into their domain (see the module docstring)."""

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if args and _float(args[0]) and "out" not in kwargs:
            x = args[0]
            if func in _ROUNDING:
                return straight_through(func(*args, **kwargs), x)
            exponent = args[1] if len(args) > 1 else kwargs.get("exponent")
            if func in _SINGULAR or (func in _POW and isinstance(exponent, (int, float)) and 0 < exponent < 1):
                inside = straight_through(x.clamp_min(torch.finfo(x.dtype).eps), x)
                return func(inside, *args[1:], **kwargs)
        return func(*args, **kwargs)


class StraightThroughView(TargetView):
    """A torch target as white-box attacks see it under :class:`StraightThrough`: the real model's
    logits (one counted query per input), with the gradient of the same forward pass run inside
    the mode (uncounted)."""

    kind = "straight-through-view"

    def __init__(self, base: DifferentiableTarget) -> None:
        super().__init__(base, name=f"straight-through({base.name})", device=base.device)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        assert isinstance(self.base, DifferentiableTarget)
        with torch.no_grad():
            real = self.base.logits(x)
        with self.base.uncounted(), StraightThrough():
            surrogate = self.base.logits(x)
        return straight_through(real, surrogate)
