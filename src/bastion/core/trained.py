"""Many models trained through the training contract, each a unit of work, cached by content hash.

Shadow models (membership inference) and poisoned models (poisoning simulations) are the same
job: train the run's TrainFn on some records with some seed, then ask the model about other
records. This module does it once for every capability:

- :func:`fit_model` calls the TrainFn; a trainer that raises is a BastionRuntimeError naming
  the model (``what``) and the exception;
- :func:`answer` asks a model for class log-probabilities and refuses what is not a model;
- :func:`run_units` runs units of work on the run's executor (worker processes) when the
  trainer can be sent there (:func:`portable`), else in this process, with progress;
- :func:`trained_answers` is one cached training: it looks in bastion's cache folder
  (``$BASTION_CACHE_DIR``) in a folder keyed by a content hash of (trainer identity, training
  records, seed) for the answers to these queries, then for a model bastion can rebuild
  (:func:`save_model`: a ``TorchTrainingProcedure``'s weights as ``.npz``, an
  ``EstimatorTrainer``'s estimator as skops), and trains only when neither is there. Files are
  written by bastion in formats read without pickle and checked against the SHA-256 written
  beside them on read.
"""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bastion.core.io import atomic_write_bytes, cache_root
from bastion.core.run import RunContext, Unit
from bastion.core.spec import InputSpec
from bastion.core.training import TrainRequest, trainer_identity
from bastion.errors import BastionError, BastionRuntimeError

log = logging.getLogger(__name__)

CACHE_VERSION = 3  # log-probabilities, and the models bastion can rebuild
_BATCH = 1024


def digest(*parts: Any) -> str:
    """SHA-256 over arrays (dtype, shape and bytes) and the ``repr`` of anything else."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(str((p.dtype.str, p.shape)).encode())
            h.update(np.ascontiguousarray(p).tobytes())
        else:
            h.update(repr(p).encode())
        h.update(b"\x00")
    return h.hexdigest()


def model_folder(kind: str, identity: str, x: np.ndarray, y: np.ndarray, seed: int) -> Path:
    """The cache folder of the model ``identity`` trains on (x, y) with ``seed``."""
    key = digest(f"v{CACHE_VERSION}", identity, x, y, int(seed))
    return cache_root() / kind / key[:2] / key


def _read_verified(path: Path) -> bytes | None:
    """The bytes at ``path`` when they match the SHA-256 written beside them; else None (absent,
    torn or altered: what it held is trained again)."""
    try:
        data, want = path.read_bytes(), path.with_name(path.name + ".sha256").read_text().strip()
    except OSError:
        return None
    if hashlib.sha256(data).hexdigest() != want:
        log.warning("cached model file %s does not match its hash: training again", path)
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
        return TorchTarget(module.eval(), spec, classes=list(classes), name=trainer.name or type(module).__name__)
    if isinstance(trainer, EstimatorTrainer) and _read_verified(folder / "estimator.skops") is not None:
        from bastion.core.safe_load import load_skops

        return trainer.wrap(load_skops(folder / "estimator.skops"), spec)
    return None


def predict_all(target: Any, xs: list[np.ndarray]) -> np.ndarray:
    """Log-probabilities of ``target`` on each array of ``xs``: shape (len(xs), n, k). From the
    logits where the target has them (``predict_log_proba``, float64), so confident answers keep
    their margins instead of all rounding to a probability of exactly 1."""
    predict = getattr(target, "predict_log_proba", None)
    if not callable(predict):
        def predict(x: np.ndarray) -> np.ndarray:
            return np.log(np.clip(target.predict_proba(x), np.finfo(np.float64).tiny, None))
    return np.stack([np.concatenate([np.asarray(predict(x[i:i + _BATCH]), np.float64)
                                     for i in range(0, len(x), _BATCH)]) for x in xs])


def answer(model: Any, queries: list[np.ndarray], n_classes: int, what: str) -> np.ndarray:
    """A model's log-probabilities on the queries (arrays of equal length), refused (naming
    ``what`` model and why) when it is not a model that answers probabilities."""
    if not callable(getattr(model, "predict_proba", None)):
        raise BastionRuntimeError(f"the trainer returned an unusable model for {what}: "
                                  f"{type(model).__name__} has no predict_proba (a TrainFn returns a Target)")
    try:
        logp = predict_all(model, queries)
    except BastionError as exc:
        raise BastionRuntimeError(f"the trainer returned an unusable model for {what}: {exc.message}") from exc
    logp = _all_classes(model, logp, n_classes)
    want = (len(queries), len(queries[0]), n_classes)
    if logp.shape != want or np.isnan(logp).any() or (logp > 1e-6).any():
        raise BastionRuntimeError(f"the trainer returned an unusable model for {what}: it answered "
                                  f"scores of shape {logp.shape[1:]} (want {want[1:]}), or not probabilities")
    return logp


def _all_classes(model: Any, logp: np.ndarray, n_classes: int) -> np.ndarray:
    """Answers over every class index: a model trained on data that lacks some class (a scikit-learn
    estimator then knows only the labels it saw, e.g. once poison relabelled a whole class) gets
    a probability of 0 (log: the smallest float) for the classes it never saw."""
    known = list(getattr(model, "classes", []) or [])
    if logp.shape[-1] == n_classes or len(known) != logp.shape[-1] or not all(
            isinstance(c, int | np.integer) and 0 <= c < n_classes for c in known):
        return logp
    full = np.full((*logp.shape[:-1], n_classes), np.log(np.finfo(np.float64).tiny))
    full[..., np.asarray(known, np.int64)] = logp
    return full


def fit_model(trainer: Any, request: TrainRequest, what: str) -> Any:
    """``trainer(request)``; the user's training code failing is a BastionRuntimeError naming ``what``."""
    try:
        return trainer(request)
    except (BastionError, KeyboardInterrupt):
        raise
    except Exception as exc:  # the user's training code failed
        raise BastionRuntimeError(f"the trainer failed on {what}: {type(exc).__name__}: {exc}",
                                  hint="run the trainer on the same data in Python to see the traceback") from exc


