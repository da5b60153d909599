"""FAB, the Fast Adaptive Boundary attack (Croce & Hein, ICML 2020, "Minimally distorted adversarial
examples with a fast adaptive boundary attack", arXiv:1907.02044), L∞ and L2, untargeted and
targeted at the top-k classes (FAB-T, the version of AutoAttack's standard suite).

Each iteration (Algorithm 1 of the paper) linearises the decision boundary between the true class
``y`` and a class ``s`` at the current point ``x_i`` (``s``: the target of FAB-T; untargeted, the
class of nearest linearised boundary) and projects onto that hyperplane, inside the input box,
both the current point and the original ``x``: ``δ_i`` and ``δ_orig``. The next point is the biased
mix ``(1 - α)(x_i + η δ_i) + α (x + η δ_orig)`` with ``α = min(‖δ_i‖ / (‖δ_i‖ + ‖δ_orig‖), α_max)``;
once it is adversarial it is kept if smallest so far and pulled back towards ``x`` by
``x + β (x_i - x)``. Defaults α_max = 0.1, η = 1.05, β = 0.9 as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from bastion.attacks.base import MAX_RESTARTS, MAX_STEPS, AttackParams, AttackRun, EvasionAttack, register_attack
from bastion.attacks.evasion._torch import Geometry, flat_norm, random_start, to_tensor
from bastion.core.params import Eps
from bastion.core.run import SampleStreams
from bastion.core.targets.base import DifferentiableTarget


def boundary_step(t: torch.Tensor, w: torch.Tensor, c: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                  norm: str) -> torch.Tensor:
    """The smallest ``d`` (L∞ or L2) with ``w·d = c`` and ``lo <= t + d <= hi``, rows of flat
    (n, D) tensors; where the box cannot reach the hyperplane, the point of the box that comes
    closest. Exact: coordinate ``i`` moves by ``min(λ p_i, room_i)`` along ``sign(w_i)`` (L∞:
    ``p_i = 1``; L2: ``p_i = |w_i|``), and the λ that meets ``w·d = c`` is found on the sorted
    breakpoints of that piecewise-linear function."""
    w = w * torch.where(c < 0, -1.0, 1.0)[:, None]
    c = c.abs()
    aw = w.abs()
    room = torch.where(w > 0, hi - t, t - lo).clamp_min(0)
    moving = aw > 0
    if norm == "linf":
        rate, brk = aw, torch.where(moving, room, 0.0)  # w·d gains |w_i| per unit of λ until room_i
    else:
        rate, brk = aw * aw, torch.where(moving, room / aw.clamp_min(1e-30), 0.0)
    brk, order = brk.sort(dim=1)
    rate, cap = rate.gather(1, order), (aw * room).gather(1, order)
    full = cap.cumsum(1)  # w·d of the coordinates at their room, up to each breakpoint
    left = rate.sum(1, keepdim=True) - rate.cumsum(1)  # the rates of those still moving
    reach = full + brk * left  # w·d at each breakpoint (non-decreasing)
    k = (reach < c[:, None]).sum(1, keepdim=True)
    zero = torch.zeros_like(c[:, None])
    full_prev = torch.cat([zero, full], 1).gather(1, k)
    left_prev = torch.cat([rate.sum(1, keepdim=True), left], 1).gather(1, k)
    lam = ((c[:, None] - full_prev) / left_prev.clamp_min(1e-30)).clamp_min(0)
    lam = torch.where(k == w.shape[1], brk[:, -1:], lam)  # out of reach: every coordinate at its room
    mag = torch.minimum(lam if norm == "linf" else lam * aw, room)
    return torch.where(moving, mag * w.sign(), 0.0)


@dataclass
class FABRun:
    """One FAB optimisation: the inputs, their classes, the class of each row's boundary (None:
    untargeted, the nearest of ``candidates``), and what success means."""

    x: torch.Tensor
    y: torch.Tensor
    s: torch.Tensor | None
    candidates: torch.Tensor | None = None  # (n, k) classes searched by untargeted FAB
    goal: torch.Tensor | None = None  # targeted success: argmax == goal; otherwise argmax != y
    group: torch.Tensor | None = None  # rows of one input (its targets side by side)


def fab_optimise(target: DifferentiableTarget, geo: Geometry, run: FABRun, *, norm: str, steps: int,
                 eps: float | None = None, alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9,
                 init: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """FAB on a batch (one restart). Returns the smallest adversarial input found per row and its
    norm in ε units (``inf`` where none was found). With ``eps``, a row (and its group) stops at its
    first adversarial point within ``eps``: a robustness check, not a norm minimisation. ``init``:
    a starting perturbation in ε units (None: start at ``x``)."""
    x0 = run.x
    n, shape, dev = len(x0), x0.shape, x0.device
    sc, lo, hi = geo.scale.flatten(), geo.lo.flatten() / geo.scale.flatten(), geo.hi.flatten() / geo.scale.flatten()
    mask = geo.mask.flatten()
    z0 = x0.flatten(1) / sc
    best = x0.clone()
    best_norm = torch.full((n,), torch.inf, device=dev)
    idx = torch.arange(n, device=dev)
    z = z0 if init is None else torch.minimum(torch.maximum(z0 + init.flatten(1) * mask, lo), hi)

    def fooled(logits: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        pred = logits.argmax(1)
        return pred == run.goal[i] if run.goal is not None else pred != run.y[i]

    for _ in range(steps):
        xs = (z * sc).view(-1, *shape[1:]).requires_grad_(True)
        logits = target.logits(xs)
        yi = run.y[idx]
        f_y = logits.gather(1, yi[:, None]).squeeze(1)
        if run.s is not None:
            s = run.s[idx]
            f = logits.gather(1, s[:, None]).squeeze(1) - f_y
            (g,) = torch.autograd.grad(f.sum(), xs)
            w = g.flatten(1) * sc * mask
        else:
            assert run.candidates is not None
            f, w = _nearest_boundary(logits, f_y, xs, run.candidates[idx], sc, mask, norm)
        f, w = f.detach(), torch.nan_to_num(w.detach())
        # the hyperplane f + w·(v - z) = 0, through the current point and through the original
        d1 = boundary_step(z, w, -f, lo, hi, norm)
        z0i = z0[idx]
        d2 = boundary_step(z0i, w, -f - (w * (z0i - z)).sum(1), lo, hi, norm)
        n1, n2 = flat_norm(d1, norm), flat_norm(d2, norm)
        alpha = (n1 / (n1 + n2).clamp_min(1e-12)).clamp(0, alpha_max)[:, None]
        z = torch.minimum(torch.maximum((1 - alpha) * (z + eta * d1) + alpha * (z0i + eta * d2), lo), hi)
        with torch.no_grad():
            adv = fooled(target.logits((z * sc).view(-1, *shape[1:])), idx)
        if adv.any():
            dist = flat_norm(z - z0i, norm)
            better = adv & (dist < best_norm[idx])
            best[idx[better]] = (z[better] * sc).view(-1, *shape[1:])
            best_norm[idx[better]] = dist[better]
            z = torch.where(adv[:, None], z0i + beta * (z - z0i), z)
        if eps is not None:  # done: an adversarial point within eps for the row or its group
            hit = best_norm[idx] <= eps
            if run.group is not None and hit.any():
                hit = torch.isin(run.group[idx], run.group[idx][hit])
            idx, z = idx[~hit], z[~hit]
            if len(idx) == 0:
                break
    return best, best_norm


def _nearest_boundary(logits: torch.Tensor, f_y: torch.Tensor, xs: torch.Tensor, cand: torch.Tensor,
                      sc: torch.Tensor, mask: torch.Tensor, norm: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Untargeted FAB's class choice: among the candidates, the one of nearest linearised boundary
    ``|f_k - f_y| / ‖∇(f_k - f_y)‖_dual``; returns its ``f_k - f_y`` and gradient (ε units, flat)."""
    k = cand.shape[1]
    best_d = torch.full((len(xs),), torch.inf, device=xs.device)
    best_f = torch.zeros_like(best_d)
    best_w = torch.zeros(len(xs), xs[0].numel(), device=xs.device)
    for j in range(k):
        f = logits.gather(1, cand[:, j:j + 1]).squeeze(1) - f_y
        (g,) = torch.autograd.grad(f.sum(), xs, retain_graph=j < k - 1)
        w = g.flatten(1) * sc * mask
        d = f.detach().abs() / w.norm(p=1.0 if norm == "linf" else 2.0, dim=1).clamp_min(1e-12)
        better = d < best_d
        best_d = torch.where(better, d, best_d)
        best_f = torch.where(better, f.detach(), best_f)
        best_w = torch.where(better[:, None], w, best_w)
    return best_f, best_w


