"""Detectors of poisoned training records: ``detect(x, y, ctx, model=, trainer=) -> Detection``.

Each detector scores every training record (higher: more likely poison) and flags the
``ceil(removal_factor * poison_rate * n)`` records that score highest. ``poison_rate``, the share
of the training set the defender expects to be poison, is an explicit parameter with no default:
a detector that flags a fixed share of every class (a third or a half, whatever the data) removes
far more clean records than poison. ``removal_factor`` (1.5) is the margin Tran et al. remove
beyond the expected number.

- :class:`SpectralSignatures` (Tran, Li & Madry 2018, "Spectral signatures in backdoor attacks",
  arXiv:1811.00636): per class, the squared projection of each record's centred penultimate-layer
  activations on their top singular vector, divided by the class's median (comparable across classes);
- :class:`ActivationClustering` (Chen et al. 2018, "Detecting backdoor attacks on deep neural
  networks by activation clustering", arXiv:1811.03728): per class, activations reduced to
  ``dims`` components and split into two clusters; the smaller cluster of a class scores the
  silhouette of the split (well separated: poison), every other record 0;
- :class:`KNNDisagreement` (model-agnostic): the share of a record's ``k`` nearest neighbours
  (standardised inputs) whose label differs from its own;
- :class:`OutOfFoldLoss` (model-agnostic): the cross-entropy of a record's label under a model
  trained by the run's TrainFn on the other folds.

The first two need a neural network trained on the data (:func:`activations`: a torch model's
input to its last linear layer, or a scikit-learn MLP's last hidden layer).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, Field

from bastion.core.arrays import Array
from bastion.core.capability import Configurable
from bastion.core.params import Number, Params
from bastion.core.registry import Registry
from bastion.core.run import RunContext
from bastion.core.spec import InputSpec
from bastion.core.trained import answer, fit_model
from bastion.core.training import TrainRequest
from bastion.errors import UsageError


class DetectorParams(Params):
    poison_rate: Number | None = Field(None, gt=0, lt=1, description="Share of the training set expected to be "
                                       "poison: required, no default (a simulation sets the rate it simulates).")
    removal_factor: Number = Field(1.5, ge=1, description="Flag this many times the expected number of poisoned "
                                   "records (Tran et al. 2018 remove 1.5x).")


class Detection(BaseModel):
    """Scores of every training record (higher: more likely poison) and the flagged records."""

    detector: str
    scores: Array
    flagged: Array


class PoisonDetector(Configurable, ABC):
    """Base of training-data poison detectors; subclasses implement ``_scores``."""

    family: ClassVar[str] = "poison detector"
    Params = DetectorParams
    needs_model: ClassVar[bool] = False    # activations of a model trained on the data
    needs_trainer: ClassVar[bool] = False  # trains models of its own

    def detect(self, x: np.ndarray, y: np.ndarray, ctx: RunContext | None = None, *, model: Any = None,
               trainer: Any = None, spec: InputSpec | None = None, classes: list[Any] | None = None) -> Detection:
        """Score and flag the records of (x, y) (labels as class indices)."""
        x, y = np.asarray(x, np.float32), np.asarray(y).astype(np.int64)
        p: DetectorParams = self.params  # type: ignore[assignment]
        if p.poison_rate is None:
            raise UsageError(f"detector '{self.label}' needs poison_rate: the share of the training set you expect "
                             "to be poison", hint="e.g. poison_rate=0.05; it flags 1.5x that many records")
        if self.needs_model and model is None:
            raise UsageError(f"detector '{self.label}' needs the model trained on the data (model=...)")
        if self.needs_trainer and trainer is None:
            raise UsageError(f"detector '{self.label}' trains models of its own and needs a trainer (trainer=...)")
        scores = np.asarray(self._scores(x, y, self.run_context(ctx), model=model, trainer=trainer, spec=spec,
                                         classes=classes), np.float64)
        k = min(len(x), math.ceil(p.removal_factor * p.poison_rate * len(x) - 1e-9))
        flagged = np.sort(np.argsort(-scores, kind="stable")[:k])
        return Detection(detector=self.label, scores=scores, flagged=flagged)

    @abstractmethod
    def _scores(self, x: np.ndarray, y: np.ndarray, ctx: RunContext, *, model: Any, trainer: Any,
                spec: InputSpec | None, classes: list[Any] | None) -> np.ndarray:
        """One score per record: the higher, the more likely the record is poison."""


def activations(model: Any, x: np.ndarray, batch: int = 512) -> np.ndarray:
    """Penultimate-layer activations (n, d): the input of a torch module's last ``nn.Linear``, or
    the last hidden layer of a scikit-learn ``MLPClassifier``."""
    est = getattr(model, "estimator", None)
    if est is not None and type(est).__name__ == "MLPClassifier":
        from sklearn.neural_network._base import ACTIVATIONS

        h = np.asarray(x, np.float64).reshape(len(x), -1)
        for w, b in zip(est.coefs_[:-1], est.intercepts_[:-1], strict=True):
            h = h @ w + b
            ACTIVATIONS[est.activation](h)
        return h
    module = getattr(model, "module", None)
    if module is None:
        raise UsageError(f"activations need a neural network (a torch model or a scikit-learn MLPClassifier); "
                         f"got {type(est or model).__name__}", hint="use the model-agnostic detectors: knn, oof-loss")
    import torch

    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise UsageError("activations: the torch model has no nn.Linear layer to read the penultimate layer from")
    seen: list[Any] = []
    hook = linears[-1].register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach().reshape(len(inp[0]), -1)))
    device = next(module.parameters()).device
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch):
                module(torch.as_tensor(np.asarray(x[i:i + batch], np.float32), device=device))
    finally:
        hook.remove()
    return torch.cat(seen).cpu().double().numpy()


class SpectralSignatures(PoisonDetector):
    """Tran et al. 2018: outliers along the top singular direction of each class's activations."""

    name = "spectral-signatures"
    needs_model = True

    def _scores(self, x: np.ndarray, y: np.ndarray, ctx: RunContext, *, model: Any, **_: Any) -> np.ndarray:
        r = activations(model, x)
        scores = np.zeros(len(x))
        for c in np.unique(y):
            idx = np.flatnonzero(y == c)
            if len(idx) < 2:
                continue
            rc = r[idx] - r[idx].mean(axis=0)
            v = np.linalg.svd(rc, full_matrices=False)[2][0]
            s = (rc @ v) ** 2
            scores[idx] = s / max(float(np.median(s)), 1e-12)
        return scores


