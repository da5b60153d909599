"""Model inversion: reconstruct a representative input of every class from the model alone
(Fredrikson, Jha & Ristenpart 2015, "Model Inversion Attacks that Exploit Confidence Information
and Basic Countermeasures", CCS; MI-Face, their Algorithm 1).

For every class c at once, gradient descent on the input minimises

    cost_c(x) = 1 - Pr(c | x) + tv · TV(x)

(TV: the mean total variation, a smoothness prior for images, off by default as in the paper's
MI-Face on softmax and MLP models)

from a blank start (x0 = the lower bounds, the paper's 0), each step projected back into the
input bounds (the paper's PROCESS), keeping each class's lowest-cost input; a class stops when its
cost falls to ``gamma`` (γ) or has not improved for ``patience`` steps (β). Steps have a fixed
size ``step_size`` (λ) as a share of each feature's range, along the gradient normalised to unit
RMS, so one λ suits any model's scale.

- ``mi-face``: white-box, gradients through the target's ``adaptive_view()``; each step is one
  query per class. On a target that declares itself randomised (``randomized = True``) and whose
  view does not already average its draws, gradients are taken in expectation over ``eot_iter``
  draws (EOT, Athalye et al. 2018, arXiv:1707.07397; each draw a query), seeded from the run.
- ``mi-face-scores``: scores only, the model's gradient estimated from queries (NES with antithetic
  Gaussian directions, Ilyas et al. 2018, arXiv:1804.08598): ``samples`` queries per class and step,
  plus one to score the new point. The prior's gradient needs no query.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
from pydantic import Field

from bastion.attacks.privacy.inference import ModelInversion
from bastion.core.params import Number, Params
from bastion.core.run import RunContext
from bastion.core.targets.base import Target
from bastion.core.threat import ThreatModel

TV_EPS = 1e-6
EOT_DRAWS = 8
CostGrad = Callable[[np.ndarray, np.ndarray, bool], tuple[np.ndarray, np.ndarray | None]]


class MIFaceParams(Params):
    steps: int = Field(default=300, ge=1, le=100_000, description="Most gradient steps per class (α).")
    step_size: Number = Field(default=0.02, gt=0, le=1, description="Step as a share of each feature's range (λ).")
    patience: int = Field(default=50, ge=1, description="Stop a class after this many steps without improvement (β).")
    gamma: Number = Field(default=0.0, ge=0, description="Stop a class once its cost is at most this (γ).")
    tv: Number = Field(default=0.0, ge=0, description="Weight of the total-variation prior (images only).")
    init: Literal["lower", "middle"] = Field(default="lower", description="Start at the lower bounds (the paper's "
                                                                             "0) or midway between the bounds.")


class MIFaceWhiteBoxParams(MIFaceParams):
    eot_iter: int | None = Field(default=None, ge=1, le=1000, description="Draws per gradient on a randomised "
                                 f"target (default: {EOT_DRAWS} when the target declares itself randomised, else 1).")


class MIFaceScoresParams(MIFaceParams):
    samples: int = Field(default=20, ge=2, le=10_000, description="Queries per class and step for the gradient "
                                                                  "estimate (antithetic pairs).")
    sigma: Number = Field(default=0.05, gt=0, le=1, description="Probe distance as a share of each feature's range.")


class MIFace(ModelInversion):
    """MI-Face (Fredrikson et al. 2015) with the target's gradients."""

    name = "mi-face"
    Params = MIFaceWhiteBoxParams
    needs_gradients = True

    def _invert(self, target: Target, threat: ThreatModel, ctx: RunContext) -> np.ndarray:
        import torch

        from bastion.core.defense import ExpectationView
        from bastion.core.run import model_draws

        view = target.adaptive_view()
        draws = self.params.eot_iter  # type: ignore[attr-defined]
        if draws is None:
            draws = EOT_DRAWS if target.randomized and getattr(view, "draws_per_call", 1) == 1 else 1
        if draws > 1:
            view = ExpectationView(view, draws)  # type: ignore[arg-type]
        device = getattr(view, "device", "cpu")

        def cost_grad(x: np.ndarray, labels: np.ndarray, want_grad: bool) -> tuple[np.ndarray, np.ndarray]:
            xt = torch.from_numpy(x).to(device).requires_grad_(True)
            logp = torch.log_softmax(view.logits(xt).double(), dim=1)  # type: ignore[attr-defined]
            own = logp[torch.arange(len(x)), torch.from_numpy(labels).to(device)]  # log Pr(c | x)
            cost = 1 - own.exp()
            (grad,) = torch.autograd.grad(cost.sum(), xt)
            return cost.detach().cpu().numpy(), grad.detach().cpu().numpy().astype(np.float64)

        with model_draws(ctx.key("draws")):  # a randomised model's draws: reproducible from the run's seed
            return descend(cost_grad, target, self.params)  # type: ignore[arg-type]


