"""Detectors of adversarial inputs: a score per input, and an alert for the inputs whose score
passes a threshold calibrated on clean data.

Each detector scores inputs through the model under watch. Its score is written once, in torch,
differentiable with respect to the input (non-differentiable steps crossed by BPDA, through the
adaptive views of ``bastion.core.defense``), so the same function serves the alerts and an
adaptive attack that must fool the classifier and the detector together (Carlini & Wagner 2017,
"Adversarial Examples Are Not Easily Detected", arXiv:1705.07263). ``fit`` takes clean reference
inputs and sets the threshold at their ``1 - fpr`` quantile (Xu et al. 2018 calibrate the same way).

- ``feature-squeezing`` (Xu, Evans & Qi 2018, arXiv:1704.01155): the largest L1 distance between
  the model's probabilities on the input and on each squeezed version of it (bit-depth reduction,
  median smoothing: the registered defenses of that name).
- ``mahalanobis`` (Lee, Lee, Lee & Shin 2018, "A Simple Unified Framework for Detecting
  Out-of-Distribution Samples and Adversarial Attacks", arXiv:1807.03888): the smallest Mahalanobis
  distance from the input's features to a class mean, with class-conditional Gaussians sharing one
  covariance fitted on the reference inputs (classes as the model predicts them). The features are
  the model's log-probabilities (a single-layer form of the paper's detector, which also uses
  hidden layers and input pre-processing).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field, field_validator

from bastion.core.defense import DEFENSES, TargetDefense
from bastion.core.params import Params
from bastion.core.targets.base import DifferentiableTarget, Target
from bastion.errors import UsageError
from bastion.monitor.base import Alert, Detector

if TYPE_CHECKING:
    import torch

BATCH = 256


class AdversarialParams(Params):
    fpr: float = Field(0.05, gt=0, lt=1, description="False-alarm rate on the reference inputs: the threshold is "
                                                     "their 1 - fpr quantile.")


class AdversarialDetector(Detector):
    """Base of detectors of adversarial inputs for one white-box ``target``. Subclasses implement
    ``_summary`` (what the fit keeps, from clean inputs) and ``score_torch`` (the differentiable
    score; higher is more suspicious). ``reference_`` is ``{"summary": ..., "threshold": float}``."""

    Params = AdversarialParams

    def __init__(self, target: Target, **params: Any) -> None:
        super().__init__(**params)
        if not isinstance(target, DifferentiableTarget):
            raise UsageError(f"detector '{self.label}' scores inputs through the model's gradients; target "
                             f"'{target.name}' is a black box", hint="watch a white-box (e.g. PyTorch) model")
        self.target: DifferentiableTarget = target

    # --- what a detector defines ----------------------------------------------------------------
    @abstractmethod
    def _summary(self, x: np.ndarray) -> Any:
        """What the detector learns from clean inputs ``x`` (shaped as the target's inputs)."""

    @abstractmethod
    def score_torch(self, x: torch.Tensor, summary: Any) -> torch.Tensor:
        """One score per input of the batch ``x``, differentiable with respect to ``x``."""

    # --- derived -----------------------------------------------------------------------------------
    @property
    def threshold(self) -> float:
        self._require_fit()
        return float(self.reference_["threshold"])

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """The differentiable score of a batch with the fitted summary (what adaptive attacks follow)."""
        self._require_fit()
        return self.score_torch(x, self.reference_["summary"])

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Scores of inputs shaped as the target's (or flat rows), in batches, without gradients."""
        self._require_fit()
        return self._scores(self._inputs(x), self.reference_["summary"])

    def flags(self, x: np.ndarray) -> np.ndarray:
        """Which inputs the detector flags as adversarial (score at or above the threshold)."""
        return self.scores(x) >= self.threshold

    def _require_fit(self) -> None:
        if self.reference_ is None:
            raise UsageError(f"detector '{self.label}' is not fitted", hint="call fit(clean_inputs) first")

    def _inputs(self, x: np.ndarray) -> np.ndarray:
        a = np.asarray(x, np.float32)
        shape = tuple(self.target.input_spec.shape)
        if a.ndim >= 1 and int(np.prod(a.shape[1:])) == int(np.prod(shape)):
            a = a.reshape(len(a), *shape)
        return self.target.input_spec.validate(a, what=f"inputs of detector '{self.label}'")

    def _scores(self, x: np.ndarray, summary: Any) -> np.ndarray:
        import torch

        out = []
        with torch.no_grad(), self.target.uncounted():
            for s in range(0, len(x), BATCH):
                xb = torch.from_numpy(x[s:s + BATCH]).to(self.target.device)
                out.append(self.score_torch(xb, summary).double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)

    def _fit(self, reference: np.ndarray) -> Any:
        x = self._inputs(reference)
        summary = self._summary(x)
        ref = self._scores(x, summary)
        return {"summary": summary, "threshold": float(np.quantile(ref, 1 - self.params.fpr, method="higher"))}

    def _initial_state(self) -> dict[str, int]:
        return {"seen": 0, "flagged": 0}

    def _update(self, window: np.ndarray, state: dict[str, int]) -> list[Alert]:
        s = self.scores(window)
        hit = np.flatnonzero(s >= self.threshold)
        state["seen"] += len(s)
        state["flagged"] += len(hit)
        if not len(hit):
            return []
        return [Alert(detector=self.label, score=float(s[hit].max()), threshold=self.threshold,
                      records=[int(i) for i in hit],
                      message=f"{len(hit)} of {len(s)} inputs look adversarial ({self.label} score at or above "
                              f"{self.threshold:.4g})")]


# --- feature squeezing -----------------------------------------------------------------------------
class SqueezingParams(AdversarialParams):
    squeezers: list[dict[str, Any]] = Field(
        default_factory=lambda: [{"kind": "bit-depth", "bits": 4}], min_length=1,
        description="Squeezers, each {kind: bit-depth | median-smoothing | spatial-smoothing | jpeg | rescale, ...its "
                    "parameters}; choose ones that leave clean predictions alone (Xu et al. use 1-bit depth and a 2x2 "
                    "median for MNIST, 5-bit depth, a 2x2 median and non-local means for CIFAR-10).")

    @field_validator("squeezers")
    @classmethod
    def _known(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        allowed = ("bit-depth", "median-smoothing", "spatial-smoothing", "jpeg", "rescale")
        for i, sq in enumerate(v):
            if not isinstance(sq, dict) or sq.get("kind") not in allowed:
                raise ValueError(f"squeezer {i}: kind must be one of {', '.join(allowed)}, got "
                                 f"{sq.get('kind') if isinstance(sq, dict) else sq!r}")
        return v


class FeatureSqueezing(AdversarialDetector):
    """Feature squeezing (Xu, Evans & Qi 2018, arXiv:1704.01155): an input whose prediction moves
    when it is squeezed is suspect. Score: ``max_k ||p(x) - p(squeeze_k(x))||_1``; each squeezer is
    the registered deterministic defense of that name, crossed by its BPDA path for gradients."""

    name = "feature-squeezing"
    Params = SqueezingParams

    def __init__(self, target: Target, **params: Any) -> None:
        super().__init__(target, **params)
        self.squeezed = []
        for sq in self.params.squeezers:
            defense = DEFENSES.get_object(sq["kind"])(**{k: v for k, v in sq.items() if k != "kind"})
            assert isinstance(defense, TargetDefense)
            self.squeezed.append(defense.wrap(self.target).adaptive_view())

    def _summary(self, x: np.ndarray) -> None:
        return None

    def score_torch(self, x: torch.Tensor, summary: Any) -> torch.Tensor:
        import torch

        p = torch.softmax(self.target.adaptive_view().logits(x), dim=1)
        dist = [(p - torch.softmax(view.logits(x), dim=1)).abs().sum(dim=1) for view in self.squeezed]
        return torch.stack(dist).amax(dim=0)


# --- Mahalanobis -----------------------------------------------------------------------------------
class MahalanobisParams(AdversarialParams):
    ridge: float = Field(1e-3, gt=0, le=10, description="Added to the covariance's diagonal (relative to its mean "
                                                        "variance) so it can be inverted.")


class Mahalanobis(AdversarialDetector):
    """Mahalanobis-distance detector (Lee et al. 2018, arXiv:1807.03888) on the model's
    log-probabilities: class means and one shared covariance from the reference inputs, grouped by
    the model's own prediction; score: the squared distance to the closest class mean."""

    name = "mahalanobis"
    Params = MahalanobisParams

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.log_softmax(self.target.adaptive_view().logits(x), dim=1)

    def _summary(self, x: np.ndarray) -> dict[str, Any]:
        import torch

        with torch.no_grad(), self.target.uncounted():
            f = torch.cat([self._features(torch.from_numpy(x[s:s + BATCH]).to(self.target.device)).double()
                           for s in range(0, len(x), BATCH)])
        pred = f.argmax(dim=1)
        classes = torch.unique(pred)
        if len(x) < 2 * f.shape[1]:
            raise UsageError(f"detector '{self.label}' needs at least {2 * f.shape[1]} reference inputs to fit a "
                             f"covariance of {f.shape[1]} features, got {len(x)}")
        means = torch.stack([f[pred == c].mean(dim=0) for c in classes])
        centred = f - means[torch.searchsorted(classes, pred)]
        cov = centred.T @ centred / len(f)
        cov += self.params.ridge * cov.diagonal().mean().clamp_min(1e-12) * torch.eye(len(cov), dtype=cov.dtype)
        return {"means": means.float(), "precision": torch.linalg.inv(cov).float()}

    def score_torch(self, x: torch.Tensor, summary: Any) -> torch.Tensor:
        f = self._features(x)
        d = f[:, None, :] - summary["means"].to(f.device)[None]  # (n, classes, features)
        return ((d @ summary["precision"].to(f.device)) * d).sum(dim=-1).amin(dim=1)