class ActivationClusteringParams(DetectorParams):
    dims: int = Field(10, ge=1, description="Components the activations are reduced to before clustering.")


class ActivationClustering(PoisonDetector):
    """Chen et al. 2018: per class, two clusters of the activations; a small, well-separated one is poison.
    (The paper reduces with ICA; PCA here, which is deterministic and as good for a 2-means split.)"""

    name = "activation-clustering"
    Params = ActivationClusteringParams
    needs_model = True

    def _scores(self, x: np.ndarray, y: np.ndarray, ctx: RunContext, *, model: Any, **_: Any) -> np.ndarray:
        from sklearn.cluster import KMeans
        from sklearn.decomposition import PCA
        from sklearn.metrics import silhouette_score

        r = activations(model, x)
        scores = np.zeros(len(x))
        for c in np.unique(y):
            idx = np.flatnonzero(y == c)
            if len(idx) < 4:
                continue
            rc = r[idx] - r[idx].mean(axis=0)
            dims = min(self.params.dims, *rc.shape)  # type: ignore[attr-defined]
            z = PCA(dims, random_state=0).fit_transform(rc) if dims < rc.shape[1] else rc
            labels = KMeans(2, n_init=10, random_state=int(ctx.key("kmeans", str(c)) % 2**31)).fit_predict(z)
            sizes = np.bincount(labels, minlength=2)
            if sizes.min() == 0:
                continue
            small = int(sizes.argmin())
            sil = float(silhouette_score(z, labels))
            # the smaller cluster scores the split's separation; ties broken by the distance to the other cluster
            other = z[labels != small].mean(axis=0)
            far = np.linalg.norm(z[labels == small] - other, axis=1)
            scores[idx[labels == small]] = 1 + sil + 1e-6 * far / (far.max() + 1e-12)
        return scores


class KNNParams(DetectorParams):
    k: int = Field(10, ge=1, description="Neighbours compared.")


class KNNDisagreement(PoisonDetector):
    """Model-agnostic: records whose nearest neighbours carry other labels."""

    name = "knn"
    Params = KNNParams

    def _scores(self, x: np.ndarray, y: np.ndarray, ctx: RunContext, **_: Any) -> np.ndarray:
        from sklearn.neighbors import NearestNeighbors

        z = x.reshape(len(x), -1).astype(np.float64)
        z = (z - z.mean(axis=0)) / np.maximum(z.std(axis=0), 1e-12)
        k = min(self.params.k, len(x) - 1)  # type: ignore[attr-defined]
        if k < 1:
            return np.zeros(len(x))
        nn = NearestNeighbors(n_neighbors=k + 1).fit(z).kneighbors(z, return_distance=False)[:, 1:]
        return (y[nn] != y[:, None]).mean(axis=1)


class OutOfFoldParams(DetectorParams):
    folds: int = Field(5, ge=2, le=20, description="Cross-validation folds (one model trained per fold).")


class OutOfFoldLoss(PoisonDetector):
    """Model-agnostic: the loss of each record's label under a model that did not train on it."""

    name = "oof-loss"
    Params = OutOfFoldParams
    needs_trainer = True

    def _scores(self, x: np.ndarray, y: np.ndarray, ctx: RunContext, *, trainer: Any, spec: InputSpec | None,
                classes: list[Any] | None, **_: Any) -> np.ndarray:
        folds = self.params.folds  # type: ignore[attr-defined]
        fold = ctx.rng("folds").permutation(len(x)) % folds
        k = len(classes) if classes is not None else int(y.max()) + 1
        scores = np.zeros(len(x))
        for f in range(folds):
            train, held = fold != f, fold == f
            request = TrainRequest(x[train], y[train], seed=int(ctx.key("fold", str(f)) % 2**31), input_spec=spec,
                                   classes=classes)
            what = f"out-of-fold model {f + 1} of {folds}"
            logp = answer(fit_model(trainer, request, what), [x[held]], k, what)[0]
            scores[held] = -logp[np.arange(held.sum()), y[held]]
        return scores


POISON_DETECTORS: Registry[type[PoisonDetector]] = Registry("poison detector", {
    "spectral-signatures": "bastion.attacks.poisoning.detectors:SpectralSignatures",
    "activation-clustering": "bastion.attacks.poisoning.detectors:ActivationClustering",
    "knn": "bastion.attacks.poisoning.detectors:KNNDisagreement",
    "oof-loss": "bastion.attacks.poisoning.detectors:OutOfFoldLoss",
}, group="bastion.poison_detectors")
"""Training-data poison detectors by name (entry points: ``bastion.poison_detectors``)."""


def get_poison_detector(name: str, **params: Any) -> PoisonDetector:
    """Build a registered poison detector by name, validating its parameters."""
    return POISON_DETECTORS.get_object(name)(**params)