class FABParams(AttackParams):
    eps: Eps = Field(0.0, description="Ignored: a minimal-perturbation attack (the auto stage sets its own).")
    steps: int = Field(100, ge=1, le=MAX_STEPS, description="Iterations per restart.")
    restarts: int = Field(1, ge=1, le=MAX_RESTARTS,
                          description="Runs; the first from the input, the others from a random point at half the "
                                      "best norm found.")
    n_target_classes: int = Field(
        9, ge=0, le=1000, description="FAB-T: runs towards each of the top-k other classes (0: untargeted FAB).")
    candidates: int = Field(
        9, ge=1, le=1000, description="Untargeted FAB: most likely other classes searched per step.")
    alpha_max: float = Field(0.1, gt=0, lt=1, description="Largest weight of the step from the original input.")
    eta: float = Field(1.05, ge=1, description="Overshoot of the projection onto the linearised boundary.")
    beta: float = Field(0.9, gt=0, lt=1, description="Backward step towards the input after a success.")
    norm: Literal["linf", "l2"] = Field("linf", description="Norm minimised: linf or l2.")


@register_attack
class FAB(EvasionAttack):
    """FAB: the smallest L∞ or L2 perturbation found by adaptive boundary projections.

    ``n_target_classes`` > 0 (default 9) is FAB-T: a run towards each of the top-k other classes, side
    by side in one batch, keeping each input's smallest adversarial point; 0 is untargeted FAB
    (the nearest linearised boundary among ``candidates`` classes at every step, one gradient per
    candidate). A minimal attack: ``eps`` is ignored and the result's norms are the measurement.
    Inside ``auto`` the FAB-T stage stops an input at its first adversarial point within ε.

    >>> import bastion
    >>> attack = bastion.attacks.FAB(norm="linf", steps=100, n_target_classes=9)
    """

    name = "fab"
    minimal = True

    Params = FABParams

    def _attack_batch(self, target: DifferentiableTarget, x: np.ndarray, goal: np.ndarray, rows: np.ndarray,
                      run: AttackRun) -> np.ndarray:
        adv, _ = self.search(target, x, goal, rows, run, eps=None)
        return adv

    def search(self, target: DifferentiableTarget, x: np.ndarray, goal: np.ndarray, rows: np.ndarray,
               run: AttackRun, eps: float | None) -> tuple[np.ndarray, np.ndarray]:
        """Every restart on the batch; the smallest adversarial input per row and its norm (``inf``:
        none). With ``eps``, inputs stop at their first adversarial point within it."""
        dev = target.device
        geo = Geometry.of(target)
        x0, g0 = to_tensor(x, dev), to_tensor(goal, dev, torch.long)
        best, best_norm = x0.clone(), torch.full((len(x0),), torch.inf, device=dev)
        streams = run.streams(rows, "start")
        with torch.no_grad():
            clean = target.logits(x0)
        for restart in range(self.restarts):
            todo = torch.nonzero(best_norm > (eps if eps is not None else -1.0)).squeeze(1)
            if len(todo) == 0:
                break
            fab_run = self._replicate(clean, x0, g0, todo, target.n_classes)
            assert fab_run.group is not None
            init = self._start(streams, todo, restart, best_norm, eps, tuple(x0[todo].shape), dev,
                               len(fab_run.group) // len(todo))
            adv, nrm = fab_optimise(target, geo, fab_run, norm=self.norm, steps=self.steps, eps=eps,
                                    alpha_max=self.alpha_max, eta=self.eta, beta=self.beta, init=init)
            # each input's smallest adversarial point over its rows
            o = torch.argsort(nrm, stable=True)
            o = o[torch.argsort(fab_run.group[o], stable=True)]
            g = fab_run.group[o]
            first = torch.ones_like(g, dtype=torch.bool)
            first[1:] = g[1:] != g[:-1]
            sel, r = o[first], g[first]
            upd = nrm[sel] < best_norm[r]
            best[r[upd]], best_norm[r[upd]] = adv[sel[upd]], nrm[sel[upd]]
        return best.cpu().numpy(), best_norm.cpu().numpy()

    def _replicate(self, clean: torch.Tensor, x0: torch.Tensor, g0: torch.Tensor, todo: torch.Tensor,
                   n_classes: int) -> FABRun:
        """The runs of the inputs ``todo``: targeted, towards the goal from the clean prediction;
        FAB-T, one row per top-k other class (by the clean logits); FAB, one row with its candidates."""
        if self.targeted:
            return FABRun(x0[todo], clean[todo].argmax(1), g0[todo], goal=g0[todo], group=todo)
        other = clean[todo].scatter(1, g0[todo][:, None], -torch.inf).argsort(dim=1, descending=True)
        k = min(self.n_target_classes or self.candidates, n_classes - 1)
        if self.n_target_classes == 0:
            return FABRun(x0[todo], g0[todo], None, candidates=other[:, :k], group=todo)
        rows = todo.repeat_interleave(k)
        return FABRun(x0[rows], g0[rows], other[:, :k].flatten(), group=rows)

    def _start(self, streams: SampleStreams, todo: torch.Tensor, restart: int, best_norm: torch.Tensor,
               eps: float | None, shape: tuple[int, ...], dev: str, copies: int) -> torch.Tensor | None:
        """Restart 0 from the input; later ones from a random point at half the smallest of the best
        norm so far and ``eps`` (AutoAttack's FAB), where that is finite."""
        if restart == 0:
            return None
        radius = best_norm[todo].clamp_max(eps if eps is not None else torch.inf)
        radius = torch.where(torch.isfinite(radius), radius, 0.0) * 0.5
        unit = random_start(streams.at(restart).subset(todo.cpu().numpy()), shape, 1.0, self.norm, dev)
        init = unit * radius.view(-1, *([1] * (len(shape) - 1)))
        return init.repeat_interleave(copies, dim=0)
