"""Projected Gradient Descent (Madry et al., 2018, "Towards Deep Learning Models Resistant to
Adversarial Attacks", arXiv:1706.06083), L∞ and L2, with random starts, restarts, a step-size
schedule and per-sample early stopping."""

from __future__ import annotations

import math

import numpy as np
import torch

from typing import Literal

from pydantic import Field

from bastion.attacks.base import MAX_RESTARTS, MAX_STEPS, AttackRun, EvasionAttack, GradientParams, register_attack
from bastion.attacks.evasion._torch import (
    BestCandidate, Geometry, ascent_direction, attack_loss, expected_score, is_fooled, project_ball, random_start,
    to_tensor)
from bastion.core.targets.base import DifferentiableTarget


class PGDParams(GradientParams):
    steps: int = Field(20, ge=1, le=MAX_STEPS, description="Gradient steps per restart.")
    step_size: float | None = Field(None, gt=0, description="Step size in ε units (default 2.5·ε/steps).")
    restarts: int = Field(1, ge=1, le=MAX_RESTARTS, description="Random restarts, run on samples still robust.")
    random_start: bool = Field(True, description="Start from a uniform point of the ε-ball.")
    schedule: Literal["constant", "cosine"] = Field("constant", description="Step-size schedule.")
    loss: Literal["ce", "margin"] = Field("ce", description="Cross-entropy or Carlini-Wagner margin.")


@register_attack
class PGD(EvasionAttack):
    """PGD: ``steps`` gradient-ascent steps of size ``step_size`` (default 2.5·ε/steps), each
    projected back onto the ε-ball and the input bounds. A sample stops as soon as it is fooled;
    ``restarts`` random restarts run only on samples still robust. On tables with integer or one-hot
    features the steps move the continuous relaxation, and a sample is fooled (and kept) only when
    its discrete projection inside the ε-ball (``Geometry.project``) is misclassified. On a
    randomised target (``run.expectation``) no sample stops: every restart runs every step on the
    EOT gradient, and each sample keeps the iterate of highest ``expected_score``.

    >>> import bastion
    >>> attack = bastion.attacks.PGD(eps=0.1, norm="linf", steps=20)
    """

    name = "pgd"

    Params = PGDParams

    def _alpha(self, t: int) -> float:
        base = self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps
        if self.schedule == "cosine":
            return base * (1 + math.cos(math.pi * t / self.steps))
        return base

    def _grad(self, logits: torch.Tensor, goal: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        (grad,) = torch.autograd.grad(attack_loss(logits, goal, self.loss, self.targeted).sum(), x_adv)
        return grad

    def _attack_batch(self, target: DifferentiableTarget, x: np.ndarray, goal: np.ndarray, rows: np.ndarray,
                      run: AttackRun) -> np.ndarray:
        dev = target.device
        geo = Geometry.of(target)
        x0, y0 = to_tensor(x, dev), to_tensor(goal, dev, torch.long)
        best = x0.clone()
        fooled = torch.zeros(len(x0), dtype=torch.bool, device=dev)
        keeper = BestCandidate.of(x0) if run.expectation else None
        streams = run.streams(rows, "start")
        for restart in range(self.restarts):
            idx = torch.nonzero(~fooled).squeeze(1)
            if len(idx) == 0:
                break
            xs, ys = x0[idx], y0[idx]
            start = streams.at(restart).subset(idx.cpu().numpy())
            delta = (random_start(start, tuple(xs.shape), self.eps, self.norm, dev) * geo.mask
                     if self.random_start and self.eps > 0 else torch.zeros_like(xs))
            delta = geo.delta_of(xs, geo.apply(xs, delta))
            for t in range(self.steps + 1):
                x_adv = geo.apply(xs, delta).requires_grad_(t < self.steps or geo.discrete is not None)
                logits = target.logits(x_adv)
                grad = None
                if geo.discrete is None:
                    x_chk, chk_logits = x_adv.detach(), logits.detach()
                    done = is_fooled(chk_logits, ys, self.targeted)
                else:  # fooled only where the discrete projection is; the search goes on in the relaxation
                    grad = self._grad(logits, ys, x_adv)  # the projection ranks discrete moves by it
                    x_chk, chk_logits = geo.checked(target, xs, x_adv, self.eps, self.norm, prefer=grad)
                    done = is_fooled(chk_logits, ys, self.targeted)
                if keeper is not None:  # randomised target: keep the best iterate, stop nothing
                    keeper.offer(idx, x_chk, expected_score(chk_logits, ys, self.targeted))
                    done = torch.zeros_like(done)
                if done.any():
                    hit = idx[done]
                    best[hit], fooled[hit] = x_chk[done], True
                if t == self.steps or done.all():
                    break
                if grad is None:
                    grad = self._grad(logits, ys, x_adv)
                keep = ~done
                xs, ys, idx, delta = xs[keep], ys[keep], idx[keep], delta[keep]
                g = grad[keep] * geo.scale * geo.mask
                delta = project_ball(delta + self._alpha(t) * ascent_direction(g, self.norm), self.eps, self.norm)
                delta = geo.delta_of(xs, geo.apply(xs, delta))
        return (best if keeper is None else keeper.x).cpu().numpy()
