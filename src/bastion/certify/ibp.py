"""Interval bound propagation: Gowal et al. (2018), "On the Effectiveness of Interval Bound
Propagation for Training Verifiably Robust Models", arXiv:1810.12715.

The L∞ ball of radius ε around an input (clipped to the input bounds) is a box; pushed through the
network layer by layer it stays inside a box: an affine layer ``Wx + b`` maps centre ``μ`` and
radius ``r`` to ``Wμ + b`` and ``|W|r`` (Section 3, Eq. 6), and a monotone layer (ReLU, max and
average pooling, flatten, sigmoid, tanh) maps the bounds ``[l, u]`` to ``[f(l), f(u)]``. The
prediction ``c`` is verified when, for every other class ``k``, the lower bound of the logit
margin ``z_c - z_k`` over the box is positive; the last linear layer is folded into the margin
(the specification ``e_c - e_k``, as in the paper) so the bound is that of ``(W_c - W_k)h + b_c -
b_k``, at least as tight as ``lower(z_c) - upper(z_k)``. A verified input has no adversarial
example in its ε-box: the bounds are sound (up to the float64 rounding they are computed in; the
model's own float32 rounding is not covered, as in the paper).

Supported: ``nn.Sequential`` containers of Linear, Conv1d/2d/3d, BatchNorm1d/2d/3d (eval mode,
running statistics), ReLU, LeakyReLU (slope >= 0), Sigmoid, Tanh, MaxPool1d/2d, AvgPool1d/2d,
AdaptiveAvgPool1d/2d, Flatten, Unflatten, Dropout (identity in eval mode) and Identity. Any other
layer, and a module whose ``forward`` is not a plain sequence, is refused with its name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field

from bastion.certify.base import Certifier
from bastion.core.params import EpsList, Params
from bastion.core.run import RunContext
from bastion.core.targets.base import Target
from bastion.errors import UsageError

if TYPE_CHECKING:
    import torch

    from bastion.core.spec import InputSpec

Bounds = tuple["torch.Tensor", "torch.Tensor"]


class IBPParams(Params):
    eps: EpsList = Field(..., description="L∞ ε to verify at: one number or a list, each >= 0, "
                                                            "in ε units of the input spec (feature scales).")
    batch_size: int = Field(128, ge=1, le=100_000, description="Inputs whose bounds are propagated together "
                                                               "(each with every ε).")


class IntervalBoundPropagation(Certifier):
    """``ibp``: verified robustness of a PyTorch ``nn.Sequential`` at L∞ ε (Gowal et al., 2018).

    The prediction is the model's own; the radius of an input is the largest ε of ``eps`` at which
    it is verified together with every smaller ε of the list (0 when none), so the certified
    accuracy at one of the ε is the verified robust accuracy there. Never abstains; one query per
    input (its prediction); the bounds are computed on the module's layers.

    >>> from bastion.certify.ibp import IntervalBoundPropagation
    >>> cert = IntervalBoundPropagation(eps=[0.01, 0.03, 0.1])
    """

    name = "ibp"
    norm = "linf"
    Params = IBPParams
    radii_param = "eps"

    def _certify(self, target: Target, x: np.ndarray, ctx: RunContext) -> tuple[np.ndarray, np.ndarray]:
        import torch

        layers = sequential_layers(_torch_module(target, self.label))
        eps = np.asarray(self.params.eps, np.float64)
        pred = np.empty(len(x), np.int64)
        verified = np.empty((len(eps), len(x)), bool)
        size = self.params.batch_size
        with torch.inference_mode():
            for start in range(0, len(x), size):
                ctx.check_cancelled()
                rows = slice(start, start + size)
                xb = torch.from_numpy(x[rows]).to(target.device)
                c = target.logits(xb).argmax(dim=1)
                lower, upper = input_box(target.input_spec, xb, eps)
                margin = margin_lower_bound(layers, lower.flatten(0, 1), upper.flatten(0, 1), c.repeat(len(eps)))
                pred[rows] = c.cpu().numpy()
                verified[:, rows] = (margin > 0).reshape(len(eps), -1).cpu().numpy()
                ctx.advance(len(xb))
        leading = np.cumprod(verified, axis=0).sum(axis=0)  # ε of the list verified, smallest first, no gap
        return pred, np.where(leading > 0, eps[np.maximum(leading - 1, 0)], 0.0)


def input_box(spec: InputSpec, x: torch.Tensor, eps: np.ndarray) -> Bounds:
    """The L∞ ε-box of each input for each ε, shape (len(eps), len(x), *shape), in float64: ε times
    each feature's scale, zero width for immutable features, clipped to the input bounds (and never
    excluding the input itself)."""
    import torch

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a, np.float64), device=x.device)

    lo, hi = (tensor(b) for b in spec.bounds_arrays())
    step = tensor(spec.scale_array() * spec.mutable_mask())
    width = tensor(eps).reshape(-1, *([1] * x.ndim)) * step
    xd = x.double()
    return (torch.maximum(xd - width, lo).minimum(xd), torch.minimum(xd + width, hi).maximum(xd))


def _monotone_types() -> tuple[type, ...]:
    from torch import nn

    return (nn.ReLU, nn.Sigmoid, nn.Tanh, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
            nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Identity)


def _affine_types() -> tuple[type, ...]:
    from torch import nn

    return (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


SUPPORTED = ("Linear, Conv1d/2d/3d, BatchNorm1d/2d/3d (eval), ReLU, LeakyReLU (slope >= 0), Sigmoid, Tanh, "
             "MaxPool1d/2d, AvgPool1d/2d, AdaptiveAvgPool1d/2d, Flatten, Unflatten, Dropout, Identity, "
             "inside nn.Sequential")


def sequential_layers(module: Any, path: str = "") -> list[Any]:
    """The layers of ``module`` in order, nested ``nn.Sequential`` flattened; an unsupported layer
    is refused with its path and class."""
    from torch import nn

    if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
        return [layer for name, child in module.named_children()
                for layer in sequential_layers(child, f"{path}.{name}" if path else name)]
    where = f"layer '{path}' ({type(module).__name__})" if path else f"the model ({type(module).__name__})"
    problem = ""
    if isinstance(module, nn.LeakyReLU) and module.negative_slope < 0:
        problem = f"a negative slope ({module.negative_slope}) is not monotone"
    elif isinstance(module, (nn.MaxPool1d, nn.MaxPool2d)) and module.return_indices:
        problem = "return_indices=True returns a tuple"
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.Dropout)) and module.training:
        problem = "the layer is in training mode, where batch statistics and dropout have no interval rule"
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)) and module.running_mean is None:
        problem = "batch norm needs running statistics (track_running_stats=True)"
    elif not isinstance(module, (*_monotone_types(), *_affine_types(), nn.LeakyReLU)):
        problem = "interval bounds are implemented for: " + SUPPORTED
    if problem:
        raise UsageError(f"certifier 'ibp' cannot bound {where}: {problem}",
                         hint="verify a feed-forward or convolutional network built as nn.Sequential of those "
                              "layers, or use certifier 'smoothing' (any architecture)")
    return [module]


def propagate(layers: list[Any], lower: torch.Tensor, upper: torch.Tensor) -> Bounds:
    """Interval bounds on the output of ``layers`` for inputs in the box ``[lower, upper]`` (float64)."""
    affine = _affine_types()
    for layer in layers:
        if isinstance(layer, affine):
            mid, rad = _affine(layer, (upper + lower) / 2, (upper - lower) / 2)
            lower, upper = mid - rad, mid + rad
        else:
            lower, upper = layer(lower), layer(upper)
    return lower, upper


def _affine(layer: Any, mid: torch.Tensor, rad: torch.Tensor) -> Bounds:
    """An affine layer ``Wx + b`` on centre and radius: ``Wμ + b`` and ``|W|r``."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    if isinstance(layer, nn.Linear):
        w = layer.weight.double()
        b = layer.bias.double() if layer.bias is not None else None
        return F.linear(mid, w, b), F.linear(rad, w.abs())
    if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        w = layer.weight.double()
        b = layer.bias.double() if layer.bias is not None else None
        return layer._conv_forward(mid, w, b), layer._conv_forward(rad, w.abs(), None)
    scale = torch.rsqrt(layer.running_var.double() + layer.eps)  # batch norm in eval mode: a per-channel affine
    shift = -layer.running_mean.double() * scale
    if layer.affine:
        scale, shift = scale * layer.weight.double(), shift * layer.weight.double() + layer.bias.double()
    shape = (1, -1, *([1] * (mid.ndim - 2)))
    return mid * scale.reshape(shape) + shift.reshape(shape), rad * scale.abs().reshape(shape)


