"""Attribute inference and model inversion: ``run(target, data, threat, ctx)``.

Both measure what the model's answers reveal beyond what an attacker knows without it, so each
result carries a baseline that never queries the model, and an ``advantage`` over it (positive:
the model leaked something). Jayaraman & Evans (2022, "Are Attribute Inference Attacks Just
Imputation?", arXiv:2209.01292) show why a result without such a baseline misleads: with
background records whose attribute is known, the baseline is an imputation learner fitted on them
(the records' other columns and labels, no model output), else the majority value (or the mean).

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
from pydantic import BaseModel, Field

from bastion.attacks.privacy.imputation import Learner, fit_predict, record_features
from bastion.core.arrays import Array
from bastion.core.capability import Configurable, metering
from bastion.core.data import check_label_indices
from bastion.core.params import Params
from bastion.core.registry import Registry
from bastion.core.repeated import Repeats, asked, query_repeats
from bastion.core.results import CheckResult, InversionGrid
from bastion.core.run import RunContext
from bastion.core.stats import binom_sf, mcnemar_greater
from bastion.core.targets.base import Target
from bastion.core.threat import ThreatModel
from bastion.errors import BastionRuntimeError, DataError, TargetError, UsageError

MAX_CANDIDATES = 64  # more distinct values than this: bin the column
BOOTSTRAP = 4000
CONFIDENCE = 0.95


# ============================================================================ attribute inference


@dataclass(frozen=True)
class AttributeData:
    """Records whose sensitive column ``attribute`` (an index into the flattened features) is to be
    inferred, with their labels (class indices). ``kind``: ``categorical`` (the values a column of
    codes may take: ``candidates``, by default the values present) or ``continuous``, scored by
    RMSE, or as categorical over ``bins`` quantile bins when given (each bin stands for the median
    of its values). ``known_x`` / ``known_y``: the attacker's background records, whose attribute
    is known (other people of the same population); learned attacks and the imputation baseline
    are fitted on them."""

    x: np.ndarray
    y: np.ndarray
    attribute: int
    kind: Literal["categorical", "continuous"] = "categorical"
    candidates: np.ndarray | None = None
    known_x: np.ndarray | None = None
    known_y: np.ndarray | None = None
    bins: int | None = None

    def __post_init__(self) -> None:
        if (self.known_x is None) != (self.known_y is None):
            raise DataError("known records: give both known_x and known_y, or neither")
        if self.bins is not None and (self.kind != "continuous" or self.bins < 2):
            raise DataError(f"bins must be an integer >= 2 for a continuous attribute, got bins={self.bins} "
                            f"for a {self.kind} one")


@dataclass(frozen=True)
class AttributeTask:
    """What an attribute attack sees: the records with the attribute hidden (NaN), their labels,
    the attribute's index and candidate values (None: continuous), and the background records
    with their attribute (a candidate value; a binned column holds its bin's value)."""

    x: np.ndarray
    y: np.ndarray
    attribute: int
    candidates: np.ndarray | None
    known_x: np.ndarray | None = None
    known_y: np.ndarray | None = None

    @property
    def has_known(self) -> bool:
        return self.known_x is not None and len(self.known_x) > 0

    @property
    def known_values(self) -> np.ndarray:
        assert self.known_x is not None
        return np.asarray(self.known_x, np.float64).reshape(len(self.known_x), -1)[:, self.attribute]


class AttributeResult(BaseModel):
    """Inferred values against the truth: accuracy (categorical, binned) or RMSE (continuous), the
    same metric for the no-query baseline (``baseline_kind``: an imputation learner on the known
    records, the majority value or the mean), and ``advantage`` > 0 when the attack beats it. For
    accuracies, ``ci_low``/``ci_high`` bound the advantage (95 %, paired bootstrap over the records)
    and ``p_value`` is the exact one-sided McNemar test that the attack is right more often."""

    attack: str
    attribute: int
    inferred: Array
    truth: Array
    candidates: list[float] | None = None
    metric: Literal["accuracy", "rmse"]
    value: float
    baseline: float
    baseline_kind: Literal["imputation", "majority", "mean"] = "majority"
    advantage: float
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    queries: int
    seconds: float
    repeats: int = Field(1, description="Queries per record and candidate whose answers were averaged (1: asked "
                                        "once).")

    def record(self, check: CheckResult) -> None:
        """Add the attack's metric, the baseline's, the advantage and its interval to ``check``."""
        unit = "ratio" if self.metric == "accuracy" else ""
        where = {"attack": self.attack, "attribute": self.attribute}
        check.measure(f"attribute_{self.metric}", self.value, unit, **where)
        check.measure(f"baseline_{self.metric}", self.baseline, unit, **where)
        check.measure("attribute_advantage", self.advantage, unit, **where)
        if self.ci_low is not None:
            check.measure("attribute_advantage_ci_low", self.ci_low, unit, **where)
            check.measure("attribute_advantage_ci_high", self.ci_high, unit, **where)
        check.measure("queries", self.queries, "queries", **where)


class AttributeAttackParams(Params):
    """Parameters every attribute-inference attack has."""

    repeats: Repeats = None


class AttributeInference(Configurable, ABC):
    """Base of attribute-inference attacks. Subclasses implement ``_infer``; those that learn from
    background records set ``needs_known`` (refused without them) and may name the learner the
    baseline shares with them (``baseline_learner``)."""

    family: ClassVar[str] = "attribute-inference"
    Params: ClassVar[type[Params]] = AttributeAttackParams
    needs_known: ClassVar[bool] = False

    def baseline_learner(self) -> Learner:
        """The learner of the imputation baseline (the attack's own, when it learns)."""
        return "boosting"

    def run(self, target: Target, data: AttributeData, threat: ThreatModel | None = None,
            ctx: RunContext | None = None) -> AttributeResult:
        """Infer the attribute of every record and score it against the truth and the baseline."""
        x = target.input_spec.validate(data.x, what="records")
        y = check_label_indices(data.y, len(x), target.n_classes, what="record labels")
        flat = x.reshape(len(x), -1)
        if not 0 <= data.attribute < flat.shape[1]:
            raise DataError(f"attribute must be a feature index in [0, {flat.shape[1] - 1}], got {data.attribute}")
        known = None
        if data.known_x is not None:
            kx = target.input_spec.validate(data.known_x, what="known records")
            known = (kx.reshape(len(kx), -1).copy(),
                     check_label_indices(data.known_y, len(kx), target.n_classes, what="known labels"))
        if self.needs_known and known is None:
            raise UsageError(f"attribute attack '{self.label}' learns from background records whose attribute is "
                             "known, and none were given", hint="give known_x and known_y (in a policy: 'known')")
        values = flat[:, data.attribute].astype(np.float64)
        candidates, edges = _scheme(data, values, None if known is None else known[0][:, data.attribute])
        truth = values if edges is None else _to_bins(values, edges, candidates)
        if known is not None and edges is not None:
            known[0][:, data.attribute] = _to_bins(known[0][:, data.attribute], edges, candidates)
        hidden = flat.copy()
        hidden[:, data.attribute] = np.nan  # the attack never sees the value it infers
        task = AttributeTask(hidden.reshape(x.shape), y, data.attribute, candidates,
                             None if known is None else known[0].reshape((-1, *x.shape[1:])),
                             None if known is None else known[1])
        threat, rctx = threat or ThreatModel(), self.run_context(ctx)
        repeats = query_repeats(target, self.params.repeats, x)  # type: ignore[attr-defined]
        with metering(rctx, target, threat=threat) as meter:
            inferred = self._infer(asked(target, repeats), task, threat, rctx)
        inferred = np.asarray(inferred, np.float64)
        if inferred.shape != truth.shape or not np.all(np.isfinite(inferred)):
            raise BastionRuntimeError(f"attribute attack '{self.label}' must return {len(truth)} finite values, "
                                      f"got shape {inferred.shape}")
        common = {"attack": self.label, "attribute": data.attribute, "inferred": inferred, "truth": truth,
                  "queries": meter.queries, "seconds": meter.seconds, "repeats": repeats}
        if candidates is None:
            value = float(np.sqrt(np.mean((inferred - truth) ** 2)))
            guess = float(np.mean(task.known_values)) if task.has_known else float(np.mean(truth))
            baseline = float(np.sqrt(np.mean((truth - guess) ** 2)))  # RMSE of always guessing the mean
            return AttributeResult(metric="rmse", value=value, baseline=baseline, baseline_kind="mean",
                                   advantage=baseline - value, **common)
        if not np.isin(inferred, candidates).all():
            raise BastionRuntimeError(f"attribute attack '{self.label}' inferred values outside the candidates")
        guess, kind = self._baseline(task, truth, target.n_classes, rctx)
        hit, base_hit = inferred == truth, guess == truth
        lo, hi = paired_gain_interval(hit, base_hit, rctx.rng("bootstrap"))
        return AttributeResult(metric="accuracy", value=float(hit.mean()), baseline=float(base_hit.mean()),
                               baseline_kind=kind, advantage=float(hit.mean() - base_hit.mean()), ci_low=lo,
                               ci_high=hi, p_value=mcnemar_greater(int(np.sum(hit & ~base_hit)),
                                                                   int(np.sum(~hit & base_hit))),
                               candidates=[float(c) for c in candidates], **common)

    def _baseline(self, task: AttributeTask, truth: np.ndarray, n_classes: int,
                  ctx: RunContext) -> tuple[np.ndarray, Literal["imputation", "majority"]]:
        """What an attacker guesses without the model: the imputation learner fitted on the known
        records (their other columns and labels), else the most frequent value of the records."""
        assert task.candidates is not None
        if task.has_known:
            assert task.known_x is not None and task.known_y is not None
            train = record_features(task.known_x, task.known_y, task.attribute, n_classes)
            test = record_features(task.x, task.y, task.attribute, n_classes)
            seed = int(ctx.rng("baseline").integers(2**31 - 1))
            return fit_predict(self.baseline_learner(), train, task.known_values, test, task.candidates,
                               seed), "imputation"
        vals, counts = np.unique(truth, return_counts=True)
        return np.full(len(truth), vals[np.argmax(counts)]), "majority"

    @abstractmethod
    def _infer(self, target: Target, task: AttributeTask, threat: ThreatModel, ctx: RunContext) -> np.ndarray:
        """One inferred value per record; ``task.x`` holds NaN in column ``task.attribute``;
        categorical values must come from ``task.candidates`` (None for a continuous attribute).
        ``target`` is asked as the attacker asks it: averaging repeated answers when it is randomised
        (:class:`~bastion.core.repeated.RepeatedQueries`)."""


def _scheme(data: AttributeData, values: np.ndarray,
            known: np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The candidate values (None: continuous) and, for a binned column, the bin edges: quantiles
    of the known values (else of ``values``), each bin standing for the median of its values."""
    if data.kind == "categorical":
        seen = values if known is None else np.concatenate([values, known])
        cand = np.unique(seen if data.candidates is None else np.asarray(data.candidates, np.float64))
        outside = ~np.isin(seen, cand)
        if outside.any():
            raise DataError(f"attribute column {data.attribute} holds {np.unique(seen[outside])[:5].tolist()}, "
                            f"which are not among the candidates {cand.tolist()[:10]}")
        if len(cand) > MAX_CANDIDATES:
            raise DataError(f"attribute column {data.attribute} takes {len(cand)} distinct values (at most "
                            f"{MAX_CANDIDATES} candidates are tried): infer it as a numeric attribute in bins",
                            hint="a policy's check takes 'attribute_kind: numeric' (and 'bins'); AttributeData takes "
                                 "kind='continuous', bins=5")
        return cand, None
    if data.bins is None:
        return None, None
    src = np.asarray(values if known is None else known, np.float64)
    edges = np.unique(np.quantile(src, np.linspace(0, 1, data.bins + 1)[1:-1], method="lower"))
    edges = edges[edges > src.min()]  # every bin then holds at least one value of src
    which = np.searchsorted(edges, src, side="right")
    reps = np.array([np.quantile(src[which == b], 0.5, method="lower") for b in range(len(edges) + 1)])
    return reps, edges


def _to_bins(values: np.ndarray, edges: np.ndarray, reps: np.ndarray) -> np.ndarray:
    """Each value replaced by the value of its bin."""
    return reps[np.searchsorted(edges, values, side="right")]


def paired_gain_interval(hit: np.ndarray, base_hit: np.ndarray, rng: np.random.Generator,
                         confidence: float = CONFIDENCE, n_boot: int = BOOTSTRAP) -> tuple[float, float]:
    """Percentile bootstrap interval (Efron & Tibshirani 1993) of mean(hit) - mean(base_hit) over
    the same records: resampling records only moves the counts of records where the attack alone
    (+1) or the baseline alone (-1) is right, so each resample is one multinomial draw."""
    n = len(hit)
    probs = np.array([np.sum(hit & ~base_hit), np.sum(~hit & base_hit), 0.0]) / n
    probs[2] = max(0.0, 1.0 - probs[0] - probs[1])
    draws = rng.multinomial(n, probs, size=n_boot)
    gains = (draws[:, 0] - draws[:, 1]) / n
    a = (1 - confidence) / 2
    return float(np.quantile(gains, a)), float(np.quantile(gains, 1 - a))


# ============================================================================ model inversion


class InversionResult(BaseModel):
    """One reconstruction per class, inside the target's bounds, beside the mean private record of
    each class present in the data (``classes``, ``class_means``).

    - ``distance``: mean L2 distance (in ε units) from each reconstruction to its class mean;
      ``baseline``: the same for the mean of all records (what an attacker knowing only the data's
      overall average would guess); ``advantage = baseline - distance``;
    - ``similarity[i]``: cosine similarity of reconstruction and class mean of ``classes[i]``, both
      taken relative to the overall mean (1: the class's own pattern, 0: unrelated);
    - ``identified``: the share of classes whose reconstruction is more similar to its own class
      mean than to any other class's (``nearest[i]``: the class whose mean is most similar); chance
      is ``1 / len(classes)``, and ``p_value`` is the exact binomial probability of identifying as
      many by chance."""

    attack: str
    reconstructions: Array
    confidence: Array
    classes: list[int] = Field(default_factory=list)
    class_means: Array | None = None
    distance: float
    baseline: float
    advantage: float
    similarity: Array | None = None
    nearest: list[int] = Field(default_factory=list)
    identified: float | None = None
    p_value: float | None = None
    queries: int
    seconds: float

    def record(self, check: CheckResult, class_names: list[str] | None = None) -> None:
        """Add the reconstructions' figures to ``check``, and for images (inputs of 2 or 3 axes) a
        grid of each class's mean beside its reconstruction."""
        check.measure("inversion_distance", self.distance, "eps", attack=self.attack)
        check.measure("baseline_distance", self.baseline, "eps", attack=self.attack)
        check.measure("inversion_advantage", self.advantage, "eps", attack=self.attack)
        if self.identified is not None and self.similarity is not None:
            check.measure("inversion_identified", self.identified, "ratio", attack=self.attack)
            check.measure("inversion_similarity", float(np.mean(self.similarity)), "score", attack=self.attack)
        check.measure("inversion_confidence", float(np.mean(self.confidence)), "ratio", attack=self.attack)
        check.measure("queries", self.queries, "queries", attack=self.attack)
        shape = list(self.reconstructions.shape[1:])
        if len(shape) in (2, 3) and self.class_means is not None:
            names = class_names or [str(c) for c in range(len(self.reconstructions))]
            check.artifacts.append(InversionGrid(
                attack=self.attack, shape=shape, class_means=self.class_means.tolist(),
                reconstructions=self.reconstructions[self.classes].tolist(), labels=[names[c] for c in self.classes],
                similarity=[] if self.similarity is None else [float(v) for v in self.similarity],
                nearest=[names[c] for c in self.nearest]))


class ModelInversion(Configurable, ABC):
    """Base of model-inversion attacks (Fredrikson et al., 2015, "Model Inversion Attacks that
    Exploit Confidence Information and Basic Countermeasures", CCS). Subclasses implement
    ``_invert``, which sees the target and the threat only; ``data`` scores the result. Attacks
    that take gradients set ``needs_gradients`` (a black-box target is refused); every attack
    needs scores (a label-only target is refused) and finite input bounds."""

    family: ClassVar[str] = "inversion"
    needs_gradients: ClassVar[bool] = False

    def run(self, target: Target, data: Any, threat: ThreatModel | None = None,
            ctx: RunContext | None = None) -> InversionResult:
        """Reconstruct a representative input of every class; ``data`` (a Dataset-like object with
        ``x`` and class-index ``y``) holds the private records the reconstructions are compared with."""
        x = target.input_spec.validate(data.x, what="private records")
        y = check_label_indices(data.y, len(x), target.n_classes, what="private labels")
        self._check_target(target)
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
        means = np.stack([x[y == c].mean(axis=0) for c in present]).astype(np.float64)
        overall = x.mean(axis=0).astype(np.float64)
        mine = rec[present].astype(np.float64)

        def dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return np.sqrt((((a - b) / scale).reshape(len(a), -1) ** 2).sum(axis=1))

        distance = float(np.mean(dist(mine, means)))
        baseline = float(np.mean(dist(np.broadcast_to(overall, means.shape), means)))
        sim = _cosine(((mine - overall) / scale).reshape(len(mine), -1), ((means - overall) / scale).reshape(len(mine), -1))
        nearest = [present[i] for i in sim.argmax(axis=1)]
        hits = int(np.sum(np.array(nearest) == np.array(present))) if len(present) > 1 else 0
        with target.uncounted():  # bastion's own measurement
            conf = target.predict_proba(rec)[np.arange(len(rec)), np.arange(len(rec))]
        return InversionResult(
            attack=self.label, reconstructions=rec, confidence=conf, classes=present,
            class_means=means.astype(np.float32), distance=distance, baseline=baseline,
            advantage=baseline - distance, similarity=np.diag(sim), nearest=nearest,
            identified=hits / len(present) if len(present) > 1 else None,
            p_value=binom_sf(hits, len(present), 1 / len(present)) if len(present) > 1 else None,
            queries=meter.queries, seconds=meter.seconds)

    def _check_target(self, target: Target) -> None:
        if target.label_only:
            raise UsageError(f"inversion attack '{self.label}' needs the model's scores, but the target "
                             f"'{target.name}' answers labels only")
        if self.needs_gradients and not target.adaptive_view().white_box:
            raise TargetError(f"inversion attack '{self.label}' needs gradients but target '{target.name}' is a "
                              "black box", hint="use the score-based attack 'mi-face-scores'")
        lo, hi = target.input_spec.bounds_arrays()
        if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
            raise UsageError(f"inversion attack '{self.label}' searches inside the input bounds, and the target "
                             f"'{target.name}' declares infinite ones", hint="declare finite lower and upper bounds")

    @abstractmethod
    def _invert(self, target: Target, threat: ThreatModel, ctx: RunContext) -> np.ndarray:
        """One input per class (shape (n_classes, *input shape)), inside the target's bounds."""


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of every row of ``a`` with every row of ``b`` (0 for a zero row)."""
    na = np.linalg.norm(a, axis=1, keepdims=True)
    nb = np.linalg.norm(b, axis=1, keepdims=True)
    return (a / np.where(na > 0, na, 1)) @ (b / np.where(nb > 0, nb, 1)).T


_HERE = "bastion.attacks.privacy"
ATTRIBUTE_ATTACKS: Registry[type[AttributeInference]] = Registry("attribute attack", {
    "fredrikson": f"{_HERE}.attribute:Fredrikson",
    "learned": f"{_HERE}.attribute:LearnedAttribute",
}, group="bastion.attribute_attacks")
"""Every attribute-inference attack by name (entry points: ``bastion.attribute_attacks``)."""

INVERSION_ATTACKS: Registry[type[ModelInversion]] = Registry("inversion attack", {
    "mi-face": f"{_HERE}.inversion:MIFace",
    "mi-face-scores": f"{_HERE}.inversion:MIFaceScores",
}, group="bastion.inversion_attacks")
"""Every model-inversion attack by name (entry points: ``bastion.inversion_attacks``)."""


def get_attribute_attack(name: str, **params: Any) -> AttributeInference:
    """Build a registered attribute-inference attack by name, validating its parameters."""
    return ATTRIBUTE_ATTACKS.get_object(name)(**params)


def get_inversion_attack(name: str, **params: Any) -> ModelInversion:
    """Build a registered model-inversion attack by name, validating its parameters."""
    return INVERSION_ATTACKS.get_object(name)(**params)
