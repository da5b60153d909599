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
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from bastion.attacks.base import (
    Attack,
    AttackResult,
    available_attacks,
    get_attack,
    register_attack,
)
from bastion.attacks.evasion._torch import Geometry, to_tensor
from bastion.attacks.evasion.apgd import APGD
from bastion.attacks.evasion.deepfool import deepfool_optimise
from bastion.core.targets.base import DifferentiableTarget, Target
from bastion.errors import QueryBudgetExceeded, UsageError

log = logging.getLogger(__name__)

STAGES = ("apgd-ce", "apgd-t", "deepfool", "square")
StageFn = Callable[[Target, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@register_attack
class AutoAttack(Attack):
    """The ``auto`` ensemble: APGD-CE → APGD-T → ε-constrained DeepFool → Square, each on the points
    still robust. ``stages`` picks a subset (in that order); ``blackbox_queries`` is Square's
    per-sample query budget (5000 as in AutoAttack).

    >>> import bastion
    >>> attack = bastion.attacks.AutoAttack(eps=0.1, norm="linf")
    """

    name = "auto"

    def __init__(self, *, eps: float = 0.1, norm: str = "linf", steps: int = 100, restarts: int = 1,
                 n_target_classes: int = 9, eot_iter: int = 1, stages: list[str] | None = None,
                 blackbox: str = "square", blackbox_queries: int = 5000, targeted: bool = False,
                 batch_size: int = 256, seed: int = 0) -> None:
        super().__init__(eps=eps, norm=norm, targeted=targeted, batch_size=batch_size, seed=seed)
        chosen = list(STAGES if stages is None else stages)
        unknown = [s for s in chosen if s not in STAGES]
        if unknown or not chosen:
            raise UsageError(f"unknown auto stage(s) {unknown or chosen}; allowed: {', '.join(STAGES)}")
        if steps < 1 or restarts < 1 or n_target_classes < 1 or blackbox_queries < 1:
            raise UsageError("steps, restarts, n_target_classes and blackbox_queries must be >= 1")
        self.stages = [s for s in STAGES if s in chosen]
        self.steps, self.restarts, self.n_target_classes = int(steps), int(restarts), int(n_target_classes)
        self.eot_iter, self.blackbox, self.blackbox_queries = int(eot_iter), blackbox, int(blackbox_queries)
        self._reset()

    def _reset(self) -> None:
        self._notes: list[str] = []
        self._plan: list[tuple[str, StageFn | None]] = []
        self._seconds: list[float] = []
        self._queries: list[int] = []
        self._preds: np.ndarray = np.zeros((0, 0), np.int64)
        self._stop: str | None = None

    # --- the stages ---------------------------------------------------------------------------
    def _build_plan(self, target: Target) -> list[tuple[str, StageFn | None]]:
        common = {"eps": self.eps, "norm": self.norm, "steps": self.steps, "restarts": self.restarts,
                  "eot_iter": self.eot_iter, "targeted": self.targeted, "seed": self.seed}
        plan: list[tuple[str, StageFn | None]] = []
        for stage in self.stages:
            fn: StageFn | None = None
            if stage == "apgd-ce":
                fn = APGD(loss="ce", **common)._attack_batch
            elif stage == "apgd-t":
                k = min(self.n_target_classes, target.n_classes - 1)
                # targeted runs already have their target class: plain targeted APGD-DLR towards it
                fn = APGD(loss="dlr", n_target_classes=0 if self.targeted else k, **common)._attack_batch
            elif stage == "deepfool":
                if self.targeted:
                    self._notes.append("deepfool stage skipped: DeepFool is untargeted")
                else:
                    fn = self._deepfool
            elif stage == "square":
                fn = self._blackbox_stage()
            plan.append((stage, fn))
        return plan

    def _deepfool(self, target: Target, x: np.ndarray, goal: np.ndarray, rows: np.ndarray) -> np.ndarray:
        assert isinstance(target, DifferentiableTarget)
        geo = Geometry.of(target)
        x0, y0 = to_tensor(x, target.device), to_tensor(goal, target.device, torch.long)
        adv, _ = deepfool_optimise(target, geo, x0, y0, norm=self.norm, overshoot=0.02, max_iter=10,
                                   candidates=10, eps=self.eps)
        return adv.cpu().numpy()

    def _blackbox_stage(self) -> StageFn | None:
        if self.blackbox not in available_attacks():
            self._notes.append(f"{self.blackbox} stage skipped: no attack named '{self.blackbox}' is registered")
            return None
        bb = get_attack(self.blackbox, eps=self.eps, norm=self.norm, targeted=self.targeted, seed=self.seed,
                        max_queries=self.blackbox_queries)

        def run(target: Target, x: np.ndarray, goal: np.ndarray, rows: np.ndarray) -> np.ndarray:
            out = bb._attack_batch(target, x, goal, rows)
            reason = getattr(bb, "_budget_reason", None)
            if reason:  # the black-box attack keeps its partial result; stop the ensemble here
                self._stop = reason
            return out

        return run

    # --- running ------------------------------------------------------------------------------
    def _run(self, target: Target, x: np.ndarray, y: np.ndarray, **kwargs: Any) -> AttackResult:
        self._reset()
        self._plan = self._build_plan(target)
        self._seconds = [0.0] * len(self._plan)
        self._queries = [0] * len(self._plan)
        self._preds = np.full((len(self._plan), len(x)), -1, np.int64)
        res = super()._run(target, x, y, **kwargs)
        if self._stop and res.complete:
            res.complete, res.reason = False, self._stop
        stages = []
        for i, (stage, fn) in enumerate(self._plan):
            if fn is None:
                continue
            pred = np.where(self._preds[i] >= 0, self._preds[i], res.clean_pred)
            stages.append({"stage": stage, "robust_accuracy": float(np.mean(pred == res.y)),
                           "seconds": round(self._seconds[i], 4), "queries": int(self._queries[i])})
        res.extra["stages"] = stages
        if self._notes:
            res.extra["notes"] = list(dict.fromkeys(self._notes))
        return res

    def _attack_batch(self, target: Target, x: np.ndarray, goal: np.ndarray, rows: np.ndarray) -> np.ndarray:
        if self._stop:
            raise QueryBudgetExceeded(self._stop)
        spec = target.input_spec
        x_adv = x.copy()
        pred = target.predict_proba(x).argmax(1)
        robust = (pred != goal) if self.targeted else (pred == goal)
        for i, (stage, fn) in enumerate(self._plan):
            todo = np.flatnonzero(robust)
            if fn is not None and len(todo) and not self._stop:
                t0, q0 = time.perf_counter(), target.queries
                try:
                    adv = spec.enforce(x[todo], fn(target, x[todo], goal[todo], rows[todo]))
                    p = target.predict_proba(adv).argmax(1)
                    ok = (p == goal[todo]) if self.targeted else (p != goal[todo])
                    x_adv[todo[ok]], pred[todo[ok]], robust[todo[ok]] = adv[ok], p[ok], False
                except QueryBudgetExceeded as exc:
                    self._stop = f"query budget exhausted during the {stage} stage: {exc}"
                    log.warning("auto: %s", self._stop)
                finally:
                    self._seconds[i] += time.perf_counter() - t0
                    self._queries[i] += target.queries - q0
                log.debug("auto stage %s: %d of %d still robust", stage, int(robust.sum()), len(x))
            self._preds[i, rows] = pred
        return x_adv
