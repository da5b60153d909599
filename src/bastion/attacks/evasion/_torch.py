"""Torch helpers shared by the gradient attacks: ε-ball projection in each feature's scale,
bound clipping, the discrete constraints of tables (integers, one-hot groups), losses and the
success test. Everything stays on torch tensors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bastion.core.run import SampleStreams
from bastion.core.spec import DiscreteLayout, InputSpec
from bastion.core.targets.base import DifferentiableTarget


@dataclass
class DiscreteTwin:
    """A spec's ``DiscreteLayout`` as tensors, and its rules on torch tensors: the same rounding and
    one-hot projection as ``DiscreteLayout.snap`` (numpy), computed in float64 so the two agree exactly."""

    int_cols: torch.Tensor
    int_lo: torch.Tensor
    int_hi: torch.Tensor
    group_cols: torch.Tensor
    group_valid: torch.Tensor
    group_members: torch.Tensor  # group_cols[group_valid]: each one-hot column once
    slots: torch.Tensor  # 0..widest group - 1
    scale: torch.Tensor

    @classmethod
    def of(cls, layout: DiscreteLayout, device: str) -> DiscreteTwin:
        def t(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(a, device=device)

        return cls(t(layout.int_cols), t(layout.int_lo), t(layout.int_hi), t(layout.group_cols),
                   t(layout.group_valid), t(layout.group_cols[layout.group_valid]),
                   torch.arange(layout.group_cols.shape[1], device=device), t(layout.scale))

    def snap(self, x: torch.Tensor, a: torch.Tensor, allow: torch.Tensor, l2_cap: torch.Tensor,
             prefer: torch.Tensor | None = None, then: torch.Tensor | None = None) -> torch.Tensor:
        """``DiscreteLayout.snap`` on (n, d) float64 tensors. ``prefer`` (n, d), optional, the loss
        gradient: among the members of a one-hot group tied at the largest relaxed value, pick the
        one of largest ``prefer`` instead of the first; and for the samples beyond ``l2_cap``, keep
        the nearest-point moves of largest gain (``_within_budget``) before rounding them toward
        ``x``. Without it, ``then`` (n, 1), optional: a second, smaller ``allow`` tried there first."""
        out = self._snap(x, a, allow, prefer)
        stages = ["budget" if prefer is not None else "then", "toward"]
        for stage in stages:
            grew = ((out - x) / self.scale).pow(2).sum(dim=1).sqrt() > l2_cap
            if not grew.any():
                break
            if stage == "budget":
                assert prefer is not None
                out[grew] = self._within_budget(x[grew], a[grew], allow[grew], l2_cap[grew], prefer[grew])
            elif stage == "then" and then is not None:
                out[grew] = self._snap(x[grew], a[grew], then[grew], None)
            elif stage == "toward":  # rounding toward the original: no |delta_i| can grow
                out[grew] = self._snap(x[grew], a[grew], torch.zeros_like(allow[grew]), None)
        return out

    def _moves(self, x: torch.Tensor, a: torch.Tensor, allow: torch.Tensor, prefer: torch.Tensor | None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per integer column: nearest value, value toward ``x``, whether the nearest stays within
        ``allow``; per one-hot group: the argmax projection, the original, whether it stays within."""
        c = self.int_cols
        ac, xc = a[:, c], x[:, c]
        near = torch.minimum(torch.maximum(torch.round(ac), self.int_lo), self.int_hi)
        toward = torch.minimum(torch.maximum(torch.where(ac >= xc, ac.floor(), ac.ceil()), self.int_lo), self.int_hi)
        near, toward = torch.where(ac != xc, near, xc), torch.where(ac != xc, toward, xc)
        ok_int = (near - xc).abs() / self.scale[c] <= allow
        g, valid = self.group_cols, self.group_valid
        xg = x[:, g]
        if not g.numel():
            return near, toward, ok_int, xg, xg, torch.ones(xg.shape[:2], dtype=torch.bool, device=x.device)
        block = torch.where(valid, a[:, g], -torch.inf)
        if prefer is not None:
            top = block == block.amax(dim=2, keepdim=True)
            block = torch.where(top, torch.nan_to_num(prefer[:, g].to(block.dtype)), -torch.inf)
        proj = (self.slots == block.argmax(dim=2)[..., None]).to(a.dtype)  # first index on ties
        ok_group = (~valid | ((proj - xg).abs() / self.scale[g] <= allow[:, :, None])).all(dim=2)
        return near, toward, ok_int, proj, xg, ok_group

    def _snap(self, x: torch.Tensor, a: torch.Tensor, allow: torch.Tensor,
              prefer: torch.Tensor | None) -> torch.Tensor:
        near, toward, ok_int, proj, xg, ok_group = self._moves(x, a, allow, prefer)
        out = a.clone()
        out[:, self.int_cols] = torch.where(ok_int, near, toward)
        out[:, self.group_members] = torch.where(ok_group[..., None], proj, xg)[:, self.group_valid]
        return out

    def _within_budget(self, x: torch.Tensor, a: torch.Tensor, allow: torch.Tensor, l2_cap: torch.Tensor,
                       gain: torch.Tensor) -> torch.Tensor:
        """Start from every value rounded toward ``x`` and make the nearest-point moves (an integer
        rounded away from ``x``, a category switched) in decreasing first-order gain ``gain · move``,
        each while the L2 distance (ε units) stays within ``l2_cap``; moves of no gain are not made."""
        near, toward, ok_int, proj, xg, ok_group = self._moves(x, a, allow, gain)
        c, g, valid = self.int_cols, self.group_cols, self.group_valid
        sc, sg = self.scale[c], self.scale[g]
        cost = torch.cat([((near - x[:, c]) / sc).pow(2) - ((toward - x[:, c]) / sc).pow(2),
                          (((proj - xg) / sg).pow(2) * valid).sum(dim=2)], dim=1)
        value = torch.cat([gain[:, c] * (near - toward), (gain[:, g] * (proj - xg) * valid).sum(dim=2)], dim=1)
        usable = torch.cat([ok_int, ok_group], dim=1) & (value > 0)
        out = self._snap(x, a, torch.zeros_like(allow), None)  # everything toward x: inside the ball
        room = l2_cap.pow(2) - ((out - x) / self.scale).pow(2).sum(dim=1)
        order = torch.where(usable, value, -torch.inf).argsort(dim=1, descending=True)
        spent = torch.where(usable, cost, 0.0).gather(1, order).cumsum(dim=1)
        take = torch.zeros_like(usable).scatter(1, order, usable.gather(1, order) & (spent <= room[:, None]))
        k = len(c)
        out[:, c] = torch.where(take[:, :k], near, toward)
        out[:, self.group_members] = torch.where(take[:, k:, None], proj, xg)[:, valid]
        return out