def margin_bounds(layers: list[Any], lower: torch.Tensor, upper: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """Per input and class ``k``, a lower bound over the box ``[lower, upper]`` of the logit margin
    ``z_c - z_k`` for the input's class ``c`` (``cls``), shape (inputs, classes), 0 at ``k = c``. A
    final Linear layer is folded into the margin (Gowal et al., Section 3). Differentiable in the
    layers' parameters (IBP training)."""
    import torch
    from torch import nn

    head = layers[-1] if layers and isinstance(layers[-1], nn.Linear) else None
    lo, hi = propagate(layers[:-1] if head is not None else layers, lower, upper)
    lo, hi = lo.reshape(len(lo), -1), hi.reshape(len(hi), -1)
    if head is None:
        margin = lo.gather(1, cls[:, None]) - hi
    else:
        w = head.weight.double()
        b = head.bias.double() if head.bias is not None else torch.zeros(len(w), dtype=w.dtype, device=w.device)
        mid, rad = (hi + lo) / 2, (hi - lo) / 2
        diff = w[cls][:, None] - w[None]  # (inputs, classes, features): the specification e_c - e_k in the layer
        margin = (torch.einsum("nkf,nf->nk", diff, mid) + (b[cls][:, None] - b[None])
                  - torch.einsum("nkf,nf->nk", diff.abs(), rad))
    return margin.scatter(1, cls[:, None], 0.0)


def margin_lower_bound(layers: list[Any], lower: torch.Tensor, upper: torch.Tensor, cls: torch.Tensor
                       ) -> torch.Tensor:
    """Per input, a lower bound over the box of ``min_{k != c} z_c - z_k``: positive means verified."""
    import torch

    margin = margin_bounds(layers, lower, upper, cls)
    return margin.scatter(1, cls[:, None], torch.inf).min(dim=1).values


def _torch_module(target: Target, name: str) -> Any:
    from bastion.core.targets.torch_target import TorchTarget

    if not isinstance(target, TorchTarget):
        raise UsageError(f"certifier '{name}' propagates intervals through the layers of a PyTorch module: it needs "
                         f"a pytorch target, got a {target.kind} target",
                         hint="load the model as a PyTorch nn.Sequential (target.type: pytorch), or use certifier "
                              "'smoothing'")
    if target.output != "logits" or target.bpda is not None:
        what = "returns probabilities" if target.output != "logits" else "declares a BPDA substitute"
        raise UsageError(f"certifier '{name}' bounds the logits of the module, but this model {what}",
                         hint="certify the model without its softmax (output: logits) and without BPDA")
    return target.module
