"""What the adversarial-training defenses share: their parameters (ε, norm, steps, step size, an
ε warm-up), the inner maximisation — projected gradient ascent on a loss inside the ε-ball and the
input bounds, built from the attacks' own primitives (``Geometry``, ``project_ball``,
``ascent_direction``) — and a PGD accuracy for early-stopping checks and training logs.

Adversarial inputs are crafted with the module in eval mode (as in Madry et al. 2018 and Zhang et
al. 2019: batch-norm statistics are not moved by the attack) and only input gradients are taken.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from bastion.attacks.base import MAX_STEPS
from bastion.attacks.evasion._torch import Geometry, ascent_direction, project_ball
from bastion.core.defense import TrainingDefense
from bastion.core.params import Norm, Number, Params
from bastion.core.spec import InputSpec
from bastion.core.training import TrainStep

Start = Literal["uniform", "gaussian", "none"]


class AdversarialTrainingParams(Params):
    eps: Number = Field(0.1, gt=0, description="Perturbation budget ε the model is trained to resist, in each "
                                               "feature's scale (> 0).")
    norm: Norm = Field("linf", description="Norm of the perturbation: linf or l2.")
    steps: int = Field(10, ge=1, le=MAX_STEPS, description="Gradient steps of the inner maximisation (>= 1).")
    step_size: Number | None = Field(None, gt=0, description="Step size at full ε, in each feature's scale "
                                                             "(default 2.5·ε/steps); scaled with ε in the warm-up.")
    warmup_epochs: int = Field(0, ge=0, le=10_000, description="Epochs over which ε grows linearly to its value "
                                                                "(0: full ε from the start).")


class AdversarialTraining(TrainingDefense):
    """Base of the adversarial-training defenses: the ε of an epoch (warm-up), the geometry of the
    data and :meth:`craft`, the adversarial inputs a defense trains on (tests check them)."""

    Params: ClassVar[type[Params]] = AdversarialTrainingParams
    start: ClassVar[Start] = "uniform"

    def eps_at(self, epoch: int) -> float:
        """ε at ``epoch``: linear from ε/warmup_epochs to ε over the warm-up epochs, then ε."""
        p = self.params
        return p.eps * min(1.0, (epoch + 1) / p.warmup_epochs) if p.warmup_epochs else p.eps

    def step_size_for(self, eps: float) -> float:
        p = self.params
        return p.step_size * eps / p.eps if p.step_size is not None else 2.5 * eps / p.steps

    def craft(self, step: TrainStep) -> torch.Tensor:
        """The adversarial inputs for ``step``'s batch (to train on, or for the objective's second term)."""
        eps = self.eps_at(step.epoch)
        geo = geometry(step.state, step.spec, step.x.device)
        loss = self.inner_loss(step)
        return ascend(step.module, loss, step.x, geo, eps=eps, norm=self.params.norm, steps=self.params.steps,
                      step_size=self.step_size_for(eps), generator=step.generator, start=self.start)

    def inner_loss(self, step: TrainStep) -> Any:
        """The per-sample loss the inner maximisation ascends, as a function of the logits
        (cross-entropy to the labels by default)."""
        y = step.y
        return lambda logits: cross_entropy_to(logits, y)


def cross_entropy_to(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy to class indices or soft-label rows."""
    if y.dim() == 2:
        return -(y * F.log_softmax(logits, dim=1)).sum(dim=1)
    return F.cross_entropy(logits, y, reduction="none")


def geometry(state: dict[str, Any], spec: InputSpec | None, device: torch.device | str) -> Geometry:
    """The data's bounds, ε scale and mutable mask as tensors, built once per training run."""
    key = ("adversarial-training", "geometry", str(device))
    if key not in state:
        if spec is None:
            raise ValueError("adversarial training needs the data's input spec (TrainStep.spec)")
        state[key] = Geometry.from_spec(spec, str(device))
    return state[key]


