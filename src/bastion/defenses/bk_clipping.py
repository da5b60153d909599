"""One-pass per-sample gradient clipping for DP-SGD: book-keeping (Bu, Wang, Zha and Karypis 2023,
"Differentially Private Optimization on Large Model at Small Cost", arXiv:2210.00038).

A single backward pass gives each layer's output gradients; with the inputs kept from the forward
pass they give every sample's gradient norm (for a Linear layer on one vector per sample,
``|g_i| |a_i|`` without forming the gradient; for a convolution, from the per-sample gradient of
its small kernel) and then the sum of the clipped per-sample gradients, ``sum_i c_i g_i a_iᵀ`` with
``c_i = min(1, C / |∇_i|)``, as one weighted matrix product. Opacus's ghost clipping needs a second
backward pass for that sum. Only models whose trainable parameters all sit in ``nn.Linear``,
``nn.Conv2d`` (one group, zero padding), ``nn.GroupNorm`` and ``nn.LayerNorm`` layers are handled
(:func:`supported`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from bastion.errors import UsageError


def _layer_ok(m: nn.Module) -> bool:
    if type(m) in (nn.Linear, nn.GroupNorm, nn.LayerNorm):
        return True
    return (type(m) is nn.Conv2d and m.groups == 1 and m.padding_mode == "zeros"
            and not isinstance(m.padding, str))


def supported(module: nn.Module) -> bool:
    """Whether every trainable parameter of ``module`` belongs to a layer this module handles."""
    return all(_layer_ok(m) for m in module.modules()
               if any(p.requires_grad for p in m.parameters(recurse=False)))


class BookKeeper:
    """Keeps each trainable layer's input and output of one step's forward pass (while
    ``active``) and turns the step's per-sample losses into the sum of clipped per-sample
    gradients in each parameter's ``.grad`` (:meth:`backward`). One per training run."""

    def __init__(self, module: nn.Module, max_grad_norm: float) -> None:
        self.max_grad_norm = float(max_grad_norm)
        self.layers = [m for m in module.modules() if any(p.requires_grad for p in m.parameters(recurse=False))]
        self.active = False
        self.kept: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
        self._handles = [m.register_forward_hook(self._keep) for m in self.layers]

    def _keep(self, m: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        if not self.active or not torch.is_grad_enabled():
            return
        if m in self.kept:
            raise UsageError(f"dp-sgd: the layer {type(m).__name__} runs twice in one forward pass; per-sample "
                             f"clipping needs each trainable layer once per pass",
                             hint="use a separate layer for each use (parameter sharing is not supported)")
        self.kept[m] = (inputs[0].detach(), output)

    @contextmanager
    def step(self) -> Iterator[None]:
        """The context of one step's forward and backward pass: inputs and outputs kept."""
        self.active = True
        try:
            yield
        finally:
            self.active, self.kept = False, {}

    def close(self) -> None:
        """Remove the forward hooks."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def backward(self, losses: torch.Tensor) -> None:
        """Set ``.grad`` of every trainable parameter to ``sum_i min(1, C / |∇_i|) ∇_i``, ``∇_i``
        the gradient of ``losses[i]`` (zero for an empty batch)."""
        kept, self.kept = self.kept, {}
        n = len(losses)
        layers = [m for m in self.layers if m in kept] if n else []
        grads = torch.autograd.grad(losses.sum(), [kept[m][1] for m in layers], allow_unused=True) if n else ()
        sq = losses.new_zeros(n, dtype=torch.float32).detach()
        parts = []
        for m, g in zip(layers, grads, strict=True):
            if g is not None:
                part = _per_sample(m, kept[m][0], g.detach(), n)
                sq += part[0]
                parts.append((m, part))
        coef = (self.max_grad_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)  # Opacus's clipping factor
        done = set()
        for m, (_, kind, a, g, gb) in parts:
            if kind == "outer":  # a: (n, in), g: (n, out): sum_i c_i g_i a_iᵀ
                w = torch.mm((g * coef[:, None]).t(), a)
            else:  # a: per-sample weight gradients (n, ...)
                w = torch.tensordot(coef, a, dims=1)
            _set(m.weight, w.view_as(m.weight))
            if m.bias is not None and m.bias.requires_grad:
                _set(m.bias, torch.tensordot(coef, gb, dims=1).view_as(m.bias))
            done.add(m)
        for m in self.layers:  # layers not run (or not on the loss's path): zero gradient
            if m not in done:
                for p in m.parameters(recurse=False):
                    if p.requires_grad:
                        p.grad = torch.zeros_like(p)


def _set(p: torch.Tensor, grad: torch.Tensor) -> None:
    if p.requires_grad:
        p.grad = grad.to(p.dtype)


def _per_sample(m: nn.Module, a: torch.Tensor, g: torch.Tensor, n: int) -> tuple[Any, ...]:
    """(squared per-sample gradient norm of the layer, kind, weight factors, output gradients,
    per-sample bias gradients)."""
    bias = m.bias is not None and m.bias.requires_grad
    weight = m.weight.requires_grad
    if isinstance(m, nn.Linear):
        a3, g3 = a.reshape(n, -1, a.shape[-1]), g.reshape(n, -1, g.shape[-1])
        gb = g3.sum(1)
        if a3.shape[1] == 1:  # one vector per sample: |g_i a_iᵀ| = |g_i| |a_i|
            a2, g2 = a3[:, 0], g3[:, 0]
            gg = (g2 * g2).sum(1)
            sq = (gg * (a2 * a2).sum(1) if weight else 0) + (gg if bias else 0)
            return sq, "outer", a2, g2, gb
        per = torch.bmm(g3.transpose(1, 2), a3)  # (n, out, in)
    elif isinstance(m, nn.GroupNorm | nn.LayerNorm):  # per-sample: sum over positions of g * normalised input
        if isinstance(m, nn.GroupNorm):
            norm, width = F.group_norm(a, m.num_groups, eps=m.eps), m.num_channels
            per, gb = ((g * norm).reshape(n, width, -1).sum(2), g.reshape(n, width, -1).sum(2))
        else:
            shape = tuple(m.normalized_shape)
            norm = F.layer_norm(a, shape, eps=m.eps)
            per, gb = (g * norm).reshape(n, -1, *shape).sum(1), g.reshape(n, -1, *shape).sum(1)
        sq = ((per * per).flatten(1).sum(1) if weight else 0) + ((gb * gb).flatten(1).sum(1) if bias else 0)
        return sq, "per-sample", per, g, gb
    else:
        cols = F.unfold(a, m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)
        g3 = g.reshape(n, m.out_channels, -1)
        gb = g3.sum(2)
        per = torch.bmm(g3, cols.transpose(1, 2))  # (n, out, in·k·k)
    sq = ((per * per).sum((1, 2)) if weight else 0) + ((gb * gb).sum(1) if bias else 0)
    return sq, "per-sample", per, g3, gb
