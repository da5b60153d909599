"""Transfer attack: craft adversarial inputs on a surrogate model with a white-box attack, then
measure how many fool the target (Papernot, McDaniel & Goodfellow 2016, "Transferability in Machine
Learning", arXiv:1605.07277).

The surrogate is either given (a model spec or a white-box Target) or trained on queries to the
target: the target's outputs for the attack inputs, grown by Jacobian-based augmentation (Papernot
et al. 2017, "Practical Black-Box Attacks against Machine Learning", arXiv:1602.02697) within
``train_queries``. The default crafting attack is PGD run to its last step with momentum (MI-FGSM,
Dong et al. 2018, arXiv:1710.06081): no early stop, since transfer improves with the surrogate loss.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import ConfigDict, Field, field_validator

from bastion.attacks.base import (
    MAX_QUERIES, MAX_STEPS, AttackParams, AttackResult, AttackRun, EvasionAttack, get_attack, register_attack)
from bastion.core.params import ParamError
from bastion.core.targets.base import DifferentiableTarget, Target
from bastion.errors import TargetError

log = logging.getLogger(__name__)


@dataclass
class _TransferState:
    model: DifferentiableTarget | None = None
    info: dict[str, Any] = field(default_factory=dict)


class TransferParams(AttackParams):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    surrogate: Any = Field(None, description="A model spec, a white-box Target, or None to train one on queries.")
    attack: str = Field("pgd", description="The white-box attack crafted on the surrogate (by name).")
    attack_params: dict[str, Any] = Field(default_factory=dict, description="Its parameters.")
    steps: int = Field(50, ge=1, le=MAX_STEPS, description="Momentum-PGD steps (the default crafting attack).")
    momentum: float = Field(0.9, ge=0, lt=1, description="Momentum of the default crafting attack.")
    train_queries: int = Field(2000, ge=1, le=MAX_QUERIES, description="Most target queries to train a surrogate.")
    augment_rounds: int = Field(2, ge=0, le=100, description="Jacobian-augmentation rounds.")
    augment_step: float = Field(0.1, gt=0, description="Augmentation step λ, in ε units.")
    epochs: int = Field(30, ge=1, le=10_000, description="Surrogate training epochs.")

    @field_validator("attack")
    @classmethod
    def _not_itself(cls, v: str) -> str:
        if v == "transfer":
            raise ValueError("the transfer attack cannot craft with itself")
        return v


@register_attack
class Transfer(EvasionAttack):
    """Transfer attack from a surrogate. Works on any target (black box included).

    ``surrogate``: a model spec string, a white-box Target, or None to train one on queries
    (``train_queries`` inputs at most, ``augment_rounds`` Jacobian augmentation rounds, ``epochs``).
    ``attack``: the white-box attack crafted on the surrogate (default ``pgd``: ``steps`` steps with
    ``momentum``), ``attack_params`` its parameters when another attack is named.

    >>> import bastion
    >>> attack = bastion.attacks.Transfer(eps=0.2, train_queries=2000)
    """

    name = "transfer"
    family = "evasion-transfer"
    needs_gradients = False

    Params = TransferParams

    def _begin(self, run: AttackRun, target: Target) -> None:
        run.state = _TransferState()

    def _end(self, run: AttackRun, res: AttackResult) -> None:
        st: _TransferState = run.state
        if st.model is not None:
            with st.model.uncounted():
                sp = st.model.predict_proba(res.x_adv).argmax(1)
            ok = res.clean_pred == res.y
            fooled_s = (sp == run.goal) if self.targeted else (sp != res.y)
            st.info["surrogate_success_rate"] = float(fooled_s[ok].mean()) if ok.any() else None
        res.extra["surrogate"] = dict(st.info)
        res.extra.setdefault("notes", []).append(
            f"crafted on a {st.info.get('source', 'surrogate')} surrogate with '{self.attack}'; success is "
            "measured on the target")

    # --- the surrogate ---------------------------------------------------------------------------
    def _surrogate(self, target: Target, run: AttackRun) -> DifferentiableTarget:
        st: _TransferState = run.state
        if st.model is not None:
            return st.model
        if self.surrogate is not None:
            st.model = self._given(target)
            st.info.update({"source": "given", "name": st.model.name})
            return st.model
        key = ("transfer-surrogate", id(target), self.seed, self.train_queries, self.augment_rounds,
               self.augment_step, self.epochs)
        fresh = key not in run.ctx.memo

        def train() -> tuple[DifferentiableTarget, dict[str, Any]]:
            from bastion.attacks.evasion._surrogate import train_surrogate

            return train_surrogate(target, run.x, train_queries=self.train_queries,
                                   augment_rounds=self.augment_rounds, augment_step=self.augment_step,
                                   epochs=self.epochs, seed=self.seed)

        st.model, info = run.ctx.remember(key, train)  # reused across the ε of a curve, within one run
        st.info.update(info, **({} if fresh else {"reused": True}))
        return st.model

    def _given(self, target: Target) -> DifferentiableTarget:
        from bastion.core.loader import load_target

        spec = self.surrogate
        model = load_target(spec, input_shape=target.input_spec.shape, classes=target.classes) \
            if isinstance(spec, str) else load_target(spec)
        if not isinstance(model, DifferentiableTarget):
            raise TargetError(f"the surrogate '{getattr(model, 'name', spec)}' must be a white-box model "
                              "(PyTorch, TorchScript or a scikit-learn model with a torch twin)")
        if model.n_classes != target.n_classes or tuple(model.input_spec.shape) != tuple(target.input_spec.shape):
            raise TargetError(f"the surrogate has {model.n_classes} classes and inputs {model.input_spec.shape}; "
                              f"the target has {target.n_classes} and {target.input_spec.shape}")
        return model

    # --- crafting --------------------------------------------------------------------------------
    def _attack_batch(self, target: Target, x: np.ndarray, goal: np.ndarray, rows: np.ndarray,
                      run: AttackRun) -> np.ndarray:
        surrogate = self._surrogate(target, run)
        with surrogate.uncounted():
            if self.attack == "pgd" and not self.attack_params:
                return self._momentum_pgd(surrogate, target, x, goal, rows, run)
            inner = get_attack(self.attack, eps=self.eps, norm=self.norm, targeted=self.targeted, seed=self.seed,
                               **self.attack_params)
            if inner.minimal:
                raise ParamError(f"'{self.attack}' is a minimal-perturbation attack; craft transfers with a "
                                 "fixed-ε attack such as pgd or apgd-ce", field="attack")
            sub = run.derive(inner.name)
            inner._begin(sub, surrogate)
            return inner._attack_batch(surrogate, x, goal, rows, sub)

    def _momentum_pgd(self, surrogate: DifferentiableTarget, target: Target, x: np.ndarray, goal: np.ndarray,
                      rows: np.ndarray, run: AttackRun) -> np.ndarray:
        """PGD with momentum on the surrogate, every step run (no early stop), in the target's
        geometry (bounds, per-feature ε scale, immutable features)."""
        import torch

        from bastion.attacks.evasion._torch import (
            Geometry,
            ascent_direction,
            attack_loss,
            project_ball,
            random_start,
            to_tensor,
        )

        dev = surrogate.device
        spec = target.input_spec
        lo, hi = spec.bounds_arrays()
        t = lambda a: torch.as_tensor(np.asarray(a, np.float32), device=dev)  # noqa: E731
        geo = Geometry(t(lo), t(hi), t(spec.scale_array()), t(spec.mutable_mask()))
        x0, y0 = to_tensor(x, dev), to_tensor(goal, dev, torch.long)
        delta = random_start(run.streams(rows, "start"), tuple(x0.shape), self.eps, self.norm, dev) * geo.mask * 0.5
        delta = geo.delta_of(x0, geo.apply(x0, delta))
        g_acc = torch.zeros_like(x0)
        alpha = 2.5 * self.eps / self.steps
        for _ in range(self.steps):
            xa = geo.apply(x0, delta).requires_grad_(True)
            loss = attack_loss(surrogate.logits(xa), y0, "ce", self.targeted).sum()
            (grad,) = torch.autograd.grad(loss, xa)
            g = grad * geo.scale * geo.mask
            g = g / g.flatten(1).abs().sum(1).clamp_min(1e-12).view(-1, *([1] * (g.dim() - 1)))
            g_acc = self.momentum * g_acc + g
            delta = project_ball(delta + alpha * ascent_direction(g_acc, self.norm), self.eps, self.norm)
            delta = geo.delta_of(x0, geo.apply(x0, delta))
        return geo.apply(x0, delta).detach().cpu().numpy()
