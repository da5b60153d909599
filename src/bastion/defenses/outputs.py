"""Output hardening: the defended model answers changed probabilities, its input untouched.

Defenses against membership inference and model extraction that change what a prediction API
returns (Tramèr et al. 2016, arXiv:1609.02943, §7; Shokri et al. 2017, arXiv:1610.05820, §VIII):

- ``top-k``: the ``k`` largest probabilities, renormalised to sum to 1; the others answered as 0;
- ``label-only``: a one-hot row for the predicted label; the defended target declares
  ``label_only``, so attacks that need scores refuse it;
- ``rounding``: every probability to ``decimals`` decimals, by largest remainders so that the
  answered row is exactly a multiple of 10**-decimals and still sums to 1;
- ``reverse-sigmoid``: Lee et al. (2019, arXiv:1806.00054), ``y - beta * (sigmoid(gamma *
  logit(y)) - 1/2)``, clipped to [0, 1] and renormalised: it poisons the scores a surrogate
  would learn from while keeping the top-1 label (enforced here: where the perturbation would
  change the label, the original label gets the row's largest perturbed value);
- ``output-noise``: Laplace or Gaussian noise of scale ``scale`` added to the probabilities and
  projected back onto the probability simplex (Euclidean projection; Duchi et al. 2008); with
  ``keep_label`` the top-1 label is kept as for reverse sigmoid.

All are numpy steps on the answer: white-box attacks cross them straight-through (BPDA
identity; randomised noise also by EOT); score-based attacks see the hardened scores, and the
membership attacks that train shadow or reference models harden their models' answers the same
way (:func:`bastion.core.defense.harden_like`), as an attacker who knows the defense would.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from bastion.core.defense import AdaptivePath, TargetDefense
from bastion.core.params import Params


class OutputDefense(TargetDefense):
    """Base of the output-hardening defenses: ``postprocess`` only, crossed straight-through."""

    def adaptive(self) -> AdaptivePath:
        return AdaptivePath(bpda="identity")


def keep_top1(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """``after`` with the top-1 label of ``before`` kept: in a row whose argmax moved, the values at
    the old and the new argmax are swapped (the row's values, and so its sum, are unchanged)."""
    old, new = before.argmax(1), after.argmax(1)
    moved = np.flatnonzero(old != new)
    out = after.copy()
    out[moved, old[moved]], out[moved, new[moved]] = after[moved, new[moved]], after[moved, old[moved]]
    return out


# --- top-k and label only -------------------------------------------------------------------------
class TopKParams(Params):
    k: int = Field(1, ge=1, description="Probabilities answered (the k largest; the others are answered as 0).")


class TopK(OutputDefense):
    """The ``k`` largest probabilities renormalised to sum to 1, the others zeroed (an API that
    lists only its top-k classes)."""

    name = "top-k"
    Params = TopKParams

    def postprocess(self, probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        k = min(self.params.k, probs.shape[1])
        top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        out = np.zeros_like(probs)
        np.put_along_axis(out, top, np.take_along_axis(probs, top, 1), 1)
        total = out.sum(1, keepdims=True)
        return np.where(total > 0, out / np.where(total > 0, total, 1.0), np.eye(probs.shape[1])[top[:, 0]])


class LabelOnly(OutputDefense):
    """The predicted label only (a one-hot row). The defended target is label-only: attacks that need
    scores refuse it, decision-based ones run."""

    name = "label-only"
    label_only = True

    def postprocess(self, probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.eye(probs.shape[1])[probs.argmax(1)]


# --- rounding -------------------------------------------------------------------------------------
class RoundingParams(Params):
    decimals: int = Field(2, ge=0, le=8, description="Decimals kept in every probability.")


def round_simplex(probs: np.ndarray, decimals: int) -> np.ndarray:
    """Each row rounded to multiples of 10**-decimals that sum to exactly 1: floor every value,
    then give the units left to the largest remainders (Hamilton's method); ties by class order."""
    unit = 10 ** decimals
    scaled = probs * unit
    base = np.floor(scaled + 1e-9)
    left = (unit - base.sum(1)).round().astype(np.int64)
    order = np.argsort(-(scaled - base), axis=1, kind="stable")
    bump = np.arange(probs.shape[1])[None, :] < left[:, None]
    np.put_along_axis(base, order, np.take_along_axis(base, order, 1) + bump, 1)
    return base / unit


class Rounding(OutputDefense):
    """Probabilities rounded to ``decimals`` decimals, summing to 1 (largest remainders)."""

    name = "rounding"
    Params = RoundingParams

    def postprocess(self, probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return round_simplex(probs, self.params.decimals)


# --- reverse sigmoid ------------------------------------------------------------------------------
class ReverseSigmoidParams(Params):
    beta: float = Field(1.0, gt=0, le=10, description="Size of the perturbation.")
    gamma: float = Field(0.1, gt=0, le=10, description="Slope of the sigmoid (how fast it converges).")


class ReverseSigmoid(OutputDefense):
    """Reverse sigmoid (Lee, Edwards, Molloy & Srivastava 2019, arXiv:1806.00054): each probability
    ``y`` answered as ``y - beta * (sigmoid(gamma * logit(y)) - 1/2)``, clipped to [0, 1] and
    renormalised, the top-1 label kept."""

    name = "reverse-sigmoid"
    Params = ReverseSigmoidParams

    def postprocess(self, probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        y = np.clip(probs, 1e-9, 1 - 1e-9)
        r = self.params.beta * (1.0 / (1.0 + np.exp(-self.params.gamma * np.log(y / (1 - y)))) - 0.5)
        out = np.clip(probs - r, 0.0, 1.0)
        total = out.sum(1, keepdims=True)
        out = np.where(total > 0, out / np.where(total > 0, total, 1.0), np.eye(probs.shape[1])[probs.argmax(1)])
        return keep_top1(probs, out)


# --- noise ----------------------------------------------------------------------------------------
class OutputNoiseParams(Params):
    scale: float = Field(0.05, gt=0, le=1, description="Scale of the noise (Laplace b, or Gaussian sigma).")
    distribution: Literal["laplace", "gaussian"] = "laplace"
    keep_label: bool = Field(True, description="Keep each answer's top-1 label (swap it back when noise moved it).")
    eot_samples: int = Field(16, ge=2, le=1024, description="Draws averaged per gradient by adaptive attacks (EOT).")


def project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection of each row onto the probability simplex (Duchi, Shalev-Shwartz, Singer
    & Chandra 2008, "Efficient Projections onto the l1-Ball", Fig. 1)."""
    u = -np.sort(-v, axis=1)
    css = np.cumsum(u, axis=1) - 1.0
    idx = np.arange(1, v.shape[1] + 1)
    rho = (u - css / idx > 0).sum(1)
    theta = css[np.arange(len(v)), rho - 1] / rho
    return np.maximum(v - theta[:, None], 0.0)


class OutputNoise(OutputDefense):
    """Laplace or Gaussian noise on every probability, projected back onto the simplex; with
    ``keep_label`` the answer's top-1 label is the model's. Randomised: EOT for adaptive attacks."""

    name = "output-noise"
    Params = OutputNoiseParams
    randomized = True

    def adaptive(self) -> AdaptivePath:
        return AdaptivePath(bpda="identity", eot_samples=self.params.eot_samples)

    def postprocess(self, probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        p = self.params
        draw = rng.laplace if p.distribution == "laplace" else rng.normal
        out = project_simplex(probs + draw(0.0, p.scale, size=probs.shape))
        return keep_top1(probs, out) if p.keep_label else out
