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
  is checked against the SHA-256 written beside it on read.
"""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from bastion.attacks.privacy.membership import MembershipSplits
from bastion.core.io import atomic_write_bytes, cache_root
from bastion.core.run import RunContext, Unit
from bastion.core.spec import InputSpec
from bastion.core.training import TrainRequest, trainer_identity
from bastion.errors import BastionError, BastionRuntimeError, UsageError

log = logging.getLogger(__name__)

Augment = Literal["none", "flip", "shift"]
CACHE_VERSION = 3  # log-probabilities, and the models bastion can rebuild
_BATCH = 1024
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


def predict_all(target: Any, xs: list[np.ndarray]) -> np.ndarray:
    """Log-probabilities of ``target`` on each augmented copy: shape (n_aug, n, k). From the
    logits where the target has them (``predict_log_proba``, float64), so confident answers keep
    their margins instead of all rounding to a probability of exactly 1."""
    predict = getattr(target, "predict_log_proba", None)
    if not callable(predict):
        def predict(x: np.ndarray) -> np.ndarray:
            return np.log(np.clip(target.predict_proba(x), np.finfo(np.float64).tiny, None))
    return np.stack([np.concatenate([np.asarray(predict(x[i:i + _BATCH]), np.float64)
                                     for i in range(0, len(x), _BATCH)]) for x in xs])


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
                   spec: InputSpec, classes: list[Any], ctx: RunContext, cache: bool = True) -> ShadowOutputs:
    """Train ``n_models`` models on random halves of the pool (see the module docstring) and
    return their outputs on every query record."""
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
    xs = augmented(queries.x, augment)
    identity = trainer_identity(trainer) if cache else None
    if cache and identity is None:
        log.warning("shadow models are not cached: the trainer has no stable identity (give it an identity() method)")
    qhash = _digest(augment, *xs, queries.y)
    units, outputs = [], [None] * n_models
    for i in range(n_models):
        idx = np.flatnonzero(keep[i])
        folder = None
        if identity is not None:
            key = _digest(f"v{CACHE_VERSION}", identity, queries.x[idx], queries.y[idx], int(seeds[i]))
            folder = cache_root() / "shadows" / key[:2] / key
            outputs[i] = read_cached(folder / f"{qhash}.npz")
            if outputs[i] is None and (model := load_model(trainer, folder, spec, classes)) is not None:
                outputs[i] = answer(model, xs, len(classes), i)  # a cached model asked new questions
                write_cached(folder / f"{qhash}.npz", outputs[i])
        if outputs[i] is None:
            units.append((i, Unit(train_unit, f"shadow-{i}", {
                "trainer": trainer, "x": queries.x[idx], "y": queries.y[idx], "seed": int(seeds[i]), "spec": spec,
                "classes": list(classes), "queries": xs, "folder": str(folder) if folder else None,
                "qhash": qhash, "index": i})))
    ctx.advance(n_models - len(units))  # models found in the cache
    if units:
        done = _run_units(trainer, [u for _, u in units], ctx)
        for (i, _), out in zip(units, done, strict=True):
            outputs[i] = out
    return ShadowOutputs(np.stack(outputs), keep, len(units))  # type: ignore[arg-type]


def _balanced_halves(rng: np.random.Generator, m: int, n: int) -> np.ndarray:
    """(m, n) training-set membership: with m >= 2 models each record is in exactly m // 2 of them;
    one model trains on a random half."""
    if m == 1:
        return (rng.permutation(n) < n // 2)[None]
    return np.argsort(rng.random((m, n)), axis=0) < m // 2


def _digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(str((p.dtype.str, p.shape)).encode())
            h.update(np.ascontiguousarray(p).tobytes())
        else:
            h.update(repr(p).encode())
        h.update(b"\x00")
    return h.hexdigest()


def _read_verified(path: Path) -> bytes | None:
    """The bytes at ``path`` when they match the SHA-256 written beside them; else None (absent,
    torn or altered: what it held is trained again)."""
    try:
        data, want = path.read_bytes(), path.with_name(path.name + ".sha256").read_text().strip()
    except OSError:
        return None
    if hashlib.sha256(data).hexdigest() != want:
        log.warning("cached shadow model file %s does not match its hash: training again", path)
        return None
    return data


def _write_verified(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data)
    atomic_write_bytes(path.with_name(path.name + ".sha256"), hashlib.sha256(data).hexdigest().encode())


def read_cached(path: Path) -> np.ndarray | None:
    """The cached log-probabilities at ``path``, or None (see :func:`_read_verified`)."""
    data = _read_verified(path)
    if data is None:
        return None
    with np.load(io.BytesIO(data), allow_pickle=False) as f:
        return np.asarray(f["logp"], np.float64)


def write_cached(path: Path, logp: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, logp=logp)
    _write_verified(path, buf.getvalue())


def save_model(trainer: Any, model: Any, folder: Path) -> None:
    """Keep the trained model beside its outputs where bastion can rebuild it: the weights of a
    ``TorchTrainingProcedure``'s module as arrays, an ``EstimatorTrainer``'s estimator as skops."""
    from bastion.core.training import EstimatorTrainer, TorchTrainingProcedure

    if isinstance(trainer, TorchTrainingProcedure) and hasattr(model, "module"):
        buf = io.BytesIO()
        np.savez(buf, **{k: v.detach().cpu().numpy() for k, v in model.module.state_dict().items()})
        _write_verified(folder / "weights.npz", buf.getvalue())
    elif isinstance(trainer, EstimatorTrainer) and hasattr(model, "estimator"):
        import skops.io

        _write_verified(folder / "estimator.skops", skops.io.dumps(model.estimator))


def load_model(trainer: Any, folder: Path, spec: InputSpec, classes: list[Any]) -> Any:
    """The model :func:`save_model` kept in ``folder`` as a Target, or None."""
    from bastion.core.training import EstimatorTrainer, TorchTrainingProcedure

    if isinstance(trainer, TorchTrainingProcedure) and (data := _read_verified(folder / "weights.npz")) is not None:
        import torch

        from bastion.core.targets.torch_target import TorchTarget

        module = trainer.model()
        with np.load(io.BytesIO(data), allow_pickle=False) as f:
            module.load_state_dict({k: torch.from_numpy(f[k]) for k in f.files})
        return TorchTarget(module, spec, classes=list(classes), name=trainer.name or type(module).__name__)
    if isinstance(trainer, EstimatorTrainer) and _read_verified(folder / "estimator.skops") is not None:
        from bastion.core.safe_load import load_skops

        return trainer.wrap(load_skops(folder / "estimator.skops"), spec)
    return None


def answer(model: Any, queries: list[np.ndarray], n_classes: int, index: int) -> np.ndarray:
    """A shadow model's log-probabilities on the queries, refused (naming the model and why) when
    it is not a model that answers probabilities."""
    if not callable(getattr(model, "predict_proba", None)):
        raise BastionRuntimeError(f"the trainer returned an unusable model for shadow model {index}: "
                                  f"{type(model).__name__} has no predict_proba (a TrainFn returns a Target)")
    try:
        logp = predict_all(model, queries)
    except BastionError as exc:
        raise BastionRuntimeError(f"the trainer returned an unusable model for shadow model {index}: "
                                  f"{exc.message}") from exc
    want = (len(queries), len(queries[0]), n_classes)
    if logp.shape != want or np.isnan(logp).any() or (logp > 1e-6).any():
        raise BastionRuntimeError(f"the trainer returned an unusable model for shadow model {index}: it answered "
                                  f"scores of shape {logp.shape[1:]} (want {want[1:]}), or not probabilities")
    return logp


def train_unit(ctx: RunContext, trainer: Any, x: np.ndarray, y: np.ndarray, seed: int, spec: InputSpec,
               classes: list[Any], queries: list[np.ndarray], folder: str | None, qhash: str,
               index: int) -> np.ndarray:
    """One shadow model: train it, answer every query, cache the model and its answers. A trainer
    that raises, or returns something that does not answer (n, k) probabilities, is a
    BastionRuntimeError naming the model and why."""
    ctx.check_cancelled()
    request = TrainRequest(x, y, seed=seed, input_spec=spec, classes=classes)
    try:
        model = trainer(request)
    except (BastionError, KeyboardInterrupt):
        raise
    except Exception as exc:  # the user's training code failed
        raise BastionRuntimeError(f"the trainer failed on shadow model {index}: {type(exc).__name__}: {exc}",
                                  hint="run the trainer on the same data in Python to see the traceback") from exc
    logp = answer(model, queries, len(classes), index)
    if folder is not None:
        save_model(trainer, model, Path(folder))
        write_cached(Path(folder) / f"{qhash}.npz", logp)
    return logp


def _portable(trainer: Any) -> bool:
    """Whether ``trainer`` can be sent to a worker process: it pickles, and not by reference to
    a module loaded from a file path (``python:train.py:fit``), which a worker cannot import."""
    if str(getattr(trainer, "__module__", "")).startswith("bastion_user_"):
        return False
    try:
        pickle.dumps(trainer)
    except Exception:  # noqa: BLE001 - any pickling failure means the same
        return False
    return True


def _run_units(trainer: Any, units: list[Unit], ctx: RunContext) -> list[np.ndarray]:
    """Train on the run's executor when it has one and the trainer can travel; else here.
    Logs the models trained and an estimate of the time left."""
    t0, total, count = time.perf_counter(), len(units), [0]

    def advance(n: int) -> None:
        count[0] += n
        ctx.advance(n)
        left = (time.perf_counter() - t0) / count[0] * (total - count[0])
        log.info("shadow models: %d/%d trained, about %.0f s left", count[0], total, left)

    executor = ctx.executor
    if len(units) == 1:  # not worth starting worker processes
        executor = None
    if executor is not None and getattr(executor, "workers", 1) > 1 and _portable(trainer):
        return executor.map(units, ctx, progress=advance)
    if executor is not None and getattr(executor, "workers", 1) > 1:
        log.info("the trainer cannot be sent to worker processes: shadow models train in this process")
    out = []
    for u in units:
        ctx.check_cancelled()
        out.append(train_unit(ctx.spawn(u.name), **u.args))
        advance(1)
    return out
