"""An adaptive attack on a classifier guarded by a detector of adversarial inputs.

Carlini & Wagner (2017, "Adversarial Examples Are Not Easily Detected: Bypassing Ten Detection
Methods", arXiv:1705.07263) break detectors by attacking the classifier and the detector together:
the adversarial input must be misclassified *and* score below the detector's threshold. Here, under
an ε budget (L∞ or L2), projected gradient ascent on C&W's combined objective, per input

    min(margin(x'), κ) − c · max(s(x') / τ − (1 − m), 0)

where ``margin`` is the largest wrong logit minus the true one (capped at ``κ`` so that, once the
input is misclassified, the detector term leads), ``s`` the detector's differentiable score (its
non-differentiable steps crossed by BPDA), ``τ`` its threshold and ``m`` a safety margin below it.
As C&W search the weight ``c``, the attack runs once per weight of ``c`` on the inputs not yet
evaded. An input is done, and kept, at the first iterate that is misclassified and not flagged
(the forward values of the score are the real ones). It lives in the campaign layer because it joins
two capabilities: evasion (its step primitives) and detection.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bastion.attacks.evasion._torch import Geometry, ascent_direction, project_ball, random_start
from bastion.core.run import RunContext
from bastion.errors import UsageError
from bastion.monitor.adversarial import AdversarialDetector


@dataclass(frozen=True)
class GuardedPGD:
    """The combined attack's settings: ``steps`` of size ``step_size`` (ε units; default 2.5·ε/steps),
    detector weights ``c`` tried in turn, classifier margin cap ``kappa`` and detector margin ``m``
    (a share of τ)."""

    eps: float
    norm: str = "linf"
    steps: int = 50
    step_size: float | None = None
    c: tuple[float, ...] = (0.03, 0.3, 3.0)
    kappa: float = 1.0
    m: float = 0.1
    batch_size: int = 256

    def __post_init__(self) -> None:
        if self.norm not in ("linf", "l2"):
            raise UsageError(f"norm must be 'linf' or 'l2', got {self.norm!r}")
        if not (self.eps > 0 and self.steps >= 1 and self.c and min(self.c) > 0 and self.kappa >= 0 and 0 <= self.m < 1):
            raise UsageError("the adaptive attack needs eps > 0, steps >= 1, c > 0, kappa >= 0 and 0 <= m < 1, got "
                             f"eps={self.eps}, steps={self.steps}, c={self.c}, kappa={self.kappa}, m={self.m}")

    def run(self, detector: AdversarialDetector, x: np.ndarray, y: np.ndarray, ctx: RunContext) -> np.ndarray:
        """Adversarial inputs for ``x`` (labels ``y``, class indices): the first iterate of each input
        that fools the classifier and the detector, else the last one."""
        target = detector.target
        geo = Geometry.of(target)
        if geo.discrete is not None:
            raise UsageError("the adaptive detector attack moves continuous inputs; the target has integer or "
                             "one-hot features")
        out = np.asarray(x, np.float32).copy()
        todo = np.arange(len(x))
        for i, c in enumerate(self.c):
            left = []
            for s in range(0, len(todo), self.batch_size):
                rows = todo[s:s + self.batch_size]
                adv, done = self._batch(detector, geo, x[rows], y[rows], rows, ctx.spawn(f"c{i}"), c)
                last = i == len(self.c) - 1
                out[rows[done | last]] = adv[done | last]
                left.append(rows[~done])
            todo = np.concatenate(left)
            if not len(todo):
                break
        return out

    def _batch(self, detector: AdversarialDetector, geo: Geometry, x: np.ndarray, y: np.ndarray, rows: np.ndarray,
               ctx: RunContext, c: float) -> tuple[np.ndarray, np.ndarray]:
        target, tau = detector.target, detector.threshold
        view = target.adaptive_view()
        dev = target.device
        x0 = torch.as_tensor(x, dtype=torch.float32, device=dev)
        y0 = torch.as_tensor(y, dtype=torch.long, device=dev)
        alpha = self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps
        delta = random_start(ctx.streams(rows, "start"), tuple(x0.shape), self.eps, self.norm, dev) * geo.mask
        best, idx = x0.clone(), torch.arange(len(x0), device=dev)
        evaded = torch.zeros(len(x0), dtype=torch.bool, device=dev)
        xs, ys = x0, y0
        for t in range(self.steps + 1):
            x_adv = geo.apply(xs, delta).requires_grad_(True)
            logits = view.logits(x_adv)
            score = detector.score(x_adv)
            true = logits.gather(1, ys[:, None]).squeeze(1)
            other = logits.scatter(1, ys[:, None], -torch.inf).amax(dim=1)
            done = (other > true) & (score < tau)
            if done.any():
                best[idx[done]], evaded[idx[done]] = x_adv.detach()[done], True
            if t == self.steps or done.all():
                best[idx[~done]] = x_adv.detach()[~done]
                break
            objective = (other - true).clamp(max=self.kappa) - c * (score / tau - (1 - self.m)).clamp(min=0)
            (grad,) = torch.autograd.grad(objective.sum(), x_adv)
            keep = ~done
            xs, ys, idx, delta = xs[keep], ys[keep], idx[keep], delta[keep]
            step = ascent_direction(grad[keep] * geo.scale * geo.mask, self.norm)
            delta = project_ball(delta + alpha * step, self.eps, self.norm)
            delta = geo.delta_of(xs, geo.apply(xs, delta))
        return best.cpu().numpy(), evaded.cpu().numpy()