@dataclass
class Geometry:
    """Bounds, ε scale and mutability mask of a target's inputs, as tensors of the sample shape;
    for tables with integer or one-hot features, their rules (``discrete``, None otherwise).

    Attacks optimise ``delta`` in ε units: the input is ``x + scale * delta``.
    """

    lo: torch.Tensor
    hi: torch.Tensor
    scale: torch.Tensor
    mask: torch.Tensor
    discrete: DiscreteTwin | None = None

    @classmethod
    def of(cls, target: DifferentiableTarget) -> Geometry:
        return cls.from_spec(target.input_spec, target.device)

    @classmethod
    def from_spec(cls, spec: InputSpec, dev: str = "cpu") -> Geometry:
        lo, hi = spec.bounds_arrays()
        t = lambda a: torch.as_tensor(np.asarray(a, np.float32), device=dev)  # noqa: E731
        layout = spec.discrete_layout()
        return cls(t(lo), t(hi), t(spec.scale_array()), t(spec.mutable_mask()),
                   None if layout is None else DiscreteTwin.of(layout, dev))

    def apply(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """``x + scale * delta`` clipped to the bounds."""
        return torch.maximum(torch.minimum(x + self.scale * delta, self.hi), self.lo)

    def delta_of(self, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        return (x_adv - x) / self.scale

    def enforce(self, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        """Torch twin of ``InputSpec.enforce``, same result: bounds, immutables, then integers and
        one-hot groups snapped without growing the perturbation's L∞ or L2 norm."""
        a = torch.where(self.mask > 0, torch.minimum(torch.maximum(x_adv, self.lo), self.hi), x)
        if self.discrete is None:
            return a
        n = len(x)
        x2, a2 = x.reshape(n, -1).double(), a.reshape(n, -1).double()
        d0 = (a2 - x2) / self.discrete.scale
        linf0 = d0.abs().amax(dim=1, keepdim=True) + 1e-6
        l2_0 = d0.pow(2).sum(dim=1).sqrt() + 1e-6
        return self.discrete.snap(x2, a2, linf0, l2_0).reshape(x.shape).to(x_adv.dtype)

    def project(self, x: torch.Tensor, x_adv: torch.Tensor, eps: float, norm: str,
                prefer: torch.Tensor | None = None) -> torch.Tensor:
        """The discrete point an attack reports for ``x_adv`` (a point of the ε-ball, inside the
        bounds): integers rounded to the nearest value and one-hot groups switched to their argmax
        (ties: largest ``prefer``, the loss gradient), each where that stays in the ε-ball, toward the
        original otherwise. For L2, a sample whose nearest point leaves the ball keeps, with
        ``prefer``, the moves of largest first-order gain that fit (``DiscreteTwin._within_budget``);
        without it, ``InputSpec.enforce``'s rule; if still outside, every value goes toward the
        original. ``InputSpec.enforce`` leaves the result unchanged. ``x_adv`` itself without
        discrete features."""
        if self.discrete is None:
            return x_adv
        n, dev = len(x), x.device
        x2, a2 = x.reshape(n, -1).double(), x_adv.reshape(n, -1).double()
        allow = torch.full((n, 1), eps + 1e-6, dtype=torch.float64, device=dev)
        pref = None if prefer is None else prefer.reshape(n, -1)
        if norm == "linf":
            cap = torch.full((n,), torch.inf, dtype=torch.float64, device=dev)
            out = self.discrete.snap(x2, a2, allow, cap, pref)
        else:  # L2: per coordinate up to ε; over the ball, the best moves that fit (or enforce's rule)
            linf0 = ((a2 - x2) / self.discrete.scale).abs().amax(dim=1, keepdim=True) + 1e-6
            cap = torch.full((n,), eps + 1e-6, dtype=torch.float64, device=dev)
            out = self.discrete.snap(x2, a2, allow, cap, pref, then=linf0)
        return out.reshape(x.shape).to(x_adv.dtype)

    def checked(self, target: DifferentiableTarget, x: torch.Tensor, x_adv: torch.Tensor, eps: float, norm: str,
                prefer: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``project(x_adv)`` and the target's logits there (no gradient): an attack on a table with
        discrete features counts a sample as fooled, and keeps it, only at this point."""
        x_chk = self.project(x, x_adv.detach(), eps, norm, prefer)
        with torch.no_grad():
            return x_chk, target.logits(x_chk)


def flat_norm(t: torch.Tensor, norm: str) -> torch.Tensor:
    flat = t.flatten(1)
    return flat.abs().amax(dim=1) if norm == "linf" else flat.norm(dim=1)


def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def project_ball(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project onto the ε-ball of the given norm."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    n = flat_norm(delta, "l2")
    factor = torch.where(n > eps, eps / n.clamp_min(1e-12), torch.ones_like(n))
    return delta * _view(factor, delta)


def ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent direction under the norm: sign for L∞, unit-L2 gradient for L2."""
    if norm == "linf":
        return grad.sign()
    return grad / _view(flat_norm(grad, "l2").clamp_min(1e-12), grad)


def random_start(streams: SampleStreams, shape: tuple[int, ...], eps: float, norm: str, device: str) -> torch.Tensor:
    """Uniform sample of the ε-ball (L∞: per coordinate; L2: direction times eps * u^(1/d)), one
    sample per stream (so each input's start does not depend on its batch)."""
    per = tuple(shape[1:])
    if norm == "linf":
        delta = (streams.uniform(per) * 2 - 1) * eps
    else:
        g = streams.normal(per)
        d = int(np.prod(per))
        r = eps * streams.uniform() ** (1.0 / d)
        flat = np.linalg.norm(g.reshape(len(g), -1), axis=1).clip(1e-12)
        delta = g / flat.reshape(-1, *([1] * len(per))) * r.reshape(-1, *([1] * len(per)))
    return torch.as_tensor(delta, dtype=torch.float32, device=device)


def attack_loss(logits: torch.Tensor, goal: torch.Tensor, loss: str, targeted: bool) -> torch.Tensor:
    """Per-sample loss to *maximise*: cross-entropy or the Carlini-Wagner margin."""
    if loss == "ce":
        ce = F.cross_entropy(logits, goal, reduction="none")
        return -ce if targeted else ce
    goal_logit = logits.gather(1, goal[:, None]).squeeze(1)
    other = logits.clone()
    other.scatter_(1, goal[:, None], -torch.inf)
    margin = other.amax(dim=1) - goal_logit
    return -margin if targeted else margin


def expected_score(logits: torch.Tensor, goal: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Per-sample score of a candidate on a randomised target, to maximise: minus the log of the
    expected probability of the true class, or (``targeted``) the log of that of the target class.
    ``logits`` are an EOT view's (the log of the mean probability over draws)."""
    logp = torch.log_softmax(logits.detach(), dim=1).gather(1, goal[:, None]).squeeze(1)
    return logp if targeted else -logp


@dataclass
class BestCandidate:
    """Per input of a batch, the adversarial candidate of best ``expected_score`` seen so far: on a
    randomised target an attack keeps the point that minimises the expected accuracy, and never
    falls back to the clean input because one draw was right (first offer always replaces it)."""

    x: torch.Tensor
    score: torch.Tensor
    index: torch.Tensor | None = None  # a sub-batch's rows in x (see ``sub``)

    @classmethod
    def of(cls, x0: torch.Tensor) -> BestCandidate:
        return cls(x0.clone(), torch.full((len(x0),), -torch.inf, device=x0.device))

    def sub(self, idx: torch.Tensor) -> BestCandidate:
        """The same candidates seen from the sub-batch ``idx`` (offers update this one)."""
        return BestCandidate(self.x, self.score, idx if self.index is None else self.index[idx])

    def offer(self, idx: torch.Tensor, x: torch.Tensor, score: torch.Tensor) -> None:
        """Keep ``x[i]`` for row ``idx[i]`` where its score beats the best so far."""
        rows = idx if self.index is None else self.index[idx]
        better = score > self.score[rows]
        if better.any():
            self.x[rows[better]], self.score[rows[better]] = x[better].detach(), score[better]


def is_fooled(logits: torch.Tensor, goal: torch.Tensor, targeted: bool) -> torch.Tensor:
    pred = logits.argmax(dim=1)
    return pred == goal if targeted else pred != goal


def to_tensor(a: np.ndarray, device: str, dtype: Any = torch.float32) -> torch.Tensor:
    return torch.as_tensor(a, device=device, dtype=dtype)
