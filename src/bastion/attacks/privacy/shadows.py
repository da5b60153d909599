"""Shadow and reference models for membership inference, trained through the training contract.

Attacks that compare the target with models of their own (Shokri et al. 2017, arXiv:1610.05820;
LiRA, Carlini et al. 2022, arXiv:2112.03570; RMIA, Zarifzadeh et al. 2024, arXiv:2312.03262)
share this module. It trains ``n`` models with the run's TrainFn on random halves of a pool of
records and returns every model's class log-probabilities on every query record, with the matrix
saying which record each model was trained on:

- the query records are the members, the non-members and the reference records, in that order
  (:func:`query_records`), each under the chosen augmentations (``"flip"``: the image mirrored);
- ``online``: the pool is every query record, so each target record is in the training data of
  half the models (the balanced design of LiRA's reference code); ``offline``: the pool is the
  reference records only, so no model ever saw a target record;
- each model trains in a unit of work on the run's executor (worker processes when the run has
  one and the trainer can be sent to them, else in this process), and is cached on disk under
  bastion's cache folder (``$BASTION_CACHE_DIR``) in a folder keyed by a content hash of (trainer
  identity, training records, seed): its outputs on the query records (log-probabilities, keyed
  by a hash of those records) and, where bastion can rebuild it, the model itself — the weights
  of a ``TorchTrainingProcedure``'s module (``.npz``), a scikit-learn estimator (skops) — so new
  query records (another augmentation) need no training either. A re-run, or a run after an
  interrupted one, trains nothing it already trained. Files are written by bastion, in formats
  read without pickle (``np.load(allow_pickle=False)``, skops with its type allow-list), and each
  is checked against the SHA-256 written beside it on read (:mod:`bastion.core.trained`, which
  poisoning simulations share).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from bastion.attacks.privacy.membership import MembershipSplits
from bastion.core.defense import harden_like
from bastion.core.repeated import RepeatedQueries
from bastion.core.run import RunContext, Unit
from bastion.core.spec import InputSpec
from bastion.core.targets.base import Target
from bastion.core.trained import (
    answer,
    digest,
    fit_model,
    load_model,
    model_folder,
    read_cached,
    run_units,
    save_model,
    write_cached,
)
from bastion.core.training import TrainRequest, trainer_identity
from bastion.errors import UsageError

log = logging.getLogger(__name__)

Augment = Literal["none", "flip", "shift"]
_PHI_MAX = 1e4


@dataclass(frozen=True)
class QueryRecords:
    """The records every model is asked about: members, then non-members, then reference records."""

    x: np.ndarray
    y: np.ndarray
    n_members: int
    n_non_members: int

    @property
    def members(self) -> slice:
        return slice(0, self.n_members)

    @property
    def non_members(self) -> slice:
        return slice(self.n_members, self.n_members + self.n_non_members)

    @property
    def reference(self) -> slice:
        return slice(self.n_members + self.n_non_members, len(self.x))

    @property
    def targets(self) -> slice:
        """Members and non-members: the records whose membership is inferred."""
        return slice(0, self.n_members + self.n_non_members)


def query_records(splits: MembershipSplits) -> QueryRecords:
    parts_x = [splits.members_x, splits.non_members_x]
    parts_y = [splits.members_y, splits.non_members_y]
    if splits.has_reference:
        parts_x.append(splits.reference_x)
        parts_y.append(splits.reference_y)
    return QueryRecords(np.concatenate(parts_x).astype(np.float32), np.concatenate(parts_y).astype(np.int64),
                        len(splits.members_x), len(splits.non_members_x))


def augmented(x: np.ndarray, augment: Augment) -> list[np.ndarray]:
    """The query inputs under each augmentation: ``none`` (as given), ``flip`` (as given, and
    mirrored along the last axis: left-right for images) or ``shift`` (as given, and moved by one
    pixel up, down, left and right, the uncovered edge filled with zeros)."""
    if augment == "none":
        return [x]
    if x.ndim < 3:
        raise UsageError(f"augment='{augment}' transforms images; these records are not images",
                         hint="use augment: none for tables")
    if augment == "flip":
        return [x, np.ascontiguousarray(x[..., ::-1])]
    if augment == "shift":
        out = [x]
        for axis, step in ((-2, 1), (-2, -1), (-1, 1), (-1, -1)):
            moved = np.roll(x, step, axis=axis)
            edge = [slice(None)] * x.ndim
            edge[axis] = 0 if step > 0 else -1
            moved[tuple(edge)] = 0
            out.append(moved)
        return out
    raise UsageError(f"augment must be one of none, flip, shift; got {augment!r}")


def logit_confidence(logp: np.ndarray, y: np.ndarray) -> np.ndarray:
    """LiRA's logit-scaled confidence φ = log(p_y / (1 - p_y)) of each record's own label, from
    log-probabilities over the last axes (..., n, k) -> (..., n); 1 - p_y is the log-sum-exp of
    the other classes (no cancellation, no saturation)."""
    from scipy.special import logsumexp

    onehot = np.eye(logp.shape[-1], dtype=bool)[y]
    lpy = np.where(onehot, logp, 0.0).sum(-1)
    rest = logsumexp(np.where(onehot, -np.inf, logp), axis=-1)
    return np.clip(lpy - rest, -_PHI_MAX, _PHI_MAX)


def true_class_probability(logp: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pr(y | x, θ) for each record, from log-probabilities over the last axes (..., n, k) -> (..., n)."""
    return np.exp(true_class_log_probability(logp, y))


