"""IBP training: Gowal et al. (2018), "On the Effectiveness of Interval Bound Propagation for
Training Verifiably Robust Models", arXiv:1810.12715, Section 3.2.

The objective mixes the clean cross-entropy with the cross-entropy of the worst-case logits that
interval bounds allow in the ε-box, ``κ·CE(z(x), y) + (1 − κ)·CE(ẑ(x, ε), y)`` where
``ẑ_k = −(lower bound of z_y − z_k)`` (:func:`bastion.certify.ibp.margin_bounds`). As in the paper,
ε grows linearly from 0 and κ falls from 1 to its final value over a ramp, after clean warm-up
epochs; a model trained this way is verified by the ``ibp`` certifier at far larger ε.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field

from bastion.certify.ibp import input_box, margin_bounds, sequential_layers
from bastion.core.defense import TrainingDefense
from bastion.core.params import Number, Params
from bastion.core.spec import InputSpec

if TYPE_CHECKING:
    import torch

    from bastion.core.training import TrainStep


class IBPTrainingParams(Params):
    eps: Number = Field(0.1, gt=0, description="L∞ ε the model is trained to be verified at (ε units of the input "
                                               "spec); the paper trains at 1.1× the ε it verifies.")
    norm: Literal["linf"] = Field("linf", description="Interval bounds are L∞ boxes.")
    kappa: Number = Field(0.5, ge=0, le=1, description="Final weight κ of the clean loss (it falls from 1).")
    warmup_epochs: int = Field(1, ge=0, description="Epochs of clean training first.")
    ramp_epochs: int = Field(10, ge=0, description="Epochs over which ε grows from 0 and κ falls to its final value.")


class IBPTraining(TrainingDefense):
    """``ibp``: train on the interval-bound worst case of the ε-box (Gowal et al., 2018). The model
    must be an ``nn.Sequential`` the ``ibp`` certifier can bound, without batch norm or dropout
    (their training-mode behaviour has no interval rule here).

    >>> from bastion.certify.ibp_training import IBPTraining
    >>> defense = IBPTraining(eps=0.1, ramp_epochs=10)
    """

    name = "ibp"
    Params = IBPTrainingParams

    def schedule(self, epoch: int) -> tuple[float, float]:
        """(ε, κ) in ``epoch`` (from 0): (0, 1) in the warm-up, then linear to (eps, kappa)."""
        p = self.params
        done = min(1.0, (epoch - p.warmup_epochs + 1) / p.ramp_epochs) if p.ramp_epochs else 1.0
        done = max(0.0, done) if epoch >= p.warmup_epochs else 0.0
        return p.eps * done, 1.0 - done * (1.0 - p.kappa)

    def eps_at(self, epoch: int) -> float:
        """The ε trained at in ``epoch`` (what ``bastion harden`` logs)."""
        return self.schedule(epoch)[0]

    def loss_hook(self, step: TrainStep) -> torch.Tensor:
        from torch.nn import functional as F

        eps, kappa = self.schedule(step.epoch)
        clean = F.cross_entropy(step.module(step.x), step.y, reduction="none")
        if eps == 0:
            return clean
        spec = step.spec or InputSpec(shape=tuple(step.x.shape[1:]), lower=-np.inf, upper=np.inf)
        lower, upper = input_box(spec, step.x, np.array([eps]))
        margins = margin_bounds(sequential_layers(step.module), lower[0], upper[0], step.y)
        robust = F.cross_entropy(-margins, step.y, reduction="none").to(clean.dtype)
        return kappa * clean + (1 - kappa) * robust