def trained_answers(trainer: Any, request: TrainRequest, queries: list[np.ndarray], *, what: str,
                    kind: str, cache: bool = True, keep_model: bool = False) -> tuple[np.ndarray, Any]:
    """The log-probabilities (len(queries), n, k) of the model ``trainer`` trains on ``request``,
    from the cache where they are there (see the module docstring), and the model itself when
    ``keep_model`` (rebuilt from the cache, or trained; None when only answers were cached)."""
    identity = trainer_identity(trainer) if cache else None
    k = len(request.class_list)
    if identity is None:
        model = fit_model(trainer, request, what)
        return answer(model, queries, k, what), model
    folder = model_folder(kind, identity, np.asarray(request.x), np.asarray(request.y), request.seed)
    qfile = folder / f"{digest(*queries)}.npz"
    logp = read_cached(qfile)
    model = None
    if logp is None or keep_model:
        model = load_model(trainer, folder, request.spec, request.class_list)
    if logp is not None and (model is not None or not keep_model):
        return logp, model
    if model is None:
        model = fit_model(trainer, request, what)
        save_model(trainer, model, folder)
    logp = answer(model, queries, k, what)
    write_cached(qfile, logp)
    return logp, model


def portable(trainer: Any) -> bool:
    """Whether ``trainer`` can be sent to a worker process: it pickles, and not by reference to
    a module loaded from a file path (``python:train.py:fit``), which a worker cannot import."""
    if str(getattr(trainer, "__module__", "")).startswith("bastion_user_"):
        return False
    try:
        pickle.dumps(trainer)
    except Exception:  # noqa: BLE001 - any pickling failure means the same
        return False
    return True


def run_units(trainer: Any, units: list[Unit], ctx: RunContext, *, what: str = "models") -> list[Any]:
    """Run the units on the run's executor when it has workers and the trainer can travel to them;
    else here, one after the other. Logs the units done and an estimate of the time left."""
    t0, total, count = time.perf_counter(), len(units), [0]

    def advance(n: int) -> None:
        count[0] += n
        ctx.advance(n)
        left = (time.perf_counter() - t0) / count[0] * (total - count[0])
        log.info("%s: %d/%d trained, about %.0f s left", what, count[0], total, left)

    executor = ctx.executor if len(units) > 1 else None  # one unit is not worth starting worker processes
    if executor is not None and getattr(executor, "workers", 1) > 1 and portable(trainer):
        return executor.map(units, ctx, progress=advance)
    if executor is not None and getattr(executor, "workers", 1) > 1:
        log.info("the trainer cannot be sent to worker processes: %s train in this process", what)
    out = []
    for u in units:
        ctx.check_cancelled()
        fn: Callable[..., Any] = u.fn if callable(u.fn) else _resolve(u.fn)
        out.append(fn(ctx.spawn(u.name), **u.args))
        advance(1)
    return out


def _resolve(ref: str) -> Callable[..., Any]:
    import importlib

    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)
