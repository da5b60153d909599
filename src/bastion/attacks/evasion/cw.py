"""Carlini–Wagner L2 (Carlini & Wagner, 2017, "Towards Evaluating the Robustness of Neural Networks",
arXiv:1608.04644), batched, in tanh space, with a per-sample binary search on the constant ``c``.

Minimises ``||δ||² + c · max(Z_y - max_{i≠y} Z_i + κ, 0)`` (untargeted; targeted:
``max(max_{i≠t} Z_i - Z_t + κ, 0)``) with Adam over ``w``, where the input is
``lo + (hi - lo)(tanh(w) + 1)/2`` so it always lies inside the bounds (features without finite
bounds are optimised directly). ``δ`` is measured in ε units (each feature's scale). After each
of ``binary_steps`` rounds, ``c`` shrinks for samples that succeeded and grows (×10 until an upper
bound is known, then bisection) for the others. The defaults (c₀ = 0.01, 9 rounds, 1000 steps with
early abort) reach c up to 10⁶, so the attack works out of the box on models with large logits.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from pydantic import Field

from bastion.attacks.base import MAX_STEPS, AttackRun, EvasionAttack, GradientParams, register_attack
from bastion.attacks.evasion._torch import Geometry, to_tensor
from bastion.core.params import Eps
from bastion.core.targets.base import DifferentiableTarget


def _margin(logits: torch.Tensor, goal: torch.Tensor, targeted: bool, kappa: float) -> torch.Tensor:
    """The C&W f6 term before the hinge: ≤ 0 (with margin κ) means the attack succeeded."""
    z_goal = logits.gather(1, goal[:, None]).squeeze(1)
    other = logits.scatter(1, goal[:, None], -torch.inf).amax(dim=1)
    return (other - z_goal + kappa) if targeted else (z_goal - other + kappa)


class CWParams(GradientParams):
    eps: Eps = Field(0.0, description="Ignored: a minimal-perturbation attack.")
    norm: Literal["l2"] = Field("l2", description="cw is an L2 attack (for L∞ use deepfool or min-eps).")
    confidence: float = Field(0.0, ge=0, description="Margin κ the adversarial class must win by.")
    initial_const: float = Field(1e-2, gt=0, description="First constant c of the binary search.")
    binary_steps: int = Field(9, ge=1, le=100, description="Rounds of the binary search on c.")
    max_iter: int = Field(1000, ge=1, le=MAX_STEPS, description="Adam steps per round.")
    learning_rate: float = Field(1e-2, gt=0, description="Adam learning rate.")
    abort_early: bool = Field(True, description="Stop a round when the loss stops falling.")


@register_attack
class CarliniWagnerL2(EvasionAttack):
    """C&W L2 with a binary search on the constant, minimal-perturbation (``eps`` is ignored).

    >>> import bastion
    >>> attack = bastion.attacks.CarliniWagnerL2(binary_steps=9, max_iter=1000)
    """

    name = "cw"
    minimal = True

    Params = CWParams

    def _attack_batch(self, target: DifferentiableTarget, x: np.ndarray, goal: np.ndarray, rows: np.ndarray,
                      run: AttackRun) -> np.ndarray:
        dev = target.device
        geo = Geometry.of(target)
        x0, y0 = to_tensor(x, dev), to_tensor(goal, dev, torch.long)
        n = len(x0)
        finite = torch.isfinite(geo.lo) & torch.isfinite(geo.hi) & (geo.hi > geo.lo)
        lo = torch.where(finite, geo.lo, torch.zeros_like(geo.lo))
        span = torch.where(finite, geo.hi - geo.lo, torch.ones_like(geo.lo))
        unit = ((x0 - lo) / span * 2 - 1).clamp(-1 + 1e-6, 1 - 1e-6)
        w0 = torch.where(finite, torch.atanh(unit), x0)

        def to_input(w: torch.Tensor) -> torch.Tensor:
            xt = torch.where(finite, lo + span * (torch.tanh(w) + 1) / 2, w)
            return torch.where(geo.mask > 0, xt, x0)

        const = torch.full((n,), self.initial_const, device=dev)
        lower = torch.zeros(n, device=dev)
        upper = torch.full((n,), torch.inf, device=dev)
        best_l2 = torch.full((n,), torch.inf, device=dev)
        best = x0.clone()
        check_every = max(self.max_iter // 10, 1)
        for _ in range(self.binary_steps):
            w = w0.clone().requires_grad_(True)
            opt = torch.optim.Adam([w], lr=self.learning_rate)
            succeeded = torch.zeros(n, dtype=torch.bool, device=dev)
            prev = torch.inf
            for it in range(self.max_iter):
                x_adv = to_input(w)
                l2 = ((x_adv - x0) / geo.scale).flatten(1).pow(2).sum(1)
                logits = target.logits(x_adv)
                margin = _margin(logits, y0, self.targeted, self.confidence)
                loss = (l2 + const * margin.clamp_min(0)).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
                with torch.no_grad():
                    ok = (margin < 0) if self.confidence > 0 else _fooled(logits, y0, self.targeted)
                    succeeded |= ok
                    improve = ok & (l2 < best_l2)
                    best_l2 = torch.where(improve, l2, best_l2)
                    best[improve] = x_adv.detach()[improve]
                if self.abort_early and (it + 1) % check_every == 0:
                    value = float(loss.detach())
                    if value > prev * 0.9999:
                        break
                    prev = value
            upper = torch.where(succeeded, torch.minimum(upper, const), upper)
            lower = torch.where(succeeded, lower, torch.maximum(lower, const))
            const = torch.where(torch.isfinite(upper), (lower + upper) / 2, const * 10)
        return best.cpu().numpy()


def _fooled(logits: torch.Tensor, goal: torch.Tensor, targeted: bool) -> torch.Tensor:
    pred = logits.argmax(dim=1)
    return pred == goal if targeted else pred != goal
