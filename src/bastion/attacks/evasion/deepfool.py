"""DeepFool (Moosavi-Dezfooli, Fawzi & Frossard, 2016, "DeepFool: a simple and accurate method to fool
deep neural networks", arXiv:1511.04599), L2 and L∞, batched over samples.

Each iteration linearises the classifier around the current point and steps to the nearest
linearised decision boundary among the candidate classes (Algorithm 2 for L2; Sec. 3.3 for L∞,
with the dual norm L1 and a sign step). The final perturbation is ``(1 + overshoot)`` times the
accumulated one. On an affine binary classifier the first step lands exactly on the boundary, so
the result is the distance ``|w·x + b| / ||w||`` (dual norm for L∞) times ``1 + overshoot``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from pydantic import Field

from bastion.attacks.base import MAX_STEPS, AttackRun, EvasionAttack, GradientParams, register_attack
from bastion.attacks.evasion._torch import Geometry, project_ball, to_tensor
from bastion.core.params import Eps, Norm
from bastion.core.targets.base import DifferentiableTarget


def deepfool_optimise(target: DifferentiableTarget, geo: Geometry, x0: torch.Tensor, y: torch.Tensor, *, norm: str,
                      overshoot: float = 0.02, max_iter: int = 50, candidates: int = 10,
                      eps: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepFool on a batch. With ``eps`` set, the accumulated perturbation is projected onto the
    ε-ball after every step (the ε-constrained variant the ``auto`` ensemble uses).
    Returns (adversarial inputs, fooled mask); unfooled samples come back unchanged."""
    n, dev = len(x0), x0.device
    r_tot = torch.zeros_like(x0)
    out = x0.clone()
    fooled = torch.zeros(n, dtype=torch.bool, device=dev)
    with torch.no_grad():
        order = target.logits(x0).scatter(1, y[:, None], -torch.inf).argsort(dim=1, descending=True)
    k = min(candidates, target.n_classes - 1)
    cand = order[:, :k]  # the k most likely other classes (ART's nb_grads; the paper uses all)
    idx = torch.arange(n, device=dev)
    p_dual = 1.0 if norm == "linf" else 2.0
    for _ in range(max_iter + 1):
        delta = (1 + overshoot) * r_tot[idx]
        if eps is not None:
            delta = project_ball(delta, eps, norm)
        xs = geo.apply(x0[idx], delta).requires_grad_(True)
        logits = target.logits(xs)
        done = logits.detach().argmax(1) != y[idx]
        if done.any():
            out[idx[done]], fooled[idx[done]] = xs.detach()[done], True
        active = ~done
        if not active.any():
            break
        if _ == max_iter:
            break
        yi, ci = y[idx], cand[idx]
        f_y = logits.gather(1, yi[:, None])
        grads_y = torch.autograd.grad(f_y.sum(), xs, retain_graph=True)[0]
        best_d = torch.full((len(idx),), torch.inf, device=dev)
        best_w = torch.zeros_like(xs)
        best_f = torch.zeros(len(idx), device=dev)
        for j in range(k):
            f_k = logits.gather(1, ci[:, j:j + 1])
            g_k = torch.autograd.grad(f_k.sum(), xs, retain_graph=j < k - 1)[0]
            w = (g_k - grads_y) * geo.scale * geo.mask  # gradient in ε units
            f = (f_k - f_y).squeeze(1).detach()
            wn = w.flatten(1).norm(p=p_dual, dim=1)
            d = f.abs() / wn.clamp_min(1e-12)
            better = d < best_d
            best_d = torch.where(better, d, best_d)
            best_f = torch.where(better, f, best_f)
            best_w[better] = w[better]
        wn = best_w.flatten(1).norm(p=p_dual, dim=1).clamp_min(1e-12)
        shape = (-1, *([1] * (x0.dim() - 1)))
        if norm == "l2":
            r = ((best_f.abs() + 1e-4) / wn ** 2).view(shape) * best_w
        else:
            r = ((best_f.abs() + 1e-4) / wn).view(shape) * best_w.sign()
        r_tot[idx[active]] = r_tot[idx[active]] + r[active]
        idx = idx[active]
    return out, fooled


class DeepFoolParams(GradientParams):
    eps: Eps = Field(0.0, description="Ignored: a minimal-perturbation attack.")
    norm: Norm = Field("l2", description="Norm of the perturbation: l2 or linf.")
    targeted: Literal[False] = Field(False, description="DeepFool is untargeted (use cw or apgd for targets).")
    overshoot: float = Field(0.02, ge=0, description="Final perturbation is (1 + overshoot) times the one found.")
    max_iter: int = Field(50, ge=1, le=MAX_STEPS, description="Linearisation steps.")
    candidates: int = Field(10, ge=1, le=1000, description="Most likely other classes considered per step.")


@register_attack
class DeepFool(EvasionAttack):
    """DeepFool: iterate to the nearest linearised boundary, then overshoot by ``overshoot``.

    A minimal-perturbation attack (``eps`` is ignored; the result's norms are the measurement).

    >>> import bastion
    >>> attack = bastion.attacks.DeepFool(norm="l2", overshoot=0.02)
    """

    name = "deepfool"
    minimal = True

    Params = DeepFoolParams

    def _attack_batch(self, target: DifferentiableTarget, x: np.ndarray, goal: np.ndarray, rows: np.ndarray,
                      run: AttackRun) -> np.ndarray:
        geo = Geometry.of(target)
        x0, y0 = to_tensor(x, target.device), to_tensor(goal, target.device, torch.long)
        adv, _ = deepfool_optimise(target, geo, x0, y0, norm=self.norm, overshoot=self.overshoot,
                                   max_iter=self.max_iter, candidates=self.candidates)
        return adv.cpu().numpy()
