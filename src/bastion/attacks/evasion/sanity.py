"""Sanity checks before a white-box robustness number is trusted: signs of gradient masking.

After Athalye, Carlini & Wagner (2018, "Obfuscated Gradients Give a False Sense of Security",
arXiv:1802.00420), the checklist of Carlini et al. (2019, "On Evaluating Adversarial Robustness",
arXiv:1902.06705) and the checks AutoAttack runs (Croce & Hein 2020, arXiv:2003.01690):

- :func:`check_randomized` — identical calls give different outputs (a randomised defence: evaluate
  in expectation, EOT);
- :func:`check_output_kind` — the differentiable path returns probabilities or saturated scores
  instead of logits (losses on them vanish);
- :func:`check_gradients` — zero or non-finite input gradients on a sample (shattered gradients:
  use BPDA);
- :func:`check_blackbox_vs_whitebox` — a black-box attack fools inputs the white-box attack could
  not (the gradients mislead);
- :func:`check_large_eps` — robust accuracy does not fall toward 0 when ε covers the whole input
  range;
- :func:`check_unbounded` — an unbounded (minimal-perturbation) attack does not reach 100% success.

Each returns a :class:`SanityResult`; ``flagged`` means the sign was seen. A sign that rests on a
share of inputs fires only when that share is significantly above a tolerated rate (a one-sided
exact binomial test at level ``alpha``, or the exact McNemar test for the black-box comparison);
the result states the count, a Clopper–Pearson interval and the p-value (see :func:`count_test`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from bastion.attacks.base import AttackResult
from bastion.attacks.evasion._torch import to_tensor
from bastion.core.spec import InputSpec
from bastion.core.stats import binom_sf, clopper_pearson, mcnemar_greater
from bastion.core.targets.base import (
    DifferentiableTarget,
    Target,
    looks_like_probabilities,
)


@dataclass(frozen=True)
class Significance:
    """How sure a count-based sign must be: the test level ``alpha`` and the confidence of the
    intervals reported."""

    alpha: float = 0.01
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1 or not 0 < self.confidence < 1:
            raise ValueError(f"alpha and confidence must lie in (0, 1), got {self.alpha}, {self.confidence}")


DEFAULT = Significance()


@dataclass
class SanityResult:
    """One sanity check: whether the sign was seen, a plain-language message, numbers (with the
    count, interval and p-value of its test where it has one), and the indices of the inputs
    concerned (where per-sample)."""

    check: str
    flagged: bool
    message: str
    metrics: dict[str, Any] = field(default_factory=dict)
    samples: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "flagged": self.flagged, "message": self.message, "metrics": self.metrics,
                "samples": self.samples}


def count_test(k: int, n: int, tolerated: float, sig: Significance = DEFAULT, what: str = "inputs"
               ) -> tuple[bool, dict[str, Any], str]:
    """Is ``k`` of ``n`` significantly above the ``tolerated`` rate? One-sided exact binomial test
    (H0: rate <= tolerated), significant at ``p < alpha``. Returns (significant, numbers, text)."""
    lo, hi = clopper_pearson(k, n, sig.confidence)
    p = binom_sf(k, n, tolerated) if n else 1.0
    significant = n > 0 and k / n > tolerated and p < sig.alpha
    numbers = {"count": k, "n": n, "rate": k / n if n else None, "ci_low": lo, "ci_high": hi,
               "confidence": sig.confidence, "tolerated_rate": tolerated, "p_value": p, "alpha": sig.alpha}
    text = (_stated(k, n, lo, hi, sig, what)
            + f"; tolerated {tolerated:.1%}, exact binomial p={p:.2g} (flags at p < {sig.alpha:g})")
    return significant, numbers, text


def _stated(k: int, n: int, lo: float, hi: float, sig: Significance, what: str = "inputs") -> str:
    rate = f"{k / n:.1%}" if n else "n/a"
    return f"{k} of {n} {what} ({rate}, {sig.confidence:.0%} CI {lo:.1%}-{hi:.1%})"


def check_randomized(target: Target, x: np.ndarray, *, repeats: int = 3, atol: float = 1e-6,
                     sig: Significance = DEFAULT) -> SanityResult:
    """Call ``predict_proba`` on the same inputs ``repeats`` times; any difference beyond ``atol``
    means the model is randomised, and a single gradient sample misleads an attack. No test is
    needed: a deterministic model never differs beyond the tolerance, so one such input proves it."""
    with target.uncounted():
        outs = [target.predict_proba(x) for _ in range(max(repeats, 2))]
    diff = np.max([np.abs(o - outs[0]).reshape(len(x), -1).max(axis=1) for o in outs[1:]], axis=0)
    changed = np.flatnonzero(diff > atol)
    flips = np.max([np.mean(o.argmax(1) != outs[0].argmax(1)) for o in outs[1:]])
    flagged = len(changed) > 0
    lo, hi = clopper_pearson(len(changed), len(x), sig.confidence)
    msg = (f"outputs changed by more than {atol:g} between identical calls on "
           f"{_stated(len(changed), len(x), lo, hi, sig)} (max difference {float(diff.max()):.3g}, predicted "
           f"class changed on {100 * flips:.1f}%): the model is randomised"
           if flagged else f"outputs identical (within {atol:g}) over {max(repeats, 2)} calls on {len(x)} inputs")
    return SanityResult("randomized-outputs", flagged, msg,
                        {"n": len(x), "n_changed": len(changed), "count": len(changed), "ci_low": lo, "ci_high": hi,
                         "confidence": sig.confidence, "atol": atol, "max_abs_diff": float(diff.max()),
                         "label_flip_rate": float(flips)}, changed.tolist())


def check_output_kind(target: DifferentiableTarget, x: np.ndarray, *, saturation: float = 1 - 1e-7,
                      max_saturated_rate: float = 0.5, sig: Significance = DEFAULT) -> SanityResult:
    """The differentiable path should return logits. Flags probabilities (rows in [0, 1] summing
    to 1: a softmax inside the model), and saturated softmax (top probability rounds to 1 in
    float32, so the cross-entropy gradient vanishes) on significantly more than
    ``max_saturated_rate`` of the inputs."""
    with target.uncounted(), torch.no_grad():
        z = target.logits(to_tensor(x, target.device)).double().cpu().numpy()
    probs_like = looks_like_probabilities(z) if np.all(np.isfinite(z)) else False
    p = torch.softmax(torch.as_tensor(z, dtype=torch.float32), dim=1).numpy()
    saturated = np.flatnonzero(p.max(axis=1) >= saturation)
    frac = len(saturated) / len(x)
    significant, numbers, stated = count_test(len(saturated), len(x), max_saturated_rate, sig)
    flagged = probs_like or significant
    if probs_like:
        msg = ("the model's differentiable output is a probability vector (softmax inside the model), not "
               "logits: gradient attacks on it see squashed, vanishing gradients")
    elif flagged:
        msg = f"softmax saturated (top probability rounds to 1) on {stated}: the cross-entropy gradient is zero there"
    else:
        msg = f"outputs look like logits; softmax saturated on {stated}"
    return SanityResult("output-kind", flagged, msg,
                        {**numbers, "probabilities_like": bool(probs_like), "saturated_fraction": float(frac),
                         "logit_range": float(np.ptp(z)) if np.all(np.isfinite(z)) else None},
                        saturated.tolist() if flagged and not probs_like else [])


def check_gradients(target: DifferentiableTarget, x: np.ndarray, y: np.ndarray, *, atol: float = 0.0,
                    max_rate: float = 0.02, sig: Significance = DEFAULT) -> SanityResult:
    """Input gradient of the logit margin ``z_y - max_{i≠y} z_i`` per sample (the margin does not
    saturate like the cross-entropy). Zero (norm ≤ ``atol``) or non-finite gradients mean the
    attack has nothing to follow (shattered or masked gradients); flagged when they occur on
    significantly more than ``max_rate`` of the inputs."""
    xt = to_tensor(x, target.device).requires_grad_(True)
    yt = to_tensor(np.asarray(y), target.device, torch.long)
    with target.uncounted():
        z = target.logits(xt)
    other = z.scatter(1, yt[:, None], -torch.inf).amax(dim=1)
    margin = z.gather(1, yt[:, None]).squeeze(1) - other
    (g,) = torch.autograd.grad(margin.sum(), xt, allow_unused=True)
    if g is None:
        g = torch.zeros_like(xt)
    flat = g.detach().flatten(1).double()
    finite = torch.isfinite(flat).all(dim=1)
    norms = torch.where(finite, flat.nan_to_num(0).norm(dim=1), torch.full_like(finite, torch.nan, dtype=flat.dtype))
    zero = finite & (norms <= atol)
    bad = np.flatnonzero((~finite | zero).cpu().numpy())
    flagged, numbers, stated = count_test(len(bad), len(x), max_rate, sig)
    n_zero, n_nonfinite = int(zero.sum()), int((~finite).sum())
    msg = (f"zero ({n_zero}) or non-finite ({n_nonfinite}) input gradient on {stated}"
           + (": gradient-based attacks cannot make progress there" if flagged else ""))
    finite_norms = norms[finite].cpu().numpy()
    return SanityResult("zero-gradients", flagged, msg,
                        {**numbers, "n_zero": n_zero, "n_nonfinite": n_nonfinite,
                         "median_grad_norm": float(np.median(finite_norms)) if len(finite_norms) else None},
                        bad.tolist())


def check_blackbox_vs_whitebox(white: AttackResult, black: AttackResult, *, min_rate: float = 0.03,
                               sig: Significance = DEFAULT) -> SanityResult:
    """Inputs a black-box attack fooled at the same ε where the white-box attack failed. A
    gradient attack with full knowledge should be at least as strong: if not, its gradients mislead.
    On the discordant pairs (``b`` fooled by the black-box attack only, ``c`` by the white-box one
    only) the exact one-sided McNemar test must reject "equally strong" at ``alpha``, and ``b``
    must be at least ``min_rate`` of the attacked inputs (a minimum effect size): one input that
    one run missed is noise, not masking."""
    if len(white.y) != len(black.y):
        raise ValueError("the two results must cover the same inputs")
    attacked = white.clean_pred == white.y
    only_black = np.flatnonzero(attacked & black.success & ~white.success)
    b, c = len(only_black), int((attacked & white.success & ~black.success).sum())
    n_att = int(attacked.sum())
    p = mcnemar_greater(b, c)
    lo, hi = clopper_pearson(b, n_att, sig.confidence)
    flagged = p < sig.alpha and n_att > 0 and b / n_att >= min_rate
    stated = (f"{_stated(b, n_att, lo, hi, sig)} fooled only by '{black.attack}', {c} only by '{white.attack}' "
              f"(exact McNemar p={p:.2g}; flags at p < {sig.alpha:g} and at least {min_rate:.1%})")
    msg = (f"the black-box attack '{black.attack}' beats the white-box attack '{white.attack}' at the same ε: {stated}"
           if flagged else f"the black-box attack is not significantly stronger than the white-box one: {stated}")
    return SanityResult("blackbox-beats-whitebox", flagged, msg,
                        {"n_attacked": n_att, "n_blackbox_only": b, "n_whitebox_only": c, "count": b, "n": n_att,
                         "rate": b / n_att if n_att else None, "ci_low": lo, "ci_high": hi,
                         "confidence": sig.confidence, "min_rate": min_rate, "p_value": p, "alpha": sig.alpha,
                         "whitebox_robust_accuracy": white.robust_accuracy,
                         "blackbox_robust_accuracy": black.robust_accuracy,
                         "eps": white.eps, "norm": white.norm}, only_black.tolist())


def full_range_eps(spec: InputSpec, norm: str) -> float | None:
    """The ε (in each feature's scale) that reaches every point of the input box from any other:
    the box's L∞ or L2 diameter; None when a bound is infinite."""
    lo, hi = spec.bounds_arrays()
    span = (hi.astype(np.float64) - lo.astype(np.float64)) / spec.scale_array().astype(np.float64)
    mutable = np.broadcast_to(spec.mutable_mask() > 0, span.shape)
    span = span[mutable]
    if span.size == 0 or not np.all(np.isfinite(span)):
        return None
    return float(span.max() if norm == "linf" else np.linalg.norm(span))


def check_large_eps(result: AttackResult, *, max_accuracy: float = 0.05, sig: Significance = DEFAULT
                    ) -> SanityResult:
    """Carlini et al. 2019 (§5.2): with a large enough budget (here ``result.eps``, by default the
    whole input range) every input can be moved anywhere, so robust accuracy must fall toward 0.
    Flagged when the inputs still answered correctly are significantly more than ``max_accuracy``."""
    kept = np.flatnonzero(result.adv_pred == result.y)
    flagged, numbers, stated = count_test(len(kept), len(result.y), max_accuracy, sig, "inputs correctly")
    msg = (f"after '{result.attack}' at ε={result.eps:g} ({result.norm}) the model still answers {stated}"
           + (": robust accuracy should fall toward 0 at such an ε; the attack is not following real gradients"
              if flagged else ""))
    return SanityResult("large-eps", flagged, msg,
                        {**numbers, "large_eps_robust_accuracy": result.robust_accuracy, "large_eps": result.eps,
                         "norm": result.norm, "attack": result.attack}, kept.tolist())


def check_unbounded(result: AttackResult, *, max_failure_rate: float = 0.02, sig: Significance = DEFAULT
                    ) -> SanityResult:
    """Carlini et al. 2019 (§5.2): an unbounded attack (a minimal-perturbation one, no ε) must fool
    every input the model classifies correctly. Flagged when it fails on significantly more than
    ``max_failure_rate`` of them."""
    attacked = result.clean_pred == result.y
    failed = np.flatnonzero(attacked & ~result.success)
    flagged, numbers, stated = count_test(len(failed), int(attacked.sum()), max_failure_rate, sig,
                                          "correctly classified inputs")
    msg = (f"the unbounded attack '{result.attack}' failed on {stated}"
           + (": an unbounded attack must reach 100% success" if flagged else ""))
    return SanityResult("unbounded-attack", flagged, msg,
                        {**numbers, "unbounded_success_rate": result.metrics()["success_rate"], "attack": result.attack},
                        failed.tolist())
