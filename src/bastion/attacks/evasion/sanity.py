"""Sanity checks before a white-box robustness number is trusted: signs of gradient masking.

After Athalye, Carlini & Wagner (2018, "Obfuscated Gradients Give a False Sense of Security",
arXiv:1802.00420) and the checks AutoAttack runs (Croce & Hein 2020, arXiv:2003.01690):

- :func:`check_randomized` — identical calls give different outputs (a randomised defence: use EOT);
- :func:`check_output_kind` — the differentiable path returns probabilities or saturated scores
  instead of logits (losses on them vanish);
- :func:`check_gradients` — zero or non-finite input gradients on a sample (shattered gradients:
  use BPDA);
- :func:`check_blackbox_vs_whitebox` — a black-box attack fools inputs the white-box attack could
  not (the gradients mislead).

Each returns a :class:`SanityResult`; ``flagged`` means the sign was seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from bastion.attacks.base import AttackResult
from bastion.attacks.evasion._torch import to_tensor
from bastion.core.targets.base import (
    DifferentiableTarget,
    Target,
    looks_like_probabilities,
)


@dataclass
class SanityResult:
    """One sanity check: whether the sign was seen, a plain-language message, numbers, and the
    indices of the inputs concerned (where per-sample)."""

    check: str
    flagged: bool
    message: str
    metrics: dict[str, Any] = field(default_factory=dict)
    samples: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "flagged": self.flagged, "message": self.message, "metrics": self.metrics,
                "samples": self.samples}


def check_randomized(target: Target, x: np.ndarray, *, repeats: int = 3, atol: float = 1e-6) -> SanityResult:
    """Call ``predict_proba`` on the same inputs ``repeats`` times; any difference beyond ``atol``
    means the model is randomised, and a single gradient sample misleads an attack."""
    with target.uncounted():
        outs = [target.predict_proba(x) for _ in range(max(repeats, 2))]
    diff = np.max([np.abs(o - outs[0]).reshape(len(x), -1).max(axis=1) for o in outs[1:]], axis=0)
    changed = np.flatnonzero(diff > atol)
    flips = np.max([np.mean(o.argmax(1) != outs[0].argmax(1)) for o in outs[1:]])
    flagged = len(changed) > 0
    msg = (f"outputs changed between identical calls on {len(changed)} of {len(x)} inputs (max difference "
           f"{float(diff.max()):.3g}, predicted class changed on {100 * flips:.1f}%): the model is randomised"
           if flagged else f"outputs identical over {max(repeats, 2)} calls on {len(x)} inputs")
    return SanityResult("randomized-outputs", flagged, msg,
                        {"n": len(x), "n_changed": len(changed), "max_abs_diff": float(diff.max()),
                         "label_flip_rate": float(flips)}, changed.tolist())


def check_output_kind(target: DifferentiableTarget, x: np.ndarray, *, saturation: float = 1 - 1e-7
                      ) -> SanityResult:
    """The differentiable path should return logits. Flags probabilities (rows in [0, 1] summing
    to 1: a softmax inside the model) and saturated softmax (top probability rounds to 1 in
    float32, so the cross-entropy gradient vanishes) on more than half the inputs."""
    with target.uncounted(), torch.no_grad():
        z = target.logits(to_tensor(x, target.device)).double().cpu().numpy()
    probs_like = looks_like_probabilities(z) if np.all(np.isfinite(z)) else False
    p = torch.softmax(torch.as_tensor(z, dtype=torch.float32), dim=1).numpy()
    saturated = np.flatnonzero(p.max(axis=1) >= saturation)
    frac = len(saturated) / len(x)
    flagged = probs_like or frac > 0.5
    if probs_like:
        msg = ("the model's differentiable output is a probability vector (softmax inside the model), not "
               "logits: gradient attacks on it see squashed, vanishing gradients")
    elif flagged:
        msg = (f"softmax saturated (top probability rounds to 1) on {100 * frac:.0f}% of inputs: "
               "the cross-entropy gradient is zero there")
    else:
        msg = f"outputs look like logits; softmax saturated on {100 * frac:.0f}% of inputs"
    return SanityResult("output-kind", flagged, msg,
                        {"probabilities_like": bool(probs_like), "saturated_fraction": float(frac),
                         "logit_range": float(np.ptp(z)) if np.all(np.isfinite(z)) else None},
                        saturated.tolist() if flagged and not probs_like else [])


def check_gradients(target: DifferentiableTarget, x: np.ndarray, y: np.ndarray, *, atol: float = 0.0
                    ) -> SanityResult:
    """Input gradient of the logit margin ``z_y - max_{i≠y} z_i`` per sample (the margin does not
    saturate like the cross-entropy). Zero (norm ≤ ``atol``) or non-finite gradients mean the
    attack has nothing to follow: shattered or masked gradients."""
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
    flagged = len(bad) > 0
    n_zero, n_nonfinite = int(zero.sum()), int((~finite).sum())
    msg = (f"zero input gradient on {n_zero} and non-finite gradient on {n_nonfinite} of {len(x)} inputs: "
           "gradient-based attacks cannot make progress there" if flagged
           else f"input gradients non-zero and finite on all {len(x)} inputs")
    finite_norms = norms[finite].cpu().numpy()
    return SanityResult("zero-gradients", flagged, msg,
                        {"n": len(x), "n_zero": n_zero, "n_nonfinite": n_nonfinite,
                         "median_grad_norm": float(np.median(finite_norms)) if len(finite_norms) else None},
                        bad.tolist())


def check_blackbox_vs_whitebox(white: AttackResult, black: AttackResult) -> SanityResult:
    """Inputs a black-box attack fooled at the same ε where the white-box attack failed. A
    gradient attack with full knowledge should be at least as strong: if not, its gradients mislead."""
    if len(white.y) != len(black.y):
        raise ValueError("the two results must cover the same inputs")
    attacked = white.clean_pred == white.y
    only_black = np.flatnonzero(attacked & black.success & ~white.success)
    n_att = int(attacked.sum())
    flagged = len(only_black) > 0
    msg = (f"the black-box attack '{black.attack}' fooled {len(only_black)} of {n_att} inputs that the white-box "
           f"attack '{white.attack}' could not, at the same eps" if flagged
           else f"the black-box attack '{black.attack}' found nothing the white-box attack '{white.attack}' missed")
    return SanityResult("blackbox-beats-whitebox", flagged, msg,
                        {"n_attacked": n_att, "n_blackbox_only": len(only_black),
                         "whitebox_robust_accuracy": white.robust_accuracy,
                         "blackbox_robust_accuracy": black.robust_accuracy,
                         "eps": white.eps, "norm": white.norm}, only_black.tolist())
