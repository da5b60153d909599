"""Fast Gradient Sign Method (Goodfellow et al., 2015, "Explaining and Harnessing Adversarial
Examples", arXiv:1412.6572); the L2 variant steps along the normalised gradient (fast gradient method)."""

from __future__ import annotations

import numpy as np
import torch

from bastion.attacks.base import AttackRun, EvasionAttack, GradientParams, register_attack
from bastion.attacks.evasion._torch import Geometry, ascent_direction, attack_loss, to_tensor
from bastion.core.targets.base import DifferentiableTarget


@register_attack
class FGSM(EvasionAttack):
    """One step of size ε along the sign of the loss gradient (L∞) or its unit direction (L2). On
    tables with integer or one-hot features the step is then projected to a valid point of the
    ε-ball (``Geometry.project``, one-hot ties and the L2 budget decided by the gradient)."""

    name = "fgsm"
    Params = GradientParams

    def _attack_batch(self, target: DifferentiableTarget, x: np.ndarray, goal: np.ndarray, rows: np.ndarray,
                      run: AttackRun) -> np.ndarray:
        geo = Geometry.of(target)
        xs = to_tensor(x, target.device).requires_grad_(True)
        ys = to_tensor(goal, target.device, torch.long)
        loss = attack_loss(target.logits(xs), ys, "ce", self.targeted).sum()
        (grad,) = torch.autograd.grad(loss, xs)
        step = self.eps * ascent_direction(grad * geo.scale * geo.mask, self.norm)
        x_adv = geo.apply(xs.detach(), step)
        # integers and one-hot groups: nearest discrete point in the ball; ties in a group go to the larger gradient
        return geo.project(xs.detach(), x_adv, self.eps, self.norm, prefer=grad).cpu().numpy()