def random_delta(shape: tuple[int, ...], eps: float, norm: str, generator: torch.Generator, start: Start,
                 device: torch.device | str) -> torch.Tensor:
    """A starting perturbation (ε units) drawn from ``generator``: uniform in the ε-ball, a small
    Gaussian (0.001, TRADES' start) or zero."""
    if start == "none":
        return torch.zeros(shape, device=device)
    if start == "gaussian":
        return (torch.randn(shape, generator=generator) * 1e-3).to(device)
    if norm == "linf":
        return ((torch.rand(shape, generator=generator) * 2 - 1) * eps).to(device)
    g = torch.randn(shape, generator=generator)
    d = g[0].numel()
    r = eps * torch.rand((shape[0],), generator=generator) ** (1.0 / d)
    return (g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (len(shape) - 1))
            * r.view(-1, *[1] * (len(shape) - 1))).to(device)


def ascend(module: Any, loss: Any, x: torch.Tensor, geo: Geometry, *, eps: float, norm: str, steps: int,
           step_size: float, generator: torch.Generator, start: Start = "uniform") -> torch.Tensor:
    """Projected gradient ascent (Madry et al. 2018) of ``loss(module(x'))`` over ``x'`` in the
    ε-ball around ``x`` and inside the bounds; ``steps`` steps of ``step_size`` (ε units) from
    ``start``. The module is put in eval mode and left there (the caller trains it)."""
    module.eval()
    delta = random_delta(tuple(x.shape), eps, norm, generator, start, x.device) * geo.mask
    if norm == "linf":
        return _ascend_linf(module, loss, x, geo, delta.clamp(-eps, eps), eps, steps, step_size)
    delta = project_ball(delta, eps, norm)
    delta = geo.delta_of(x, geo.apply(x, delta))
    for _ in range(steps):
        x_adv = geo.apply(x, delta).requires_grad_(True)
        (grad,) = torch.autograd.grad(loss(module(x_adv)).sum(), x_adv)
        delta = project_ball(delta + step_size * ascent_direction(grad * geo.scale * geo.mask, norm), eps, norm)
        delta = geo.delta_of(x, geo.apply(x, delta))
    return geo.apply(x, delta).detach()


def _ascend_linf(module: Any, loss: Any, x: torch.Tensor, geo: Geometry, delta: torch.Tensor, eps: float,
                 steps: int, step_size: float) -> torch.Tensor:
    """The L∞ case in input space, the same iterates as the general loop: the ε-box intersected
    with the bounds is one per-coordinate interval, so each step is a sign step and one clamp
    (``project_ball`` then ``Geometry.apply`` fused; few kernels per step, which is what counts on
    a GPU for small models)."""
    radius = eps * geo.scale
    lo, hi = torch.maximum(x - radius, geo.lo), torch.minimum(x + radius, geo.hi)
    step = step_size * geo.scale * geo.mask
    x_adv = torch.clamp(x + geo.scale * delta, lo, hi)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(loss(module(x_adv)).sum(), x_adv)
        x_adv = torch.clamp(torch.addcmul(x_adv.detach(), step, grad.sign()), lo, hi)
    return x_adv.detach()


def clean_accuracy(module: Any, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Accuracy of ``module`` on ``(x, y)`` (labels as class indices or rows of probabilities).
    Leaves the module in eval mode."""
    labels = y.argmax(dim=1) if y.dim() == 2 else y
    module.eval()
    with torch.no_grad():
        right = sum(int((module(x[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]).sum())
                    for i in range(0, len(x), batch_size))
    return right / len(x)


def pgd_accuracy(module: Any, x: torch.Tensor, y: torch.Tensor, geo: Geometry, *, eps: float, norm: str,
                 steps: int, generator: torch.Generator, batch_size: int = 512) -> tuple[float, float]:
    """Clean and PGD accuracy (cross-entropy, random start, step 2.5·ε/steps) of ``module`` on
    ``(x, y)`` (labels as class indices): the figure of training logs and early-stopping checks.
    Leaves the module in eval mode."""
    clean = robust = 0
    labels = y.argmax(dim=1) if y.dim() == 2 else y
    module.eval()
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size], labels[i:i + batch_size]
        with torch.no_grad():
            clean += int((module(xb).argmax(1) == yb).sum())
        adv = ascend(module, lambda z, t=yb: F.cross_entropy(z, t, reduction="none"), xb, geo, eps=eps, norm=norm,
                     steps=steps, step_size=2.5 * eps / steps, generator=generator)
        with torch.no_grad():
            robust += int((module(adv).argmax(1) == yb).sum())
    return clean / len(x), robust / len(x)
