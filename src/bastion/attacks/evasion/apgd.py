"""Auto-PGD (Croce & Hein, 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", arXiv:2003.01690), L∞ and L2, with the cross-entropy or the
Difference-of-Logits-Ratio (DLR) loss, untargeted, targeted, or targeted at the top-k classes (APGD-T).

The algorithm (Sec. 3 of the paper): a first step of size η = 2ε, then steps with momentum
α = 0.75 (``z = P(x + η·s(∇))``, ``x' = P(x + α(z - x) + (1 - α)(x - x_prev))``); at checkpoints
``w_j`` (first after 22% of the iterations, then shorter by 3% each time, never below 6%) the step
size of a sample is halved and it restarts from its best point when (1) its loss went up in at most
ρ = 75% of the steps since the last checkpoint, or (2) its step size was not reduced at the last
checkpoint and its best loss did not improve since. Samples stop as soon as they are fooled
(which does not change the robust accuracy and saves time); restarts run on the samples still robust.
On a randomised target (the attack's run in expectation mode) the gradient is the EOT gradient of
the expected prediction (the base class averages ``eot_iter`` draws), no sample stops, every
restart and target class runs on every sample, and each keeps the iterate of highest expected score.
On tables with integer or one-hot features the iterates live in the continuous relaxation and a
sample counts as fooled only when its discrete projection inside the ε-ball is misclassified.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from bastion.attacks.base import MAX_RESTARTS, MAX_STEPS, AttackRun, EvasionAttack, GradientParams, register_attack
from bastion.attacks.evasion._torch import (
    BestCandidate,
    Geometry,
    ascent_direction,
    expected_score,
    project_ball,
    random_start,
    to_tensor,
)
from bastion.core.run import SampleStreams
from bastion.core.targets.base import DifferentiableTarget


def dlr_loss(logits: torch.Tensor, y: torch.Tensor | None, t: torch.Tensor | None) -> torch.Tensor:
    """Per-sample DLR loss to *maximise* (Croce & Hein 2020, Eq. 6 and the targeted variant).

    Untargeted (``t`` None): ``-(z_y - max_{i≠y} z_i) / (z_π1 - z_π3)``.
    Targeted: ``-(z_y - z_t) / (z_π1 - (z_π3 + z_π4) / 2)``; with ``y`` None, ``z_y`` is the
    largest logit other than the target's. With fewer classes than the denominator needs, the
    denominator falls back to the spread of the logits.
    """
    srt = logits.sort(dim=1, descending=True).values
    n = logits.shape[1]
    if t is None:
        assert y is not None
        z_y = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.scatter(1, y[:, None], -torch.inf).amax(dim=1)
        den = srt[:, 0] - (srt[:, 2] if n >= 3 else srt[:, -1])
        return -(z_y - other) / (den + 1e-12)
    z_t = logits.gather(1, t[:, None]).squeeze(1)
    if y is None:
        z_y = logits.scatter(1, t[:, None], -torch.inf).amax(dim=1)
    else:
        z_y = logits.gather(1, y[:, None]).squeeze(1)
    den = srt[:, 0] - ((srt[:, 2] + srt[:, 3]) / 2 if n >= 4 else srt[:, -1])
    return -(z_y - z_t) / (den + 1e-12)


def apgd_loss(logits: torch.Tensor, loss: str, y: torch.Tensor | None, t: torch.Tensor | None) -> torch.Tensor:
    """Per-sample loss to maximise: move away from ``y`` and, if given, towards ``t``."""
    if loss == "dlr":
        return dlr_loss(logits, y, t)
    if t is not None:
        return -F.cross_entropy(logits, t, reduction="none")
    assert y is not None
    return F.cross_entropy(logits, y, reduction="none")


@dataclass
class APGDRun:
    """One APGD optimisation over a batch: the inputs, what to move away from / towards, the success test."""

    x: torch.Tensor
    y: torch.Tensor | None  # class to move away from (untargeted success: argmax != y)
    t: torch.Tensor | None  # class to move towards
    success_is_target: bool  # True: success means argmax == t
    group: torch.Tensor | None = None  # rows sharing a group stop together when one of them is fooled


def apgd_optimise(target: DifferentiableTarget, geo: Geometry, run: APGDRun, *, eps: float, norm: str, steps: int,
                  loss: str, rho: float = 0.75, momentum: float = 0.75, init: torch.Tensor | None = None,
                  keeper: BestCandidate | None = None, keep_best: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One APGD run (no restarts) on a batch. Returns the best adversarial inputs found, the per-row
    success mask and the best loss of the rows that ran to the end (``inf`` for those that stopped
    fooled); unsuccessful rows come back unchanged. ``init``: the initial perturbation in ε units
    (None: start at the input). Rows of one ``run.group`` (copies of an input with other targets,
    side by side) all stop as soon as one of them is fooled; ``keep_best``: at the first checkpoint,
    each group keeps only its ``keep_best`` rows of highest loss so far. With ``keeper`` (a
    randomised target), no row stops and every iterate is offered to it by its expected score."""
    x0 = run.x
    n = len(x0)
    dev = x0.device
    out = x0.clone()
    fooled = torch.zeros(n, dtype=torch.bool, device=dev)
    final_loss = torch.full((n,), torch.inf, device=dev)
    if n == 0 or eps == 0:
        return out, fooled, final_loss

    def fooled_by(logits: torch.Tensor, yy: torch.Tensor | None, tt: torch.Tensor | None) -> torch.Tensor:
        pred = logits.argmax(dim=1)
        return pred == tt if run.success_is_target else pred != yy

    def evaluate(xs: torch.Tensor, delta: torch.Tensor, yy: torch.Tensor | None, tt: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss, gradient in ε units, success mask and the adversarial input at ``delta`` (its
        discrete projection on tables with integer or one-hot features)."""
        xr = geo.apply(xs, delta).detach().requires_grad_(True)
        logits = target.logits(xr)
        lv = apgd_loss(logits, loss, yy, tt)
        (g,) = torch.autograd.grad(lv.sum(), xr)
        x_chk, chk_logits = xr.detach(), logits.detach()
        if geo.discrete is not None:  # fooled only where the discrete projection is
            x_chk, chk_logits = geo.checked(target, xs, xr, eps, norm, prefer=g)
        done = fooled_by(chk_logits, yy, tt)
        if keeper is not None:
            goal = tt if run.success_is_target else yy
            assert goal is not None
            keeper.offer(idx, x_chk, expected_score(chk_logits, goal, run.success_is_target))
            done = torch.zeros_like(done)
        return lv.detach(), torch.nan_to_num(g) * geo.scale * geo.mask, done, x_chk

    def proj(xs: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return geo.delta_of(xs, geo.apply(xs, project_ball(d, eps, norm)))

    idx = torch.arange(n, device=dev)
    xs, yy, tt, grp = x0, run.y, run.t, run.group
    if init is not None:
        delta = init * geo.mask
    else:
        delta = torch.zeros_like(xs)
    delta = proj(xs, delta)
    loss_v, grad, done, x_adv = evaluate(xs, delta, yy, tt)

    step = torch.full((n,), 2.0 * eps, device=dev)
    loss_best, delta_best, grad_best = loss_v.clone(), delta.clone(), grad.clone()
    loss_prev = loss_v.clone()
    loss_best_last = loss_best.clone()
    reduced_last = torch.zeros(n, dtype=torch.bool, device=dev)
    n_incr = torch.zeros(n, device=dev)
    delta_prev = delta.clone()
    k = checkpoint = max(int(0.22 * steps), 1)
    size_decr, k_min = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    counter = 0

    def view(v: torch.Tensor) -> torch.Tensor:
        return v.view(-1, *([1] * (xs.dim() - 1)))

    pruned = keep_best is None or grp is None or keeper is not None
    for i in range(steps):
        keep: torch.Tensor | None = None
        if done.any():  # keep the successes and drop them from the active set
            out[idx[done]], fooled[idx[done]] = x_adv[done], True
            keep = ~done if grp is None else ~torch.isin(grp, grp[done])
        if not pruned and i == checkpoint:  # first checkpoint: each group keeps its most promising rows
            assert grp is not None and keep_best is not None
            best_rows = _top_per_group(grp, loss_best, keep_best)
            final_loss[idx[~best_rows]] = loss_best[~best_rows]
            keep = best_rows if keep is None else keep & best_rows
            pruned = True
        if keep is not None:
            grp = grp[keep] if grp is not None else None
            idx, xs, delta, delta_prev, grad = idx[keep], xs[keep], delta[keep], delta_prev[keep], grad[keep]
            yy = yy[keep] if yy is not None else None
            tt = tt[keep] if tt is not None else None
            step, loss_v, loss_prev, loss_best = step[keep], loss_v[keep], loss_prev[keep], loss_best[keep]
            delta_best, grad_best, loss_best_last = delta_best[keep], grad_best[keep], loss_best_last[keep]
            reduced_last, n_incr, x_adv, done = reduced_last[keep], n_incr[keep], x_adv[keep], done[keep]
        if len(idx) == 0:
            break
        a = momentum if i > 0 else 1.0
        mom = delta - delta_prev
        delta_prev = delta
        z = proj(xs, delta + view(step) * ascent_direction(grad, norm))
        delta = proj(xs, delta + a * (z - delta) + (1 - a) * mom)

        loss_v, grad, done, x_adv = evaluate(xs, delta, yy, tt)
        n_incr += (loss_v > loss_prev).float()
        loss_prev = loss_v
        better = loss_v > loss_best
        loss_best = torch.where(better, loss_v, loss_best)
        delta_best[better], grad_best[better] = delta[better], grad[better]

        counter += 1
        if counter == k:
            oscillating = n_incr <= rho * k
            no_improvement = (~reduced_last) & (loss_best_last >= loss_best)
            flag = oscillating | no_improvement
            reduced_last, loss_best_last = flag, loss_best.clone()
            if flag.any():
                step = torch.where(flag, step / 2, step)
                delta = torch.where(view(flag), delta_best, delta)
                grad = torch.where(view(flag), grad_best, grad)
            counter, n_incr = 0, torch.zeros_like(n_incr)
            k = max(k - size_decr, k_min)
    if done.any():
        out[idx[done]], fooled[idx[done]] = x_adv[done], True
    final_loss[idx[~done]] = loss_best[~done]
    return out, fooled, final_loss


def _top_per_group(group: torch.Tensor, score: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of the ``k`` rows of highest ``score`` within each group."""
    order = torch.argsort(-score, stable=True)
    order = order[torch.argsort(group[order], stable=True)]
    _, counts = torch.unique_consecutive(group[order], return_counts=True)
    starts = torch.repeat_interleave(counts.cumsum(0) - counts, counts)
    keep = torch.zeros_like(group, dtype=torch.bool)
    keep[order] = torch.arange(len(order), device=group.device) - starts < k
    return keep


class APGDParams(GradientParams):
    loss: Literal["ce", "dlr"] = Field("ce", description="Cross-entropy or Difference-of-Logits-Ratio loss.")
    steps: int = Field(100, ge=1, le=MAX_STEPS, description="Iterations per run.")
    restarts: int = Field(1, ge=1, le=MAX_RESTARTS, description="Random restarts, on points still robust.")
    n_target_classes: int = Field(0, ge=0, le=1000, description="APGD-T: targeted runs towards the top-k classes.")
    rho: float = Field(0.75, gt=0, le=1, description="Checkpoint condition on the share of loss increases.")
    momentum: float = Field(0.75, gt=0, le=1, description="Momentum α.")
    random_init: bool = Field(True, description="Start from a uniform point of the ε-ball.")


@register_attack
class APGD(EvasionAttack):
    """Auto-PGD: parameter-free PGD with momentum and an adaptive step size.

    ``loss``: ``"ce"`` or ``"dlr"``. ``n_target_classes`` > 0 runs APGD-T: for each of the top-k
    classes other than the true one (by the clean logits), a targeted run towards it; the k runs of
    an input go side by side in one batch and all stop once one of them fools it (success is still
    any misclassification). ``restarts`` random restarts run only on points still robust.
    ``eot_iter`` > 1 averages the prediction over that many draws per step (EOT, for randomised
    models; 20 by default on a target found randomised: then every target and restart runs on every
    input, one after the other).

    >>> import bastion
    >>> attack = bastion.attacks.APGD(eps=0.1, norm="linf", loss="dlr", steps=100)
    """

    name = "apgd"

    Params = APGDParams

    def _attack_batch(self, target: DifferentiableTarget, x: np.ndarray, goal: np.ndarray, rows: np.ndarray,
                      run: AttackRun) -> np.ndarray:
        dev = target.device
        geo = Geometry.of(target)
        x0, g0 = to_tensor(x, dev), to_tensor(goal, dev, torch.long)
        streams = run.streams(rows, "start")
        best = x0.clone()
        fooled = torch.zeros(len(x0), dtype=torch.bool, device=dev)
        if self.targeted or self.n_target_classes == 0:
            plans: list[torch.Tensor | None] = [None]
        else:
            with torch.no_grad():
                clean = target.logits(x0).scatter(1, g0[:, None], -torch.inf)
            order = clean.argsort(dim=1, descending=True)
            plans = [order[:, j] for j in range(min(self.n_target_classes, target.n_classes - 1))]
        if run.expectation:  # randomised: every target and restart on every input, best expected iterate
            keeper = BestCandidate.of(x0)
            everyone = torch.arange(len(x0), device=dev)
            for j, plan in enumerate(plans):
                for restart in range(self.restarts):
                    batch, init = self.replicate(x0, g0, everyone, [plan], streams, j * self.restarts + restart,
                                                 dev)
                    apgd_optimise(target, geo, batch, eps=self.eps, norm=self.norm, steps=self.steps,
                                  loss=self.loss, rho=self.rho, momentum=self.momentum, init=init, keeper=keeper)
            return keeper.x.cpu().numpy()
        for restart in range(self.restarts):
            idx = torch.nonzero(~fooled).squeeze(1)
            if len(idx) == 0:
                break
            batch, init = self.replicate(x0, g0, idx, plans, streams, restart, dev)
            adv, ok, _ = apgd_optimise(target, geo, batch, eps=self.eps, norm=self.norm, steps=self.steps,
                                       loss=self.loss, rho=self.rho, momentum=self.momentum, init=init)
            assert batch.group is not None
            best[batch.group[ok]], fooled[batch.group[ok]] = adv[ok], True
        return best.cpu().numpy()

    def replicate(self, x0: torch.Tensor, g0: torch.Tensor, idx: torch.Tensor, plans: list[torch.Tensor | None],
                  streams: SampleStreams, attempt: int, dev: str) -> tuple[APGDRun, torch.Tensor | None]:
        """The inputs ``idx`` once per target class of ``plans``, side by side in one batch (one
        group per input), and their random starts (plan ``j`` draws at ``j·restarts + attempt``)."""
        rows = idx.repeat(len(plans))
        if self.targeted:
            batch = APGDRun(x0[rows], None, g0[rows], True, group=rows)
        else:
            t = None if plans[0] is None else torch.cat([p[idx] for p in plans if p is not None])
            batch = APGDRun(x0[rows], g0[rows], t, False, group=rows)
        if not self.random_init:
            return batch, None
        sub = idx.cpu().numpy()
        init = torch.cat([random_start(streams.at(j * self.restarts + attempt).subset(sub), tuple(x0[idx].shape),
                                       self.eps, self.norm, dev) for j in range(len(plans))])
        return batch, init


class _APGDVariant(APGD):
    """An APGD preset: the same parameters, other defaults."""

    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **params: Any) -> None:
        super().__init__(**{**self.defaults, **params})


@register_attack
class APGDCE(_APGDVariant):
    """APGD with the cross-entropy loss (AutoAttack's first stage)."""

    name = "apgd-ce"
    defaults = {"loss": "ce", "n_target_classes": 0}


@register_attack
class APGDDLR(_APGDVariant):
    """APGD with the DLR loss, untargeted (robust to the scale of the logits)."""

    name = "apgd-dlr"
    defaults = {"loss": "dlr", "n_target_classes": 0}


@register_attack
class APGDT(_APGDVariant):
    """APGD-T: targeted DLR towards each of the top-9 other classes in turn (AutoAttack's second stage)."""

    name = "apgd-t"
    defaults = {"loss": "dlr", "n_target_classes": 9}
