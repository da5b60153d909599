"""Randomised targets evaluated in expectation (Athalye, Engstrom, Ilyas & Kwok 2018, "Synthesizing
Robust Adversarial Examples", arXiv:1707.07397; Athalye, Carlini & Wagner 2018, arXiv:1802.00420).

A model whose outputs change between identical calls has no single robust accuracy: each input is
right on some share of the model's random draws. An attack on it optimises the expected loss (EOT)
and its result is the *expected* accuracy over ``draws`` fresh draws of every input, with a 95%
confidence interval from a percentile bootstrap over the inputs of their per-input averages (the
interval covers both which inputs were drawn and the Monte Carlo error of the draws, since each
per-input average is itself an estimate).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np

from bastion.core.targets.base import Target

#: Draws of a randomised target per EOT gradient when the user sets no ``eot_iter`` (AutoAttack's
#: version for randomised defenses uses 20; Croce & Hein 2020, arXiv:2003.01690).
EOT_DEFAULT = 20
#: Fresh draws over which success and robust accuracy are averaged (default of ``draws``): the
#: Monte Carlo standard error of one input's accuracy is then at most 0.05.
DRAWS_DEFAULT = 100
BOOTSTRAP = 2000
CI_LEVEL = 0.95


def draw_counts(target: Target, x: np.ndarray, draws: int, batch_size: int, *, counted: bool = False) -> np.ndarray:
    """``(n, n_classes)`` counts of each predicted class over ``draws`` calls of every input,
    uncounted unless ``counted`` (an attack's own queries). Draws are batched as copies of a batch,
    up to ``batch_size`` rows a call."""
    counts = np.zeros((len(x), target.n_classes), np.int64)
    per = max(1, batch_size // max(len(x[:batch_size]), 1))
    with (nullcontext() if counted else target.uncounted()):
        for s in range(0, len(x), batch_size):
            xb = x[s:s + batch_size]
            done = 0
            while done < draws:
                k = min(per, draws - done)
                pred = target.predict_proba(np.concatenate([xb] * k)).argmax(1).reshape(k, len(xb))
                for row in pred:
                    counts[np.arange(s, s + len(xb)), row] += 1
                done += k
    return counts


def bootstrap_ci(values: np.ndarray, rng: np.random.Generator, *, level: float = CI_LEVEL,
                 resamples: int = BOOTSTRAP) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampling the inputs)."""
    v = np.asarray(values, np.float64)
    if len(v) == 0:
        return float("nan"), float("nan")
    means = v[rng.integers(0, len(v), size=(resamples, len(v)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


@dataclass
class Expectation:
    """How a result on a randomised target was measured: ``draws`` fresh draws of every input;
    per input the share of draws answered correctly on the clean and the adversarial input and the
    share on which the attack succeeded; ``eot``: draws averaged per gradient during the attack;
    ``ci``: the 95% bootstrap interval of the expected robust accuracy."""

    draws: int
    eot: int
    clean_correct: np.ndarray
    adv_correct: np.ndarray
    adv_success: np.ndarray
    ci: tuple[float, float]

    @property
    def robust_accuracy(self) -> float:
        return float(np.mean(self.adv_correct)) if len(self.adv_correct) else float("nan")

    @property
    def clean_accuracy(self) -> float:
        return float(np.mean(self.clean_correct)) if len(self.clean_correct) else float("nan")

    def describe(self) -> str:
        lo, hi = self.ci
        return (f"robust accuracy in expectation over {self.draws} draws: {self.robust_accuracy:.1%}, "
                f"{CI_LEVEL:.0%} CI [{lo:.1%}, {hi:.1%}]")


def shares(counts: np.ndarray, y: np.ndarray, goal: np.ndarray, targeted: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per input, from class counts over draws: the share of draws predicting ``y`` and the share
    on which the attack succeeded (``goal`` predicted when targeted, anything but ``y`` otherwise)."""
    total = counts.sum(axis=1).clip(1)
    rows = np.arange(len(counts))
    correct = counts[rows, y] / total
    success = counts[rows, goal] / total if targeted else 1.0 - correct
    return correct, success