class MIFaceScores(ModelInversion):
    """MI-Face (Fredrikson et al. 2015) from scores only: the gradient estimated by NES."""

    name = "mi-face-scores"
    Params = MIFaceScoresParams

    def _invert(self, target: Target, threat: ThreatModel, ctx: RunContext) -> np.ndarray:
        p: MIFaceScoresParams = self.params  # type: ignore[assignment]
        lo, hi = (b.astype(np.float64) for b in target.input_spec.bounds_arrays())
        rng = ctx.rng("nes")
        half = p.samples // 2

        def cost(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
            logp = target.predict_log_proba(np.clip(x, lo, hi).astype(np.float32))
            return 1 - np.exp(logp[np.arange(len(x)), labels])

        def cost_grad(x: np.ndarray, labels: np.ndarray, want_grad: bool) -> tuple[np.ndarray, np.ndarray | None]:
            if not want_grad:  # the last step: no probes
                return cost(x, labels), None
            u = rng.standard_normal((len(x), half, *x.shape[1:])) * (p.sigma * (hi - lo))
            probes = np.concatenate([x[:, None] + u, x[:, None] - u], axis=1)  # (n, 2 half, ...)
            c = cost(probes.reshape(-1, *x.shape[1:]), np.repeat(labels, 2 * half)).reshape(len(x), 2 * half)
            diff = (c[:, :half] - c[:, half:]).reshape(len(x), half, *([1] * (x.ndim - 1)))
            grad = (diff * u).mean(axis=1) / (2 * (p.sigma * (hi - lo)) ** 2)
            return cost(x, labels), grad

        return descend(cost_grad, target, p)


def descend(cost_grad: CostGrad, target: Target, p: MIFaceParams) -> np.ndarray:
    """MI-Face's loop for every class at once: ``cost_grad(x, labels, want_grad)`` gives the
    model's part of the cost and its gradient (None when not wanted, at the last step); the prior,
    the projection and the stopping rules are added here. Returns each class's lowest-cost input."""
    spec = target.input_spec
    lo, hi = (b.astype(np.float64) for b in spec.bounds_arrays())
    span = hi - lo
    k = target.n_classes
    image = spec.kind == "image" or len(spec.shape) >= 2
    tv = p.tv if image else 0.0
    x = np.broadcast_to(lo if p.init == "lower" else (lo + hi) / 2, (k, *spec.shape)).copy()
    best, best_cost = x.copy(), np.full(k, np.inf)
    stale = np.zeros(k, np.int64)
    active = np.arange(k)
    for step in range(p.steps + 1):
        c, g = cost_grad(x[active].astype(np.float32), active, step < p.steps)
        if tv:
            c = c + tv * total_variation(x[active])
        better = c < best_cost[active] - 1e-12
        idx = active[better]
        best[idx], best_cost[idx] = x[idx], c[better]
        stale[active] = np.where(better, 0, stale[active] + 1)
        keep = (stale[active] < p.patience) & (best_cost[active] > p.gamma)
        if step == p.steps or g is None or not keep.any():
            break
        if tv:
            g = g + tv * total_variation_grad(x[active])
        active, g = active[keep], g[keep]
        rms = np.sqrt(np.mean(g.reshape(len(g), -1) ** 2, axis=1)).reshape(-1, *([1] * len(spec.shape)))
        x[active] = np.clip(x[active] - p.step_size * span * g / np.maximum(rms, 1e-12), lo, hi)
    return best.astype(np.float32)


def total_variation(x: np.ndarray) -> np.ndarray:
    """Mean smoothed total variation over the last two axes, one value per input:
    mean sqrt(dx² + ε) + mean sqrt(dy² + ε)."""
    dx, dy = np.diff(x, axis=-1), np.diff(x, axis=-2)
    n = len(x)
    return (np.sqrt(dx * dx + TV_EPS).reshape(n, -1).mean(1) + np.sqrt(dy * dy + TV_EPS).reshape(n, -1).mean(1))


def total_variation_grad(x: np.ndarray) -> np.ndarray:
    """The gradient of :func:`total_variation` with respect to ``x``."""
    g = np.zeros_like(x)
    for axis in (-1, -2):
        d = np.diff(x, axis=axis)
        t = d / np.sqrt(d * d + TV_EPS) / d[0].size
        lead = [slice(None)] * x.ndim
        lead[axis] = slice(1, None)
        trail = [slice(None)] * x.ndim
        trail[axis] = slice(None, -1)
        g[tuple(lead)] += t
        g[tuple(trail)] -= t
    return g
