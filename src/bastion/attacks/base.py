"""The Attack contract: ``run(target, x, y, threat) -> AttackResult``, and the name registry.

An attack is a small object holding its parameters (Foolbox style); the target, data and threat
model are arguments. Inputs are processed in batches: an interrupt (Ctrl-C) or an exhausted query
budget keeps every finished batch and marks the result incomplete.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from bastion.core.data import check_label_indices
from bastion.core.metrics import attack_metrics, perturbation_norms
from bastion.core.registry import Registry
from bastion.core.targets.base import Target
from bastion.core.threat import ThreatModel, check_eps, check_norm
from bastion.errors import BastionRuntimeError, QueryBudgetExceeded, TargetError, UsageError

log = logging.getLogger(__name__)

ProgressFn = Callable[[int], None]


@dataclass
class AttackResult:
    """Outcome of one attack at one ε: adversarial inputs and what they achieved."""

    attack: str
    x_adv: np.ndarray
    success: np.ndarray
    norms: dict[str, np.ndarray]
    queries: int
    seconds: float
    y: np.ndarray
    clean_pred: np.ndarray
    adv_pred: np.ndarray
    adv_confidence: np.ndarray
    eps: float | None = None
    norm: str | None = None
    targeted: bool = False
    complete: bool = True
    reason: str | None = None
    interrupted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def robust_accuracy(self) -> float:
        return float(np.mean(self.adv_pred == self.y))

    @property
    def clean_accuracy(self) -> float:
        return float(np.mean(self.clean_pred == self.y))

    def metrics(self) -> dict[str, Any]:
        m = attack_metrics(y=self.y, clean_pred=self.clean_pred, adv_pred=self.adv_pred, success=self.success,
                           norms=self.norms, adv_confidence=self.adv_confidence, queries=self.queries,
                           seconds=self.seconds)
        m.update({"attack": self.attack, "eps": self.eps, "norm": self.norm, "complete": self.complete})
        if self.reason:
            m["reason"] = self.reason
        return m


class Attack(ABC):
    """Base class. Subclasses set ``name`` and ``family`` and implement ``_attack_batch``."""

    name: ClassVar[str] = ""
    family: ClassVar[str] = "evasion-whitebox"
    needs_gradients: ClassVar[bool] = True
    minimal: ClassVar[bool] = False  # True for attacks that search for the smallest perturbation

    def __init__(self, *, eps: float = 0.1, norm: str = "linf", targeted: bool = False, batch_size: int = 256,
                 seed: int = 0) -> None:
        self.eps = check_eps(eps)
        self.norm = check_norm(norm)
        self.targeted = bool(targeted)
        if batch_size <= 0:
            raise UsageError(f"batch_size must be positive, got {batch_size}")
        self.batch_size = int(batch_size)
        self.seed = int(seed)

    # --- parameters (scikit-learn style) ------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        import inspect

        return {n: getattr(self, n) for n in _param_names(type(self)) if hasattr(self, n)}

    def clone(self, **changes: Any) -> Attack:
        return type(self)(**{**self.get_params(), **changes})

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # --- running --------------------------------------------------------------------------------
    def run(self, target: Target, x: np.ndarray, y: np.ndarray, threat: ThreatModel | None = None, *,
            y_target: np.ndarray | None = None, progress: ProgressFn | None = None) -> AttackResult:
        """Attack ``x`` (labels ``y`` as class indices). A ``threat`` overrides ε, norm and targeting."""
        attack = self if threat is None else self.clone(eps=threat.eps, norm=threat.norm, targeted=threat.targeted)
        return attack._run(target, x, y, y_target=y_target, progress=progress,
                           query_budget=threat.query_budget if threat else None)

    def _run(self, target: Target, x: np.ndarray, y: np.ndarray, *, y_target: np.ndarray | None,
             progress: ProgressFn | None, query_budget: int | None) -> AttackResult:
        if self.needs_gradients and not target.white_box:
            raise TargetError(f"attack '{self.name}' needs gradients but target '{target.name}' is a black box",
                              hint="use a black-box attack (e.g. square, hopskipjump) or a transfer attack")
        x = target.input_spec.validate(x)
        y = _check_labels(y, len(x), target.n_classes)
        if self.targeted and y_target is None:
            rng = np.random.default_rng(self.seed)
            y_target = (y + rng.integers(1, target.n_classes, size=len(y))) % target.n_classes
        goal = y_target if self.targeted else y
        start_q, t0 = target.queries, time.perf_counter()
        saved_budget = target.query_budget
        if query_budget is not None:  # the threat's budget never lifts the target's own hard limit
            limit = start_q + query_budget
            target.query_budget = limit if saved_budget is None else min(limit, saved_budget)
        x_adv, complete, reason, interrupted = x.copy(), True, None, False
        clean_pred: np.ndarray | None = None
        try:
            clean_pred = _predict(target, x, self.batch_size)
            for s in range(0, len(x), self.batch_size):
                sl = slice(s, s + self.batch_size)
                todo = np.flatnonzero((clean_pred[sl] == y[sl]) if not self.targeted else
                                      (clean_pred[sl] != goal[sl]))
                if len(todo):
                    rows = s + todo
                    x_adv[rows] = target.input_spec.enforce(x[rows], self._attack_batch(target, x[rows], goal[rows], rows))
                if progress:
                    progress(min(self.batch_size, len(x) - s))
        except QueryBudgetExceeded as exc:
            if query_budget is not None and target.query_budget == start_q + query_budget:
                exc = f"the threat model's budget of {query_budget} queries is spent"  # not the target's total
            complete, reason = False, f"query budget exhausted: {exc}"
            log.warning("%s: %s", self.name, reason)
        except KeyboardInterrupt:
            complete, reason, interrupted = False, "interrupted", True
            log.warning("%s interrupted; keeping the batches finished so far", self.name)
        except BastionRuntimeError as exc:  # e.g. an endpoint that failed mid-attack
            complete, reason = False, f"stopped early: {exc}"
            log.warning("%s: %s; keeping the batches finished so far", self.name, reason)
        finally:
            target.query_budget = saved_budget
        seconds = time.perf_counter() - t0
        queries = target.queries - start_q
        with target.uncounted():  # bastion's own measurement, not the attacker's queries
            probs = target.predict_proba(x_adv)
            if clean_pred is None:
                clean_pred = _predict(target, x, self.batch_size)
        adv_pred = probs.argmax(axis=1)
        success = (adv_pred == goal) if self.targeted else (adv_pred != y)
        norms = perturbation_norms(x, x_adv, target.input_spec.scale_array())
        return AttackResult(attack=self.name, x_adv=x_adv, success=success, norms=norms, queries=queries,
                            seconds=seconds, y=y, clean_pred=clean_pred, adv_pred=adv_pred,
                            adv_confidence=probs.max(axis=1), eps=None if self.minimal else self.eps,
                            norm=self.norm, targeted=self.targeted, complete=complete, reason=reason,
                            interrupted=interrupted)

    @abstractmethod
    def _attack_batch(self, target: Target, x: np.ndarray, goal: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Adversarial versions of ``x`` (float32, inside bounds). ``goal`` holds the true labels
        (untargeted) or the target labels (targeted); ``rows`` are the indices in the full input."""


