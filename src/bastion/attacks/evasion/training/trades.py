"""TRADES (Zhang et al., 2019, "Theoretically Principled Trade-off between Robustness and
Accuracy", arXiv:1901.08573): minimise the clean cross-entropy plus β times the KL divergence
between the model's outputs on the clean input and on an adversarial input that maximises it."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field

from bastion.attacks.evasion.training.base import (
    AdversarialTraining, AdversarialTrainingParams, Start, cross_entropy_to)
from bastion.core.params import Number
from bastion.core.training import TrainStep


class TradesParams(AdversarialTrainingParams):
    beta: Number = Field(6.0, gt=0, description="Weight β of the robustness (KL) term (the paper's 6 by default).")


class Trades(AdversarialTraining):
    """``trades``: per sample, ``CE(f(x), y) + β · KL(f(x) ‖ f(x'))`` where ``x'`` maximises the KL
    term inside the ε-ball (``steps`` steps from a small Gaussian start, as in the paper's code).

    >>> from bastion.attacks.evasion.training.trades import Trades
    >>> defense = Trades(eps=0.1, beta=6.0)
    """

    name = "trades"
    Params = TradesParams
    start: ClassVar[Start] = "gaussian"

    def inner_loss(self, step: TrainStep) -> Any:
        step.module.eval()
        with torch.no_grad():
            clean = F.softmax(step.module(step.x), dim=1)
        return lambda logits: _kl(clean, F.log_softmax(logits, dim=1))

    def loss_hook(self, step: TrainStep) -> torch.Tensor:
        x_adv = self.craft(step)
        step.module.train()
        clean, adv = step.module(step.x), step.module(x_adv)  # two passes: batch-norm statistics apart
        return cross_entropy_to(clean, step.y) + self.params.beta * _kl(F.softmax(clean, dim=1),
                                                                       F.log_softmax(adv, dim=1))


def _kl(p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(p ‖ q), ``q`` given as log-probabilities."""
    return (p * (torch.log(p.clamp_min(1e-12)) - log_q)).sum(dim=1)