def true_class_log_probability(logp: np.ndarray, y: np.ndarray) -> np.ndarray:
    """log Pr(y | x, θ) for each record, over the last axes (..., n, k) -> (..., n)."""
    return np.take_along_axis(logp, np.broadcast_to(y[:, None], (*logp.shape[:-1], 1)), -1)[..., 0]


@dataclass(frozen=True)
class ShadowOutputs:
    """``logp[i, a, q]``: model ``i``'s class log-probabilities on query record ``q`` under
    augmentation ``a``; ``keep[i, q]``: whether record ``q`` was in model ``i``'s training data;
    ``trained``: models trained in this run (the others came from the cache)."""

    logp: np.ndarray
    keep: np.ndarray
    trained: int


def shadow_outputs(trainer: Any, queries: QueryRecords, *, n_models: int, online: bool, augment: Augment,
                   spec: InputSpec, classes: list[Any], ctx: RunContext, cache: bool = True,
                   like: Target | None = None, inputs: list[np.ndarray] | None = None) -> ShadowOutputs:
    """Train ``n_models`` models on random halves of the pool (see the module docstring) and
    return their outputs on every query record, hardened by the output defenses of ``like`` (the
    target) when it has some: the attacker knows the deployed defense. ``inputs``: what the models
    are asked instead of the augmented records (arrays of ``len(queries.x)`` rows, e.g. noisy
    copies of each record; they train on the records all the same)."""
    if n_models < 1:
        raise UsageError(f"the number of shadow models must be >= 1, got {n_models}")
    pool = np.arange(len(queries.x)) if online else np.arange(queries.reference.start, len(queries.x))
    if len(pool) < 2:
        raise UsageError("offline shadow models train on reference records, and there are none" if not online
                         else "too few records to train shadow models on",
                         hint="give the policy 'datasets: {reference: ...}': records from the same source as the "
                              "training data, not used to train the target")
    design = RunContext(seed=ctx.seed).rng("shadow-models", "online" if online else "offline")
    keep = np.zeros((n_models, len(queries.x)), bool)
    keep[:, pool] = _balanced_halves(design, n_models, len(pool))
    seeds = design.integers(0, 2**31 - 1, size=n_models)
    xs = augmented(queries.x, augment) if inputs is None else inputs
    identity = trainer_identity(trainer) if cache else None
    if cache and identity is None:
        log.warning("shadow models are not cached: the trainer has no stable identity (give it an identity() method)")
    qhash = digest(augment, *xs, queries.y)
    units, outputs = [], [None] * n_models
    for i in range(n_models):
        idx = np.flatnonzero(keep[i])
        folder = None
        if identity is not None:
            folder = model_folder("shadows", identity, queries.x[idx], queries.y[idx], int(seeds[i]))
            outputs[i] = read_cached(folder / f"{qhash}.npz")
            if outputs[i] is None and (model := load_model(trainer, folder, spec, classes)) is not None:
                outputs[i] = answer(model, xs, len(classes), f"shadow model {i}")  # a cached model asked new questions
                write_cached(folder / f"{qhash}.npz", outputs[i])
        if outputs[i] is None:
            units.append((i, Unit(train_unit, f"shadow-{i}", {
                "trainer": trainer, "x": queries.x[idx], "y": queries.y[idx], "seed": int(seeds[i]), "spec": spec,
                "classes": list(classes), "queries": xs, "folder": str(folder) if folder else None,
                "qhash": qhash, "index": i})))
    ctx.advance(n_models - len(units))  # models found in the cache
    if units:
        done = run_units(trainer, [u for _, u in units], ctx, what="shadow models")
        for (i, _), out in zip(units, done, strict=True):
            outputs[i] = out
    logp = np.stack(outputs)  # type: ignore[arg-type]
    if like is not None:  # answers averaged as the attacker averages the target's (RepeatedQueries)
        base, draws = (like.base, like.repeats) if isinstance(like, RepeatedQueries) else (like, 1)
        logp = harden_like(base, logp, ctx.rng("harden-shadows"), draws=draws)
    return ShadowOutputs(logp, keep, len(units))


def _balanced_halves(rng: np.random.Generator, m: int, n: int) -> np.ndarray:
    """(m, n) training-set membership: with m >= 2 models each record is in exactly m // 2 of them;
    one model trains on a random half."""
    if m == 1:
        return (rng.permutation(n) < n // 2)[None]
    return np.argsort(rng.random((m, n)), axis=0) < m // 2


def train_unit(ctx: RunContext, trainer: Any, x: np.ndarray, y: np.ndarray, seed: int, spec: InputSpec,
               classes: list[Any], queries: list[np.ndarray], folder: str | None, qhash: str,
               index: int) -> np.ndarray:
    """One shadow model: train it, answer every query, cache the model and its answers. A trainer
    that raises, or returns something that does not answer (n, k) probabilities, is a
    BastionRuntimeError naming the model and why."""
    ctx.check_cancelled()
    what = f"shadow model {index}"
    model = fit_model(trainer, TrainRequest(x, y, seed=seed, input_spec=spec, classes=classes), what)
    logp = answer(model, queries, len(classes), what)
    if folder is not None:
        save_model(trainer, model, Path(folder))
        write_cached(Path(folder) / f"{qhash}.npz", logp)
    return logp
