"""Attribute inference and model inversion: ``run(target, data, threat, ctx)``.

Both measure what the model's answers reveal beyond what an attacker knows without it, so each
result carries a baseline that never queries the model, and an ``advantage`` over it (positive:
the model leaked something). Jayaraman & Evans (2022, "Are Attribute Inference Attacks Just
Imputation?", arXiv:2209.01292) show why a result without such a baseline misleads.

The bases enforce once, for every algorithm, that the attack never sees what it must infer:
attribute inference hands the records over with the sensitive column set to NaN (any query that
forgets to fill it is refused by the target's input check), and model inversion gets no data at
all — the private records are used only to score the reconstructions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel

from bastion.core.arrays import Array
from bastion.core.capability import Configurable, metering
from bastion.core.data import check_label_indices
from bastion.core.results import CheckResult
from bastion.core.run import RunContext
from bastion.core.targets.base import Target
from bastion.core.threat import ThreatModel
from bastion.errors import BastionRuntimeError, DataError


@dataclass(frozen=True)
class AttributeData:
    """Records whose sensitive column ``attribute`` (an index into the flattened features) is to be
    inferred, their labels (class indices), and the values the attribute may take (categorical;
    by default the values present)."""

    x: np.ndarray
    y: np.ndarray
    attribute: int
    kind: Literal["categorical", "continuous"] = "categorical"
    candidates: np.ndarray | None = None


class AttributeResult(BaseModel):
    """Inferred values against the truth: accuracy (categorical) or RMSE (continuous), the same
    metric for the no-query baseline (the majority value, or the mean), and ``advantage`` > 0 when
    the attack beats the baseline."""

    attack: str
    attribute: int
    inferred: Array
    truth: Array
    metric: Literal["accuracy", "rmse"]
    value: float
    baseline: float
    advantage: float
    queries: int
    seconds: float

    def record(self, check: CheckResult) -> None:
        """Add the attack's metric, the baseline's and the advantage to ``check``."""
        unit = "ratio" if self.metric == "accuracy" else ""
        where = {"attack": self.attack, "attribute": self.attribute}
        check.measure(f"attribute_{self.metric}", self.value, unit, **where)
        check.measure(f"baseline_{self.metric}", self.baseline, unit, **where)
        check.measure("attribute_advantage", self.advantage, unit, **where)


class AttributeInference(Configurable, ABC):
    """Base of attribute-inference attacks. Subclasses implement ``_infer``."""

    family: ClassVar[str] = "attribute-inference"

    def run(self, target: Target, data: AttributeData, threat: ThreatModel | None = None,
            ctx: RunContext | None = None) -> AttributeResult:
        x = target.input_spec.validate(data.x, what="records")
        y = check_label_indices(data.y, len(x), target.n_classes, what="record labels")
        flat = x.reshape(len(x), -1)
        if not 0 <= data.attribute < flat.shape[1]:
            raise DataError(f"attribute must be a feature index in [0, {flat.shape[1] - 1}], got {data.attribute}")
        truth = flat[:, data.attribute].astype(np.float64)
        candidates = None
        if data.kind == "categorical":
            candidates = np.unique(truth if data.candidates is None else np.asarray(data.candidates, np.float64))
        hidden = flat.copy()
        hidden[:, data.attribute] = np.nan  # the attack never sees the value it infers
        threat, rctx = threat or ThreatModel(), self.run_context(ctx)
        with metering(rctx, target, threat=threat) as meter:
            inferred = self._infer(target, hidden.reshape(x.shape), y, data.attribute, candidates, threat, rctx)
        inferred = np.asarray(inferred, np.float64)
        if inferred.shape != truth.shape or not np.all(np.isfinite(inferred)):
            raise BastionRuntimeError(f"attribute attack '{self.label}' must return {len(truth)} finite values, "
                                      f"got shape {inferred.shape}")
        if candidates is not None:
            if not np.isin(inferred, candidates).all():
                raise BastionRuntimeError(f"attribute attack '{self.label}' inferred values outside the candidates")
            vals, counts = np.unique(truth, return_counts=True)
            value = float(np.mean(inferred == truth))
            baseline = float(np.mean(truth == vals[np.argmax(counts)]))
            metric, advantage = "accuracy", value - baseline
        else:
            value = float(np.sqrt(np.mean((inferred - truth) ** 2)))
            baseline = float(np.std(truth))  # RMSE of always guessing the mean
            metric, advantage = "rmse", baseline - value
        return AttributeResult(attack=self.label, attribute=data.attribute, inferred=inferred, truth=truth,
                               metric=metric, value=value, baseline=baseline, advantage=advantage,
                               queries=meter.queries, seconds=meter.seconds)

    @abstractmethod
    def _infer(self, target: Target, x: np.ndarray, y: np.ndarray, attribute: int, candidates: np.ndarray | None,
               threat: ThreatModel, ctx: RunContext) -> np.ndarray:
        """One inferred value per record; ``x`` holds NaN in column ``attribute``; categorical values
        must come from ``candidates`` (None for a continuous attribute)."""


class InversionResult(BaseModel):
    """One reconstruction per class, inside the target's bounds; ``distance``: mean L2 distance (in
    ε units) from each reconstruction to the mean private record of its class; ``baseline``: the
    same distance for the mean of all classes' records (what an attacker knowing only the data's
    overall average would guess); ``advantage = baseline - distance``."""

    attack: str
    reconstructions: Array
    confidence: Array
    distance: float
    baseline: float
    advantage: float
    queries: int
    seconds: float

    def record(self, check: CheckResult) -> None:
        """Add the reconstructions' distance, the baseline's and the advantage to ``check``."""
        check.measure("inversion_distance", self.distance, "eps", attack=self.attack)
        check.measure("baseline_distance", self.baseline, "eps", attack=self.attack)
        check.measure("inversion_advantage", self.advantage, "eps", attack=self.attack)


class ModelInversion(Configurable, ABC):
    """Base of model-inversion attacks (Fredrikson et al., 2015, "Model Inversion Attacks that
    Exploit Confidence Information and Basic Countermeasures", CCS). Subclasses implement
    ``_invert``, which sees the target and the threat only; ``data`` scores the result."""

    family: ClassVar[str] = "inversion"

    def run(self, target: Target, data: Any, threat: ThreatModel | None = None,
            ctx: RunContext | None = None) -> InversionResult:
        """Reconstruct a representative input of every class; ``data`` (a Dataset-like object with
        ``x`` and class-index ``y``) holds the private records the reconstructions are compared with."""
        x = target.input_spec.validate(data.x, what="private records")
        y = check_label_indices(data.y, len(x), target.n_classes, what="private labels")
        threat, rctx = threat or ThreatModel(), self.run_context(ctx)
        with metering(rctx, target, threat=threat) as meter:
            rec = self._invert(target, threat, rctx)
        try:
            rec = target.input_spec.validate(rec, what=f"reconstructions of '{self.label}'")
        except DataError as exc:  # the algorithm's fault, not the user's
            raise BastionRuntimeError(exc.message) from exc
        if len(rec) != target.n_classes:
            raise BastionRuntimeError(f"inversion attack '{self.label}' returned {len(rec)} reconstructions "
                                      f"for {target.n_classes} classes")
        scale = target.input_spec.scale_array().astype(np.float64)
        present = [c for c in range(target.n_classes) if np.any(y == c)]
        means = {c: x[y == c].mean(axis=0) for c in present}
        overall = x.mean(axis=0)

        def dist(a: np.ndarray, b: np.ndarray) -> float:
            return float(np.linalg.norm(((a - b) / scale).ravel()))

        distance = float(np.mean([dist(rec[c], means[c]) for c in present]))
        baseline = float(np.mean([dist(overall, means[c]) for c in present]))
        with target.uncounted():  # bastion's own measurement
            conf = target.predict_proba(rec)[np.arange(len(rec)), np.arange(len(rec))]
        return InversionResult(attack=self.label, reconstructions=rec, confidence=conf, distance=distance,
                               baseline=baseline, advantage=baseline - distance, queries=meter.queries,
                               seconds=meter.seconds)

    @abstractmethod
    def _invert(self, target: Target, threat: ThreatModel, ctx: RunContext) -> np.ndarray:
        """One input per class (shape (n_classes, *input shape)), inside the target's bounds."""
