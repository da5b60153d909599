"""PGD adversarial training (Madry et al., 2018, "Towards Deep Learning Models Resistant to
Adversarial Attacks", arXiv:1706.06083): every batch is replaced by its PGD adversarial version
(cross-entropy, uniform random start in the ε-ball), and the model is trained on it."""

from __future__ import annotations

import torch

from bastion.attacks.evasion.training.base import AdversarialTraining
from bastion.core.training import TrainStep


class PGDTraining(AdversarialTraining):
    """``pgd-at``: train on PGD adversarial inputs (``steps`` steps of ``step_size``, default
    2.5·ε/steps, from a uniform random start), the min-max objective of Madry et al. (2018).

    >>> from bastion.attacks.evasion.training.madry import PGDTraining
    >>> defense = PGDTraining(eps=0.1, steps=10)
    """

    name = "pgd-at"

    def batch_hook(self, step: TrainStep) -> tuple[torch.Tensor, torch.Tensor]:
        return self.craft(step), step.y
