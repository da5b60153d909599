"""Clean-label poisoning by feature collision (Shafahi et al. 2018, "Poison frogs! Targeted clean-label
poisoning attacks on neural networks", arXiv:1804.00792).

The attacker wants chosen target inputs (test records of another class) answered as ``base_class``
without writing a single wrong label. Each poison starts from a training record of the base class
(optionally watermarked with its target at ``opacity``, as the paper does for end-to-end training)
and is moved so that its features, in the attacker's model, collide with the target's while the
input stays close to the base record (Algorithm 1: a forward step on ``||f(p) - f(t)||²``, then the
proximal step ``p = (p + λβ b) / (1 + λβ)``, here with ``β = beta * (features / input size)²`` as
the paper scales it, and the forward step taken by Adam so that one step size fits any feature
scale). The poisons keep their base-class labels: a reviewer sees correctly labelled records.

``f`` is the attacker's model (a white-box Target, e.g. trained on similar data): the input of a
torch model's last ``nn.Linear`` (the penultimate layer the paper uses), else its logits.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from bastion.attacks.poisoning.base import PoisoningAttack, Trigger
from bastion.core.params import Number, Params
from bastion.core.run import RunContext
from bastion.core.spec import InputSpec
from bastion.core.threat import ThreatModel
from bastion.errors import UsageError


class FeatureCollisionParams(Params):
    base_class: int = Field(..., ge=0, description="Class the targets should be answered as (the poisons' label).")
    max_poisons: int = Field(50, ge=1, description="At most this many poisons (within the threat's fraction).")
    steps: int = Field(300, ge=1, description="Optimisation steps.")
    lr: Number = Field(0.01, gt=0, description="Step size of the forward (feature) step.")
    beta: Number = Field(0.25, ge=0, description="Weight of staying close to the base record (beta_0 of the paper).")
    opacity: Number = Field(0.3, ge=0, lt=1, description="Watermark: the base starts as (1 - opacity) base + opacity "
                                                         "target (0: none).")


class FeatureCollision(PoisoningAttack):
    """Poisons that look like base-class records and collide with the targets in feature space."""

    name = "feature-collision"
    clean_label = True
    Params = FeatureCollisionParams

    def __init__(self, model: Any, targets: np.ndarray, **params: Any) -> None:
        super().__init__(**params)
        if not getattr(model, "white_box", False):
            raise UsageError("feature-collision needs the attacker's model with gradients (a white-box Target)")
        self.model, self.targets = model, np.asarray(targets, np.float32)
        if self.targets.ndim < 2 or len(self.targets) == 0:
            raise UsageError("feature-collision: targets must be one or more inputs, shape (n, *input shape)")

    def goal(self) -> tuple[np.ndarray, int]:
        """The inputs the attacker wants misclassified, and the class they want."""
        return self.targets, self.params.base_class  # type: ignore[attr-defined]

    def _poison(self, x: np.ndarray, y: np.ndarray, n_poison: int, threat: ThreatModel, spec: InputSpec,
                ctx: RunContext) -> tuple[np.ndarray, np.ndarray, np.ndarray, Trigger | None]:
        import torch

        p: FeatureCollisionParams = self.params  # type: ignore[assignment]
        pool = np.flatnonzero(y == p.base_class)
        if len(pool) == 0:
            raise UsageError(f"feature-collision: no training record of base_class {p.base_class}")
        k = min(n_poison, p.max_poisons, len(pool))
        idx = np.sort(ctx.rng("bases").choice(pool, k, replace=False))
        feats = _features(self.model)
        lo, hi = (torch.as_tensor(b) for b in spec.bounds_arrays())
        target_x = torch.as_tensor(self.targets[np.arange(k) % len(self.targets)])
        with torch.no_grad(), self.model.uncounted():
            goal = feats(target_x)
        base = (1 - p.opacity) * torch.as_tensor(x[idx]) + p.opacity * target_x
        beta = p.beta * (goal[0].numel() / base[0].numel()) ** 2
        poison = base.clone().requires_grad_(True)
        opt = torch.optim.Adam([poison], lr=p.lr)
        with self.model.uncounted():
            for _ in range(p.steps):
                ctx.check_cancelled()
                opt.zero_grad()
                ((feats(poison) - goal) ** 2).sum().backward()
                opt.step()
                with torch.no_grad():  # the proximal (backward) step, then the input bounds
                    poison.copy_(((poison + p.lr * beta * base) / (1 + p.lr * beta)).clamp(lo, hi))
        x[idx] = poison.detach().numpy()
        return x, y, idx, None


def _features(model: Any) -> Any:
    """A differentiable function from inputs to the model's penultimate features (or logits)."""
    module = getattr(model, "module", None)
    if module is None:
        return model.logits
    import torch

    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        return model.logits
    for q in module.parameters():
        q.requires_grad_(False)

    def penultimate(x: Any) -> Any:
        seen: list[Any] = []
        hook = linears[-1].register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
        try:
            module(x)
        finally:
            hook.remove()
        return seen[0].reshape(len(x), -1)
    return penultimate
