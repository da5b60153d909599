"""Model extraction (theft): ``run(target, pool, threat, ctx) -> ExtractionResult``.

An algorithm queries the target on inputs from ``pool`` and yields a surrogate after each round of
queries; the surrogate is itself a :class:`Target`, so every other attack runs on it unchanged
(a transfer attack, a membership attack on the stolen model). The base enforces once for every
algorithm: part of the pool is held out and never shown to the attack; each surrogate has the
target's classes and input shape; the threat's query budget is never exceeded; and it measures the
fidelity curve — agreement with the target's predictions on the held-out inputs against the
queries spent (Tramèr et al., 2016, "Stealing Machine Learning Models via Prediction APIs",
USENIX Security; Jagielski et al., 2020, "High Accuracy and High Fidelity Extraction of Neural
Networks", USENIX Security).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from bastion.core.capability import Configurable, metering
from bastion.core.data import check_label_indices
from bastion.core.results import CheckResult, FidelityCurve
from bastion.core.params import Params
from bastion.core.registry import Registry
from bastion.core.repeated import Repeats, asked, query_cost, query_repeats
from bastion.core.run import RunContext
from bastion.core.targets.base import Target
from bastion.core.threat import ThreatModel
from bastion.errors import BastionRuntimeError, DataError, QueryBudgetExceeded

log = logging.getLogger(__name__)


class ExtractionParams(Params):
    holdout: float = Field(0.2, gt=0.0, lt=1.0, description="share of the pool kept to measure fidelity")
    repeats: Repeats = None


class ExtractionResult(BaseModel):
    """The last surrogate (a Target; not serialised), its fidelity curve (fidelity against queries
    spent, one point per surrogate the attack produced) and, when the pool has labels, the
    surrogates' accuracy at the same points. When the query budget
    ran out or the run was interrupted, the last surrogate finished before is kept and
    ``complete`` is False, with the ``reason``. ``holdout``: the pool's indices never shown to
    the attack (where fidelity is measured; not serialised)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    attack: str
    surrogate: Target = Field(exclude=True)
    curve: FidelityCurve
    accuracy_curve: list[float] | None = None
    fidelity: float
    accuracy: float | None = None
    target_accuracy: float | None = None
    queries: int
    seconds: float
    repeats: int = Field(1, description="queries per input whose answers were averaged (1: asked once)")
    complete: bool = True
    reason: str | None = None
    interrupted: bool = False
    holdout: list[int] = Field(default_factory=list, exclude=True)

    def record(self, check: CheckResult) -> None:
        """Add this result's measurements (what gates read) and its fidelity curve to ``check``."""
        check.measure("fidelity", self.fidelity, "ratio", attack=self.attack)
        if self.accuracy is not None:
            check.measure("surrogate_accuracy", self.accuracy, "ratio", attack=self.attack)
        check.measure("queries", self.queries, "queries", attack=self.attack)
        check.artifacts.append(self.curve)


