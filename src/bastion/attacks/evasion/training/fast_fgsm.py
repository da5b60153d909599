"""Fast adversarial training: FGSM from a random start (Wong, Rice & Kolter, 2020, "Fast is better
than free: Revisiting adversarial training", arXiv:2001.03994), with the paper's guard against
catastrophic overfitting: after each epoch, PGD accuracy on a held-out minibatch; when it falls by
more than ``collapse_drop`` from the previous epoch's, training stops and the previous epoch's
weights are restored."""

from __future__ import annotations

import copy
import logging

import torch
from pydantic import Field

from bastion.attacks.base import MAX_STEPS
from bastion.attacks.evasion.training.base import AdversarialTraining, AdversarialTrainingParams, geometry, pgd_accuracy
from bastion.core.params import Number
from bastion.core.training import EpochEnd, TrainStep

log = logging.getLogger(__name__)


class FastFGSMParams(AdversarialTrainingParams):
    steps: int = Field(1, ge=1, le=1, description="One FGSM step (fixed).")
    step_size: Number | None = Field(None, gt=0, description="Step size α at full ε (default 1.25·ε, the "
                                                             "paper's choice).")
    check_steps: int = Field(10, ge=1, le=MAX_STEPS, description="PGD steps of the catastrophic-overfitting check.")
    check_size: int = Field(256, ge=1, le=100_000, description="Held-out samples the check attacks.")
    collapse_drop: Number = Field(0.2, gt=0, le=1, description="A fall of PGD accuracy larger than this from one "
                                                               "epoch to the next is a collapse.")


class FastFGSMTraining(AdversarialTraining):
    """``fast-fgsm``: train on FGSM inputs taken from a uniform random start in the ε-ball with
    step α = 1.25·ε (projected back onto the ball). After each epoch, PGD accuracy on
    ``check_size`` held-out samples (the request's validation data, else the epoch's last batch);
    a fall of more than ``collapse_drop`` (catastrophic overfitting) stops training and restores
    the weights of the previous epoch, and ``state["stopped"]`` says so.

    >>> from bastion.attacks.evasion.training.fast_fgsm import FastFGSMTraining
    >>> defense = FastFGSMTraining(eps=0.1)
    """

    name = "fast-fgsm"
    Params = FastFGSMParams

    def step_size_for(self, eps: float) -> float:
        p = self.params
        return p.step_size * eps / p.eps if p.step_size is not None else 1.25 * eps

    def batch_hook(self, step: TrainStep) -> tuple[torch.Tensor, torch.Tensor]:
        step.state[(self.name, "last")] = (step.x, step.y)
        return self.craft(step), step.y

    def epoch_hook(self, end: EpochEnd) -> bool:
        p = self.params
        x, y = (end.x_val, end.y_val) if end.x_val is not None else end.state[(self.name, "last")]
        geo = geometry(end.state, end.spec, x.device)
        _, acc = pgd_accuracy(end.module, x[:p.check_size], y[:p.check_size], geo, eps=p.eps, norm=p.norm,
                              steps=p.check_steps, generator=end.generator)
        key = (self.name, "previous")
        previous = end.state.get(key)
        if previous is not None and previous[0] - acc > p.collapse_drop:
            end.module.load_state_dict(previous[1])
            end.state["stopped"] = (f"catastrophic overfitting at epoch {end.epoch + 1}: PGD accuracy on "
                                    f"{min(len(x), p.check_size)} held-out inputs fell from {previous[0]:.3f} to "
                                    f"{acc:.3f}; stopped and restored the weights of epoch {end.epoch}")
            log.warning("%s", end.state["stopped"])
            return True
        end.state[key] = (acc, copy.deepcopy(end.module.state_dict()))
        return False