def _param_names(cls: type) -> list[str]:
    """Named parameters of the ``__init__`` methods along the MRO (no self, *args, **kwargs)."""
    import inspect

    names = [name for c in cls.__mro__ if c is not object
             for name, p in inspect.signature(c.__init__).parameters.items()
             if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return list(dict.fromkeys(names))


def _predict(target: Target, x: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([target.predict_proba(x[s:s + batch_size]).argmax(1)
                           for s in range(0, len(x), batch_size)])


def _check_labels(y: np.ndarray, n: int, n_classes: int) -> np.ndarray:
    return check_label_indices(y, n, n_classes)


# --- registry -------------------------------------------------------------------------------------
_EVASION = "bastion.attacks.evasion"
ATTACKS: Registry[type[Attack]] = Registry("attack", {
    "fgsm": f"{_EVASION}.fgsm:FGSM",
    "pgd": f"{_EVASION}.pgd:PGD",
    "apgd": f"{_EVASION}.apgd:APGD",
    "apgd-ce": f"{_EVASION}.apgd:APGDCE",
    "apgd-dlr": f"{_EVASION}.apgd:APGDDLR",
    "apgd-t": f"{_EVASION}.apgd:APGDT",
    "auto": f"{_EVASION}.auto:AutoAttack",
    "cw": f"{_EVASION}.cw:CarliniWagnerL2",
    "deepfool": f"{_EVASION}.deepfool:DeepFool",
    "min-eps": f"{_EVASION}.min_eps:MinimalEps",
    "square": f"{_EVASION}.square:Square",
    "hopskipjump": f"{_EVASION}.hopskipjump:HopSkipJump",
    "transfer": f"{_EVASION}.transfer:Transfer",
})
"""Every attack by name: bastion's own and those of the ``bastion.attacks`` entry points."""


def register_attack(cls: type[Attack]) -> type[Attack]:
    """Class decorator: make an attack reachable by name from policies, the CLI and the API."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name; set the class attribute name = '...'")
    ATTACKS.add(cls.name, cls)
    return cls


def available_attacks() -> Registry[type[Attack]]:
    """The attack registry: ``name in available_attacks()`` and iterating names import nothing;
    ``available_attacks()[name]`` imports that attack (a missing extra is a one-line error)."""
    return ATTACKS


def get_attack(name: str, **params: Any) -> Attack:
    """Build a registered attack by name, validating its parameters."""
    cls = ATTACKS.get_object(name)
    try:
        return cls(**params)
    except TypeError as exc:
        raise UsageError(f"bad parameters for attack '{name}': {exc}; allowed: {', '.join(_param_names(cls))}") \
            from exc