class ModelExtraction(Configurable, ABC):
    """Base of extraction attacks. Subclasses implement ``_extract`` as a generator of surrogates."""

    family: ClassVar[str] = "extraction"
    Params: ClassVar[type[Params]] = ExtractionParams
    uses_groups: ClassVar[bool] = False
    """True: ``_extract`` also takes ``groups=``, the attacker's own labels of the queried inputs
    (the query set's ``y``, or the pool's for the inputs not held out; None without labels)."""

    def run(self, target: Target, pool: Any, threat: ThreatModel | None = None,
            ctx: RunContext | None = None, *, query_set: Any = None) -> ExtractionResult:
        """``pool``: inputs the attacker may query (an array), or a Dataset-like object with ``x``
        and class-index ``y`` (then the surrogate's accuracy is reported too). ``query_set``: other
        inputs the attacker queries instead (out-of-distribution natural data, as Knockoff Nets and
        Copycat CNN use), an array or a Dataset-like object whose ``y`` groups them (Knockoff's
        adaptive strategy); the held-out part of the pool still measures fidelity. Queries are charged
        to the run's ledger within ``threat.query_budget``; when it is spent, or on Ctrl-C, the last
        surrogate finished before is the result (``complete=False``)."""
        threat, rctx = threat or ThreatModel(), self.run_context(ctx)
        x = target.input_spec.validate(getattr(pool, "x", pool), what="extraction pool")
        queried = None if query_set is None else target.input_spec.validate(
            getattr(query_set, "x", query_set), what="extraction query set")
        y = getattr(pool, "y", None)
        y = None if y is None else check_label_indices(y, len(x), target.n_classes, what="pool labels")
        n_hold = int(round(len(x) * self.params.holdout))
        if n_hold < 1 or n_hold >= len(x):
            raise DataError(f"the extraction pool of {len(x)} inputs is too small to hold out {self.params.holdout:.0%} "
                            f"for measuring fidelity", hint="give a larger pool")
        order = rctx.rng("holdout").permutation(len(x))
        hold, query = order[:n_hold], order[n_hold:]
        extra: dict[str, Any] = {}
        if self.uses_groups:
            groups = y[query] if queried is None and y is not None else getattr(query_set, "y", None)
            if groups is not None and len(groups) != len(x[query] if queried is None else queried):
                raise DataError(f"the extraction query set has {len(queried)} inputs but {len(groups)} labels")
            extra["groups"] = None if groups is None else np.asarray(groups)
        with target.uncounted():  # bastion's own measurement, not the attacker's queries
            ref = target.predict(x[hold])
        repeats = query_repeats(target, self.params.repeats, x[query])
        curve = FidelityCurve(attack=self.label, queries=[], fidelity=[])
        accuracy: list[float] | None = None if y is None else []
        surrogate: Target | None = None
        complete, reason, interrupted = True, None, False
        with metering(rctx, target, threat=threat) as meter:
            try:
                for candidate in self._extract(asked(target, repeats), x[query] if queried is None else queried,
                                               threat, rctx, **extra):
                    self._check_surrogate(target, candidate)
                    surrogate = candidate
                    pred = surrogate.predict(x[hold])
                    curve.queries.append(meter.queries)
                    curve.fidelity.append(float(np.mean(pred == ref)))
                    if accuracy is not None and y is not None:
                        accuracy.append(float(np.mean(pred == y[hold])))
                    rctx.check_cancelled()
            except QueryBudgetExceeded as exc:  # keep the last surrogate built within the budget
                complete, reason = False, f"query budget exhausted: {exc}"
            except KeyboardInterrupt:  # Ctrl-C, or the run cancelled
                complete, reason, interrupted = False, "interrupted", True
        if surrogate is None:
            if interrupted:
                raise KeyboardInterrupt
            raise BastionRuntimeError(f"extraction attack '{self.label}' produced no surrogate"
                                      + (f" ({reason})" if reason else ""))
        if not complete:
            log.warning("%s: %s; keeping the surrogate of %d queries", self.label, reason, int(curve.queries[-1]))
        return ExtractionResult(attack=self.label, surrogate=surrogate, curve=curve, fidelity=curve.fidelity[-1],
                                accuracy_curve=accuracy, accuracy=accuracy[-1] if accuracy else None,
                                target_accuracy=None if y is None else float(np.mean(ref == y[hold])),
                                queries=meter.queries, seconds=meter.seconds, repeats=repeats, complete=complete,
                                reason=reason,
                                interrupted=interrupted, holdout=hold.tolist())

    def _check_surrogate(self, target: Target, surrogate: Any) -> None:
        if not isinstance(surrogate, Target):
            raise BastionRuntimeError(f"extraction attack '{self.label}' yielded a {type(surrogate).__name__}, "
                                      f"not a Target")
        if surrogate.n_classes != target.n_classes or surrogate.input_spec.shape != target.input_spec.shape:
            raise BastionRuntimeError(
                f"extraction attack '{self.label}': surrogate has {surrogate.n_classes} classes and inputs "
                f"{surrogate.input_spec.shape}; the target has {target.n_classes} and {target.input_spec.shape}")

    @staticmethod
    def queries_left(target: Target, threat: ThreatModel) -> int | None:
        """The queries left to the attack: the least of the threat's budget and what the target's
        own hard limit leaves (None: unlimited)."""
        left = [b for b in (threat.query_budget, None if target.query_budget is None
                            else target.query_budget - target.queries) if b is not None]
        return min(left) if left else None

    @classmethod
    def room(cls, target: Target, threat: ThreatModel) -> int | None:
        """The inputs the attack may still ask about: :meth:`queries_left` over what one input costs
        (its repeats on a randomised target, :func:`~bastion.core.repeated.query_cost`)."""
        left = cls.queries_left(target, threat)
        return None if left is None else left // query_cost(target)

    @abstractmethod
    def _extract(self, target: Target, pool: np.ndarray, threat: ThreatModel, ctx: RunContext) -> Iterator[Target]:
        """Query the target on inputs of ``pool`` and yield a surrogate after each round; the last
        one is the result. A query past ``threat.query_budget`` raises QueryBudgetExceeded.
        ``target`` is asked as the attacker asks it: through a
        :class:`~bastion.core.repeated.RepeatedQueries` view (each input ``repeats`` queries, answers
        averaged) when it is randomised."""


_HERE = "bastion.attacks.extraction"
EXTRACTION_ATTACKS: Registry[type[ModelExtraction]] = Registry("extraction attack", {
    "equation-solving": f"{_HERE}.equation:EquationSolving",
    "knockoff": f"{_HERE}.learning:Knockoff",
    "copycat": f"{_HERE}.learning:Copycat",
    "jacobian": f"{_HERE}.learning:JacobianAugmentation",
}, group="bastion.extraction_attacks")
"""Extraction attacks by name: bastion's own and those of the ``bastion.extraction_attacks`` entry points."""


def get_extraction_attack(name: str, **params: Any) -> ModelExtraction:
    """Build a registered extraction attack by name, validating its parameters."""
    return EXTRACTION_ATTACKS.get_object(name)(**params)
