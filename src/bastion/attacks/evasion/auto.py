"""``auto``: an ensemble in the spirit of AutoAttack "standard" (Croce & Hein, 2020, arXiv:2003.01690).

Stages, each run only on the inputs still robust after the previous ones:

1. ``apgd-ce``   — APGD with the cross-entropy loss;
2. ``apgd-t``    — targeted APGD-DLR towards each of the top-9 other classes (or n_classes - 1);
3. ``deepfool``  — the minimal-norm stage: DeepFool (Moosavi-Dezfooli et al., 2016) with its
   accumulated perturbation projected onto the ε-ball at every step (10 iterations). AutoAttack uses FAB-T here;
   DeepFool is a cheaper boundary-seeking attack whose search direction differs from APGD's
   (nearest linearised boundary rather than loss ascent), which is what this stage is for;
4. ``square``    — the Square black-box attack (score-based, no gradients), which catches models
   whose gradients mislead the white-box stages. Skipped, with a note, if no attack named
   ``square`` is registered.

``AttackResult.extra["stages"]`` lists, per stage, the robust accuracy over all inputs after it,
its seconds and queries; ``extra["notes"]`` says what was skipped and why.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
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
from bastion.attacks.evasion._torch import Geometry, to_tensor
from bastion.attacks.evasion.apgd import APGD
from bastion.attacks.evasion.deepfool import deepfool_optimise
from bastion.attacks.evasion.expectation import EOT_DEFAULT, draw_counts, shares
from bastion.core.targets.base import DifferentiableTarget, Target
from bastion.errors import QueryBudgetExceeded

log = logging.getLogger(__name__)

STAGES = ("apgd-ce", "apgd-t", "deepfool", "square")


class AutoParams(GradientParams):
    steps: int = Field(100, ge=1, le=MAX_STEPS, description="APGD iterations per run.")
    restarts: int = Field(1, ge=1, le=MAX_RESTARTS, description="APGD restarts, on points still robust.")
    n_target_classes: int = Field(9, ge=1, le=1000, description="Target classes of the APGD-T stage.")
    stages: list[Literal["apgd-ce", "apgd-t", "deepfool", "square"]] = Field(
        default_factory=lambda: list(STAGES), min_length=1, description="Stages to run (in the fixed order).")
    blackbox: str = Field("square", description="The black-box stage's attack.")
    blackbox_queries: int = Field(5000, ge=1, le=MAX_QUERIES, description="Per-sample queries of that stage.")

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
    """The ``auto`` ensemble: APGD-CE → APGD-T → ε-constrained DeepFool → Square, each on the points
    still robust. ``stages`` picks a subset (in that order); ``blackbox_queries`` is Square's
    per-sample query budget (5000 as in AutoAttack).

    >>> import bastion
    >>> attack = bastion.attacks.AutoAttack(eps=0.1, norm="linf")
    """

    name = "auto"

    Params = AutoParams

    # --- the stages ---------------------------------------------------------------------------
    def _begin(self, run: AttackRun, target: Target) -> None:
        common = {"eps": self.eps, "norm": self.norm, "steps": self.steps, "restarts": self.restarts,
                  "targeted": self.targeted, "seed": self.seed}  # EOT: the base averages the gradient target
        plan: list[_Stage] = []
        for stage in self.stages:
            attack: EvasionAttack | None = None
            if stage == "apgd-ce":
                attack = APGD(loss="ce", **common)
            elif stage == "apgd-t":
                k = min(self.n_target_classes, target.n_classes - 1)
                # targeted runs already have their target class: plain targeted APGD-DLR towards it
                attack = APGD(loss="dlr", n_target_classes=0 if self.targeted else k, **common)
            elif stage == "deepfool":
                if self.targeted:
                    run.notes.append("deepfool stage skipped: DeepFool is untargeted")
                else:
                    attack = _EpsDeepFool(eps=self.eps, norm=self.norm)
            elif stage == "square":
                if self.blackbox not in available_attacks():
                    run.notes.append(f"{self.blackbox} stage skipped: no attack named '{self.blackbox}' is registered")
                else:
                    attack = get_attack(self.blackbox, eps=self.eps, norm=self.norm, targeted=self.targeted,
                                        seed=self.seed, max_queries=self.blackbox_queries)
            sub = run.derive(stage)
            if attack is not None:
                attack._begin(sub, target)
            plan.append(_Stage(stage, attack, sub))
        run.state = _AutoState(plan, np.full((len(plan), len(run.x)), -1, np.int64),
                               np.repeat(run.x[None], len(plan), axis=0) if run.expectation else None, target)

    def _end(self, run: AttackRun, res: AttackResult) -> None:
        st: _AutoState = run.state
        stages = []
        for i, s in enumerate(st.plan):
            if s.attack is None:
                continue
            if st.x_stage is not None:  # randomised: each stage's inputs measured like the headline
                counts = self._draws(st.target, st.x_stage[i], run.ctx, "adv")
                acc = float(np.mean(shares(counts, res.y, run.goal, self.targeted)[0]))
            else:
                pred = np.where(st.preds[i] >= 0, st.preds[i], res.clean_pred)
                acc = float(np.mean(pred == res.y))
            stages.append({"stage": s.name, "robust_accuracy": acc,
                           "seconds": round(s.seconds, 4), "queries": int(s.queries)})
        res.extra["stages"] = stages

    def _attack_batch(self, target: Target, x: np.ndarray, goal: np.ndarray, rows: np.ndarray,
                      run: AttackRun) -> np.ndarray:
        st: _AutoState = run.state
        if run.stop:
            raise QueryBudgetExceeded(run.stop)
        spec = target.input_spec
        x_adv = x.copy()
        if run.expectation:  # randomised: every input stays attacked until no draw is right
            pred, robust = np.full(len(x), -1), np.ones(len(x), bool)
            left = np.full(len(x), np.inf)  # share of draws on which the best candidate has not succeeded
        else:
            pred = target.predict_proba(x).argmax(1)
            robust = (pred != goal) if self.targeted else (pred == goal)
        for i, s in enumerate(st.plan):
            todo = np.flatnonzero(robust)
            if s.attack is not None and len(todo) and not run.stop:
                t0, q0 = time.perf_counter(), run.ledger.spent
                try:
                    adv = spec.enforce(x[todo], s.attack._attack_batch(target, x[todo], goal[todo], rows[todo],
                                                                        s.run))
                    if run.expectation:  # keep the candidate right on the fewest draws, never the clean input
                        counts = draw_counts(target, adv, EOT_DEFAULT, self.batch_size, counted=True)
                        rest = 1.0 - shares(counts, goal[todo], goal[todo], self.targeted)[1]
                        ok = rest < left[todo]
                        x_adv[todo[ok]], pred[todo[ok]], left[todo[ok]] = adv[ok], counts[ok].argmax(1), rest[ok]
                        robust[todo] = left[todo] > 0
                    else:
                        p = target.predict_proba(adv).argmax(1)
                        ok = (p == goal[todo]) if self.targeted else (p != goal[todo])
                        x_adv[todo[ok]], pred[todo[ok]], robust[todo[ok]] = adv[ok], p[ok], False
                except QueryBudgetExceeded as exc:
                    run.stop = f"query budget exhausted during the {s.name} stage: {exc}"
                    log.warning("auto: %s", run.stop)
                finally:
                    s.seconds += time.perf_counter() - t0
                    s.queries += run.ledger.spent - q0
                if s.run.stop and not run.stop:  # the black-box stage keeps its partial result; stop here
                    run.stop = s.run.stop
                log.debug("auto stage %s: %d of %d still robust", s.name, int(robust.sum()), len(x))
            st.preds[i, rows] = pred
            if st.x_stage is not None:
                st.x_stage[i, rows] = x_adv
        return x_adv


@dataclass
class _Stage:
    name: str
    attack: EvasionAttack | None
    run: AttackRun
    seconds: float = 0.0
    queries: int = 0


@dataclass
class _AutoState:
    plan: list[_Stage]
    preds: np.ndarray  # per stage, each input's prediction after it (-1: not reached)
    x_stage: np.ndarray | None  # randomised target: the inputs after each stage (measured in expectation)
    target: Target


class _EpsDeepFool(EvasionAttack):
    """The ε-constrained DeepFool stage: the accumulated perturbation projected onto the ε-ball at
    every step, 10 iterations, the 10 most likely other classes."""

    name = "deepfool-eps"

    def _attack_batch(self, target: Target, x: np.ndarray, goal: np.ndarray, rows: np.ndarray,
                      run: AttackRun) -> np.ndarray:
        assert isinstance(target, DifferentiableTarget)
        geo = Geometry.of(target)
        x0, y0 = to_tensor(x, target.device), to_tensor(goal, target.device, torch.long)
        adv, _ = deepfool_optimise(target, geo, x0, y0, norm=self.norm, overshoot=0.02, max_iter=10,
                                   candidates=10, eps=self.eps)
        return adv.cpu().numpy()
