"""Equation-solving extraction of a (multinomial) logistic regression (Tramèr et al. 2016,
"Stealing Machine Learning Models via Prediction APIs", arXiv:1609.02943, section 4.1).

A softmax model answers ``p = softmax(W x + b)``; the log-odds of each class against class 0 are
linear in the input, ``log p_j - log p_0 = (w_j - w_0)·x + (b_j - b_0)``. Softmax is invariant to
adding one vector to every row, so only these ``(d+1)·(k-1)`` parameters are identifiable (for a
binary model, ``d+1``: the weights and bias of the sigmoid). Each query gives ``k-1`` of the
equations, so ``d+1`` queries at affinely independent inputs determine every parameter: the linear
system is solved exactly (to numerical precision), not fitted. The surrogate has logits
``[0, (W_j - W_0) x + (b_j - b_0)]`` and therefore the target's probabilities.

The attack needs scores: a label-only target is refused, and so is a query budget smaller than
``d+1``, before any query is sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from pydantic import Field

from bastion.attacks.extraction.base import ExtractionParams, ModelExtraction
from bastion.core.repeated import query_cost
from bastion.core.run import RunContext
from bastion.core.targets.base import Target
from bastion.core.threat import ThreatModel
from bastion.errors import BastionRuntimeError, TargetError, UsageError


class EquationSolvingParams(ExtractionParams):
    step: float = Field(0.5, gt=0.0, description="offset of each query from the pool's mean, in units of each "
                                                   "feature's standard deviation (small keeps scores unsaturated)")


class EquationSolving(ModelExtraction):
    """Exact recovery of a logistic-regression or softmax-linear model from ``d+1`` score queries."""

    name = "equation-solving"
    Params = EquationSolvingParams

    @staticmethod
    def queries_needed(target: Target) -> int:
        """``d+1``: one query per unknown of each class's log-odds (``(d+1)·(k-1)`` equations in all)."""
        return int(np.prod(target.input_spec.shape)) + 1

    def _extract(self, target: Target, pool: np.ndarray, threat: ThreatModel, ctx: RunContext) -> Iterator[Target]:
        need = self.queries_needed(target)
        d, k = need - 1, target.n_classes
        if target.label_only:
            raise TargetError(f"equation solving needs the model's scores, but '{target.name}' answers labels only",
                              hint="it solves for the weights from the log-odds of the probabilities; use a "
                                   "learning-based extraction (knockoff, copycat) on a label-only model")
        left, cost = self.queries_left(target, threat), query_cost(target)
        if left is not None and left < need * cost:
            each = f", each asked {cost} times as the target is randomised" if cost > 1 else ""
            raise UsageError(f"equation solving needs {need * cost} queries (d+1 = {d}+1 inputs{each}, giving the "
                             f"(d+1)·(k-1) = {need * (k - 1)} equations of a {k}-class linear model) but the query "
                             f"budget leaves {left}", hint=f"raise the query budget to at least {need * cost}")
        x = self._design(target, pool)
        logp = target.predict_log_proba(x)
        if not np.all(np.isfinite(logp)):
            raise TargetError(f"'{target.name}' returned a probability of exactly 0 on a query; the log-odds are "
                              "not recoverable", hint="lower the step parameter so the queries stay near the data")
        a = np.concatenate([x.reshape(need, d).astype(np.float64), np.ones((need, 1))], axis=1)
        theta = np.linalg.solve(a, logp[:, 1:] - logp[:, :1])  # (d+1, k-1): weights over the bias row
        yield linear_target(theta[:d].T, theta[d], target)

    def _design(self, target: Target, pool: np.ndarray) -> np.ndarray:
        """``d+1`` affinely independent inputs: the pool's mean and one step along each feature
        (backwards where forwards leaves the input bounds)."""
        spec = target.input_spec
        flat = pool.reshape(len(pool), -1).astype(np.float64)
        lo, hi = (b.reshape(-1).astype(np.float64) for b in spec.bounds_arrays())
        center = np.clip(flat.mean(axis=0), lo, hi)
        std = flat.std(axis=0)
        step = self.params.step * np.where(std > 1e-6, std, 1.0)
        step = np.where(center + step <= hi, step, -step)
        if np.any((center + step < lo) | (center + step > hi)):
            raise UsageError("equation solving: the input bounds are too narrow for the query step",
                             hint="lower the step parameter")
        x = np.repeat(center[None], len(center) + 1, axis=0)
        x[np.arange(1, len(center) + 1), np.arange(len(center))] += step
        return x.reshape(len(x), *spec.shape).astype(np.float32)


def linear_target(weights: np.ndarray, bias: np.ndarray, target: Target) -> Target:
    """A white-box Target with logits ``[0, weights·x + bias]`` (float64 parameters), the target's
    classes and input spec: the recovered model."""
    import torch

    from bastion.core.targets.torch_target import TorchTarget

    class LogOdds(torch.nn.Module):
        def __init__(self, w: np.ndarray, b: np.ndarray) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.as_tensor(w, dtype=torch.float64))
            self.bias = torch.nn.Parameter(torch.as_tensor(b, dtype=torch.float64))

        def forward(self, z: Any) -> Any:
            odds = z.reshape(z.shape[0], -1).double() @ self.weight.T + self.bias
            return torch.cat([torch.zeros_like(odds[:, :1]), odds], dim=1)

    if weights.shape != (target.n_classes - 1, int(np.prod(target.input_spec.shape))):
        raise BastionRuntimeError(f"recovered weights of shape {weights.shape} do not fit the target")
    return TorchTarget(LogOdds(weights, bias), target.input_spec, classes=target.classes, copy=False,
                       name="surrogate (equation solving)")
