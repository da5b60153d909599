"""``auto``: an ensemble in the spirit of AutoAttack "standard" (Croce & Hein, 2020, arXiv:2003.01690),
with its time spent where it changes the result.

Stages, each run only on the inputs still robust after the previous ones:

1. ``apgd-ce`` — APGD with the cross-entropy loss;
2. ``apgd-t``  — targeted APGD-DLR towards each of the top-9 other classes (``n_target_classes``),
   the nine runs of an input side by side in one batch, all stopped once one fools it; at the first
   checkpoint (22% of the steps) an input keeps its ``targets_kept`` runs of highest loss. Then up to
   ``restarts - 1`` restart rounds, from random starts, only on the inputs still robust whose best
   targeted DLR loss came within ``near`` of the boundary, each towards the input's most promising
   class, and only while the previous round fooled a new input;
3. ``fab-t``   — FAB-T (Croce & Hein 2020, arXiv:1907.02044), AutoAttack's minimal-norm stage, towards
   each input's ``fab_targets`` (1) most promising classes by APGD-T's best loss (AutoAttack runs 9):
   an input counts as fooled at its first adversarial point within ε;
4. ``square``  — the Square black-box attack (scores on the logits), for models whose gradients
   mislead the white-box stages. Skipped, with a note, if no attack named ``square`` is registered.

Square's budget follows the gradients: before it, each input still robust is probed once (the DLR
gradient APGD-T follows finite and non-zero, the CE gradient finite, the logits the same on a
second call). On a torch model with no declared BPDA the probe runs before the first stage, and an
input whose gradients are unhealthy but healthy under :class:`StraightThroughView` (BPDA with the
identity through rounding, singular functions evaluated inside their domain) takes the white-box
stages' gradients from that view and counts as healthy for Square, as with a declared BPDA. Where they are healthy the white-box stages have done their job and Square gets
``healthy_share`` of its queries; where they are not (quantisation, a non-differentiable step,
randomness) it gets them all.

``AttackResult.extra["stages"]`` lists, per stage, the robust accuracy over all inputs after it
(its last row is the headline robust accuracy, on the same inputs), its seconds and queries;
``extra["gradients"]`` the probe's counts; ``extra["notes"]`` what was skipped and why.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from bastion.attacks.base import (
    MAX_QUERIES,
    MAX_RESTARTS,
    MAX_STEPS,
    AttackResult,
    AttackRun,
    EvasionAttack,
    GradientParams,
    available_attacks,
    get_attack,
    register_attack,
)
from bastion.attacks.evasion._torch import Geometry, project_ball, random_start, to_tensor
from bastion.attacks.evasion.apgd import APGD, APGDRun, apgd_optimise, dlr_loss
from bastion.attacks.evasion.expectation import EOT_DEFAULT, draw_counts, shares
from bastion.attacks.evasion.fab import FABRun, fab_optimise
from bastion.core.run import model_draws
from bastion.core.straight_through import StraightThroughView
from bastion.core.targets.base import DifferentiableTarget, Target
from bastion.core.targets.torch_target import TorchTarget
from bastion.errors import QueryBudgetExceeded

log = logging.getLogger(__name__)

STAGES = ("apgd-ce", "apgd-t", "fab-t", "square")


class AutoParams(GradientParams):
    steps: int = Field(100, ge=1, le=MAX_STEPS, description="APGD and FAB-T iterations per run.")
    restarts: int = Field(3, ge=1, le=MAX_RESTARTS,
                          description="APGD-T rounds at most; the later ones only near the boundary, while they pay.")
    near: float = Field(0.1, ge=0, le=1,
                        description="Restart rounds: inputs whose best targeted DLR loss is above -near.")
    n_target_classes: int = Field(9, ge=1, le=1000, description="Target classes of the APGD-T stage.")
    randomised_target_classes: int = Field(
        9, ge=1, le=1000, description="Randomised model (every target runs on every input): APGD-T's target "
                                      "classes at most, the most likely ones; fewer is faster.")
    straight_through: bool = Field(
        True, description="Torch model with no declared BPDA: inputs whose gradients are zero or not finite take "
                          "the white-box stages' gradients straight through rounding and singular steps.")
    fab_targets: int = Field(1, ge=1, le=1000,
                             description="FAB-T runs per input, towards its most promising classes (AutoAttack: 9).")
    targets_kept: int = Field(3, ge=1, le=1000,
                              description="APGD-T runs an input keeps after the first checkpoint (highest loss).")
    stages: list[Literal["apgd-ce", "apgd-t", "fab-t", "square"]] = Field(
        default_factory=lambda: list(STAGES), min_length=1, description="Stages to run (in the fixed order).")
    blackbox: str = Field("square", description="The black-box stage's attack.")
    blackbox_queries: int = Field(5000, ge=1, le=MAX_QUERIES, description="Per-sample queries of that stage.")
    healthy_share: float = Field(0.1, gt=0, le=1,
                                 description="Share of the black-box queries for inputs whose gradients are healthy.")

    @field_validator("stages", mode="before")
    @classmethod
    def _default(cls, v: Any) -> Any:
        return list(STAGES) if v is None else v

    @field_validator("stages")
    @classmethod
    def _ordered(cls, v: list[str]) -> list[str]:
        return [s for s in STAGES if s in v]


@register_attack
class AutoAttack(EvasionAttack):
    """The ``auto`` ensemble: APGD-CE → APGD-T (adaptive restarts) → FAB-T → Square, each on the
    points still robust, Square budgeted by a gradient-health probe. ``stages`` picks a subset
    (in that order); ``blackbox_queries`` is Square's per-sample query budget (5000 as in AutoAttack)
    where gradients are unhealthy, ``healthy_share`` of it where they are healthy.

    >>> import bastion
    >>> attack = bastion.attacks.AutoAttack(eps=0.1, norm="linf")
    """

    name = "auto"

    Params = AutoParams

    def _begin(self, run: AttackRun, target: Target) -> None:
        plan: list[_Stage] = []
        for stage in self.stages:
            sub = run.derive(stage)
            if stage == "square" and self.blackbox not in available_attacks():
                run.notes.append(f"{self.blackbox} stage skipped: no attack named '{self.blackbox}' is registered")
                continue
            if stage == "square":
                sub.state = {}  # per budget, the black-box attack and its run
            plan.append(_Stage(stage, sub))
        run.state = _AutoState(plan, np.full(len(run.x), -1, np.int64), target,
                               np.repeat(run.x[None], len(plan), axis=0) if run.expectation else None)

    def _end(self, run: AttackRun, res: AttackResult) -> None:
        st: _AutoState = run.state
        # deterministic: an input counts as fooled from the stage that fooled it, and one no stage
        # recorded only at the last row, so that row is the headline over the same inputs
        stage_of = np.where(st.fooled_at >= 0, st.fooled_at, len(st.plan) - 1)
        stages = []
        for i, s in enumerate(st.plan):
            if st.x_stage is not None:  # randomised: each stage's inputs measured like the headline
                counts = self._draws(st.target, st.x_stage[i], run.ctx, "adv")
                acc = float(np.mean(shares(counts, res.y, run.goal, self.targeted)[0]))
            else:
                acc = float(np.mean(np.where(stage_of <= i, res.adv_pred, res.clean_pred) == res.y))
            stages.append({"stage": s.name, "robust_accuracy": acc, "seconds": round(s.seconds, 4),
                           "queries": int(s.queries)})
        res.extra["stages"] = stages
        if st.healthy is not None:
            res.extra["gradients"] = {"probed": int(st.healthy[0] + st.healthy[1]), "healthy": int(st.healthy[0])}
        if st.restart_rounds:
            res.extra["apgd_t_restarts"] = st.restart_rounds
        if st.straight[1]:
            res.extra["straight_through"] = {"unhealthy": st.straight[0], "used": st.straight[1]}
            run.notes.append(f"automatic straight-through gradients used for {st.straight[1]} of the "
                             f"{st.straight[0]} inputs whose gradients were zero or not finite (BPDA with the "
                             "identity through rounding and singular steps; predictions from the real model); "
                             "declare BPDA on the model for a substitute of your own")

    def _attack_batch(self, target: Target, x: np.ndarray, goal: np.ndarray, rows: np.ndarray,
                      run: AttackRun) -> np.ndarray:
        st: _AutoState = run.state
        if run.stop:
            raise QueryBudgetExceeded(run.stop)
        k = min(self.n_target_classes, target.n_classes - 1)
        if run.expectation:  # randomised: every input stays attacked until no draw is right
            robust = np.ones(len(x), bool)
        else:
            pred = target.predict_proba(x).argmax(1)
            robust = (pred != goal) if self.targeted else (pred == goal)
        b = _Batch(x, goal, rows, x.copy(), robust, st, np.full((len(x), k), -np.inf), run.expectation)
        if self.straight_through and not run.expectation and isinstance(target, TorchTarget) and target.bpda is None:
            b.straight_through(target, np.flatnonzero(robust))
        left = np.full(len(x), np.inf)  # randomised: share of draws on which the best candidate has not succeeded
        stages: dict[str, Callable[[Target, _Batch, np.ndarray, AttackRun], np.ndarray]] = {
            "apgd-ce": self._apgd_ce, "apgd-t": self._apgd_t, "fab-t": self._fab_t, "square": self._square}
        for i, s in enumerate(st.plan):
            todo = np.flatnonzero(b.robust)
            if len(todo) and not run.stop:
                self._stage(target, s, i, b, todo, left, run, stages[s.name])
            if st.x_stage is not None:
                st.x_stage[i, rows] = b.x_adv
        return b.x_adv

    def _stage(self, target: Target, s: _Stage, i: int, b: _Batch, todo: np.ndarray, left: np.ndarray,
               run: AttackRun, fn: Callable[[Target, _Batch, np.ndarray, AttackRun], np.ndarray]) -> None:
        """Run stage ``i`` on the inputs ``todo`` and keep what it found in ``b``."""
        x, goal = b.x, b.goal
        t0, q0 = time.perf_counter(), run.ledger.spent
        try:
            adv = target.input_spec.enforce(x[todo], self._candidates(target, s, b, todo, fn))
            if run.expectation:  # keep the candidate right on the fewest draws, never the clean input
                rest, now = (self._right(target, xs, goal[todo], run.ctx.key("select", s.name, str(b.rows[0])))
                             for xs in (adv, b.x_adv[todo]))  # the same draws for both: a paired comparison
                ok = ~np.isfinite(left[todo]) | (rest < now)
                b.x_adv[todo[ok]] = adv[ok]
                left[todo] = np.where(ok, rest, now)
                b.robust[todo] = left[todo] > 0
            else:
                p = target.predict_proba(adv).argmax(1)
                ok = (p == goal[todo]) if self.targeted else (p != goal[todo])
                b.x_adv[todo[ok]], b.robust[todo[ok]] = adv[ok], False
                b.st.fooled_at[b.rows[todo[ok]]] = i
        except QueryBudgetExceeded as exc:
            run.stop = f"query budget exhausted during the {s.name} stage: {exc}"
            log.warning("auto: %s", run.stop)
        finally:
            s.seconds += time.perf_counter() - t0
            s.queries += run.ledger.spent - q0
        if s.run.stop and not run.stop:  # the black-box stage keeps its partial result; stop here
            run.stop = s.run.stop
        log.debug("auto stage %s: %d of %d still robust", s.name, int(b.robust.sum()), len(x))

    @staticmethod
    def _candidates(target: Target, s: _Stage, b: _Batch, todo: np.ndarray,
                    fn: Callable[[Target, _Batch, np.ndarray, AttackRun], np.ndarray]) -> np.ndarray:
        """Stage ``s`` on ``todo``; a white-box stage takes the straight-through view's gradients
        on the inputs whose own gradients are unhealthy and healthy through it."""
        on = None if b.view is None or s.name == "square" else b.fixed[todo]
        if on is None or not on.any():
            return fn(target, b, todo, s.run)
        out = np.empty_like(b.x[todo])
        for t, m in ((target, ~on), (b.view, on)):
            if m.any():
                out[m] = fn(t, b, todo[m], s.run)
        return out

    def _right(self, target: Target, x: np.ndarray, goal: np.ndarray, key: int) -> np.ndarray:
        """Randomised target: per input, the share of EOT_DEFAULT draws (seeded by ``key``) on which
        the attack has not succeeded (the attacker's own queries)."""
        with model_draws(key):
            counts = draw_counts(target, x, EOT_DEFAULT, self.batch_size, counted=True)
        return 1.0 - shares(counts, goal, goal, self.targeted)[1]

    # --- the stages: each returns adversarial candidates for the inputs ``todo`` ----------------
    def _apgd(self, loss: str, k: int) -> APGD:
        return APGD(eps=self.eps, norm=self.norm, steps=self.steps, restarts=1, targeted=self.targeted,
                    seed=self.seed, loss=loss, n_target_classes=0 if self.targeted else k)

    def _apgd_ce(self, target: Target, b: _Batch, todo: np.ndarray, run: AttackRun) -> np.ndarray:
        return self._apgd("ce", 0)._attack_batch(target, b.x[todo], b.goal[todo], b.rows[todo], run)

    def _apgd_t(self, target: Target, b: _Batch, todo: np.ndarray, run: AttackRun) -> np.ndarray:
        """APGD-T towards the top-k classes side by side, then restart rounds near the boundary
        (randomised target: APGD's own expectation path, every target on every input)."""
        if run.expectation:  # every target runs on every input: only the most likely ones
            k = min(self.n_target_classes, self.randomised_target_classes)
            return self._apgd("dlr", k)._attack_batch(target, b.x[todo], b.goal[todo],
                                                                          b.rows[todo], run)
        assert isinstance(target, DifferentiableTarget)
        dev = target.device
        geo = Geometry.of(target)
        x0, g0 = to_tensor(b.x[todo], dev), to_tensor(b.goal[todo], dev, torch.long)
        apgd = self._apgd("dlr", self.n_target_classes)
        classes = b.classes(target, todo)
        plans: list[torch.Tensor | None] = [None] if self.targeted else list(torch.as_tensor(classes.T, device=dev))
        streams = run.streams(b.rows[todo], "start")
        idx = torch.arange(len(todo), device=dev)
        batch, init = apgd.replicate(x0, g0, idx, plans, streams, 0, dev)
        adv, ok, loss = apgd_optimise(target, geo, batch, eps=self.eps, norm=self.norm, steps=self.steps,
                                      loss="dlr", init=init, keep_best=self.targets_kept)
        assert batch.group is not None
        best = x0.clone()
        fooled = torch.zeros(len(todo), dtype=torch.bool, device=dev)
        best[batch.group[ok]], fooled[batch.group[ok]] = adv[ok], True
        loss = loss.view(len(plans), len(todo)).T.cpu().numpy()  # (inputs, targets): best loss of each run
        promise = np.where(np.isfinite(loss), loss, -np.inf)
        b.promise[todo, :promise.shape[1]] = promise
        st = b.st
        for r in range(1, self.restarts):
            near = np.flatnonzero((~fooled).cpu().numpy() & (promise.max(axis=1) > -self.near))
            if not len(near):
                break
            sel = torch.as_tensor(near, device=dev)
            pick = None if self.targeted else torch.as_tensor(classes[near, promise[near].argmax(1)], device=dev)
            start = random_start(streams.at(len(plans) + r).subset(near), tuple(x0[sel].shape), self.eps,
                                 self.norm, dev)
            one = APGDRun(x0[sel], None if self.targeted else g0[sel], g0[sel] if self.targeted else pick,
                          self.targeted)
            adv_r, ok_r, _ = apgd_optimise(target, geo, one, eps=self.eps, norm=self.norm, steps=self.steps,
                                           loss="dlr", init=start)
            best[sel[ok_r]], fooled[sel[ok_r]] = adv_r[ok_r], True
            st.restart_rounds.append({"round": r + 1, "inputs": len(sel), "fooled": int(ok_r.sum())})
            if not ok_r.any():
                break
        return best.cpu().numpy()

    def _fab_t(self, target: Target, b: _Batch, todo: np.ndarray, run: AttackRun) -> np.ndarray:
        """FAB-T with ε towards each input's ``fab_targets`` most promising classes (by APGD-T's best
        loss; by the clean logits when APGD-T did not run)."""
        assert isinstance(target, DifferentiableTarget)
        dev = target.device
        x0, g0 = to_tensor(b.x[todo], dev), to_tensor(b.goal[todo], dev, torch.long)
        if self.targeted:
            with torch.no_grad():
                y = target.logits(x0).argmax(1)
            fab = FABRun(x0, y, g0, goal=g0, group=torch.arange(len(todo), device=dev))
        else:
            k = min(self.fab_targets, b.promise.shape[1])
            order = np.argsort(-b.promise[todo], axis=1, kind="stable")[:, :k]  # most promising first
            cls = np.take_along_axis(b.classes(target, todo), order, axis=1)
            r = torch.arange(len(todo), device=dev).repeat_interleave(k)
            fab = FABRun(x0[r], g0[r], torch.as_tensor(cls.reshape(-1), device=dev), group=r)
        geo = Geometry.of(target)
        adv, nrm = fab_optimise(target, geo, fab, norm=self.norm, steps=self.steps, eps=self.eps)
        assert fab.group is not None
        out, hit = x0.clone(), nrm <= self.eps
        at = fab.group[hit]
        out[at] = geo.apply(x0[at], project_ball(geo.delta_of(x0[at], adv[hit]), self.eps, self.norm))
        return out.cpu().numpy()

    def _square(self, target: Target, b: _Batch, todo: np.ndarray, run: AttackRun) -> np.ndarray:
        """Square with the full budget where gradients are unhealthy, ``healthy_share`` of it elsewhere."""
        healthy = b.health(target, todo)
        out = b.x[todo].copy()
        for ok, q in ((healthy, max(1, round(self.blackbox_queries * self.healthy_share))),
                      (~healthy, self.blackbox_queries)):
            sel = todo[ok]
            if not len(sel) or run.stop:
                continue
            if q not in run.state:
                attack = get_attack(self.blackbox, eps=self.eps, norm=self.norm, targeted=self.targeted,
                                    seed=self.seed, max_queries=q)
                sq_run = run.derive(f"{self.blackbox}-{q}")
                attack._begin(sq_run, target)
                run.state[q] = (attack, sq_run)
            attack, sq_run = run.state[q]
            out[ok] = attack._attack_batch(target, b.x[sel], b.goal[sel], b.rows[sel], sq_run)
            run.stop = run.stop or sq_run.stop
        return out



def gradient_health(target: DifferentiableTarget, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per input: the gradient APGD-T follows (DLR; the cross-entropy with fewer than 3 classes) is
    finite and non-zero, the cross-entropy gradient is finite, and a second call gives the same
    logits. False flags what masks gradients: quantisation, a non-differentiable step, randomness
    (Athalye et al. 2018). A saturated softmax alone (zero cross-entropy gradient) does not: the DLR
    loss is invariant to the scale of the logits (Croce & Hein 2020)."""
    xr = x.clone().requires_grad_(True)
    logits = target.logits(xr)
    ce = F.cross_entropy(logits, y, reduction="none")
    follow = dlr_loss(logits, y, None) if logits.shape[1] >= 3 else ce
    (g_ce,) = torch.autograd.grad(ce.sum(), xr, retain_graph=follow is not ce)
    (g,) = (g_ce,) if follow is ce else torch.autograd.grad(follow.sum(), xr)
    flat = g.flatten(1)
    ok = torch.isfinite(g_ce.flatten(1)).all(1) & torch.isfinite(flat).all(1) & (flat.abs().sum(1) > 0)
    with torch.no_grad():
        again = target.logits(x)
    return ok & (again == logits.detach()).all(1)


@dataclass
class _Stage:
    name: str
    run: AttackRun
    seconds: float = 0.0
    queries: int = 0


@dataclass
class _AutoState:
    plan: list[_Stage]
    fooled_at: np.ndarray  # per input, the stage that fooled it (-1: none)
    target: Target
    x_stage: np.ndarray | None  # randomised target: the inputs after each stage (measured in expectation)
    healthy: list[int] | None = None  # probed inputs with healthy, unhealthy gradients
    restart_rounds: list[dict[str, int]] = field(default_factory=list)
    straight: list[int] = field(default_factory=lambda: [0, 0])  # inputs with unhealthy gradients, fixed by the view


@dataclass
class _Batch:
    """What ``auto`` knows about the inputs of one batch while its stages run."""

    x: np.ndarray
    goal: np.ndarray
    rows: np.ndarray
    x_adv: np.ndarray
    robust: np.ndarray
    st: _AutoState
    promise: np.ndarray  # (inputs, top-k classes): APGD-T's best loss towards each (-inf: not run)
    randomised: bool  # a randomised target's gradients are never healthy (one draw misleads)
    top: np.ndarray | None = None  # (inputs, k) the other classes by clean logits
    healthy: np.ndarray | None = None  # -1 not probed, 0 unhealthy, 1 healthy
    view: DifferentiableTarget | None = None  # the straight-through view, where it heals some inputs
    fixed: np.ndarray | None = None  # per input: its gradients are taken from ``view``

    def straight_through(self, target: TorchTarget, todo: np.ndarray) -> None:
        """Probe ``todo``; the inputs with unhealthy gradients that the straight-through view heals
        take their white-box gradients from it, and Square's budget for healthy gradients."""
        sick = todo[~self.health(target, todo)]
        if not len(sick):
            return
        view = StraightThroughView(target)
        ok = gradient_health(view, to_tensor(self.x[sick], target.device),
                             to_tensor(self.goal[sick], target.device, torch.long)).cpu().numpy()
        self.st.straight = [self.st.straight[0] + len(sick), self.st.straight[1] + int(ok.sum())]
        if ok.any():
            self.view, self.fixed = view, np.zeros(len(self.x), bool)
            self.fixed[sick[ok]] = True
            self.healthy[sick[ok]] = 1  # Square's budget: as for a declared BPDA's healthy gradients

    def classes(self, target: DifferentiableTarget, todo: np.ndarray) -> np.ndarray:
        """The top-k other classes of the inputs ``todo`` (by their clean logits)."""
        if self.top is None:
            x0 = to_tensor(self.x, target.device)
            g0 = to_tensor(self.goal, target.device, torch.long)
            with torch.no_grad():
                other = target.logits(x0).scatter(1, g0[:, None], -torch.inf).argsort(dim=1, descending=True)
            self.top = other[:, :self.promise.shape[1]].cpu().numpy()
        return self.top[todo]

    def health(self, target: Target, todo: np.ndarray) -> np.ndarray:
        """:func:`gradient_health` of the inputs ``todo`` (each input probed once)."""
        if self.healthy is None:
            self.healthy = np.full(len(self.x), 0 if self.randomised else -1, np.int8)
        new = todo[self.healthy[todo] < 0]
        if len(new):
            assert isinstance(target, DifferentiableTarget)
            ok = gradient_health(target, to_tensor(self.x[new], target.device),
                                 to_tensor(self.goal[new], target.device, torch.long)).cpu().numpy()
            self.healthy[new] = ok
            counts = self.st.healthy or [0, 0]
            self.st.healthy = [counts[0] + int(ok.sum()), counts[1] + int((~ok).sum())]
        return self.healthy[todo] > 0
