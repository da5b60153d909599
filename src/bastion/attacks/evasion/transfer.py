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
import weakref
from typing import Any

import numpy as np

from bastion.attacks.base import Attack, AttackResult, ProgressFn, get_attack, register_attack
from bastion.core.targets.base import DifferentiableTarget, Target
from bastion.errors import TargetError, UsageError

log = logging.getLogger(__name__)

# surrogates trained on a target, reused across the ε values of a robustness curve
_CACHE: weakref.WeakKeyDictionary[Target, dict[tuple[Any, ...], DifferentiableTarget]] = weakref.WeakKeyDictionary()


@register_attack
class Transfer(Attack):
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

    def __init__(self, *, eps: float = 0.1, norm: str = "linf", surrogate: Any = None, attack: str = "pgd",
                 attack_params: dict[str, Any] | None = None, steps: int = 50, momentum: float = 0.9,
                 train_queries: int = 2000, augment_rounds: int = 2, augment_step: float = 0.1, epochs: int = 30,
                 targeted: bool = False, batch_size: int = 256, seed: int = 0) -> None:
        super().__init__(eps=eps, norm=norm, targeted=targeted, batch_size=batch_size, seed=seed)
        if steps < 1 or epochs < 1 or augment_rounds < 0 or train_queries < 1:
            raise UsageError("steps, epochs and train_queries must be >= 1 and augment_rounds >= 0")
        if not 0 <= momentum < 1:
            raise UsageError(f"momentum must be in [0, 1), got {momentum}")
        if attack == self.name:
            raise UsageError("the transfer attack cannot craft with itself")
        self.surrogate, self.attack, self.attack_params = surrogate, attack, dict(attack_params or {})
        self.steps, self.momentum = int(steps), float(momentum)
        self.train_queries, self.augment_rounds = int(train_queries), int(augment_rounds)
        self.augment_step, self.epochs = float(augment_step), int(epochs)
        self._pool: np.ndarray | None = None
        self._model: DifferentiableTarget | None = None
        self._info: dict[str, Any] = {}

    def _run(self, target: Target, x: np.ndarray, y: np.ndarray, *, y_target: np.ndarray | None,
             progress: ProgressFn | None, query_budget: int | None) -> AttackResult:
        self._pool, self._model, self._info = target.input_spec.validate(x), None, {}
        res = super()._run(target, x, y, y_target=y_target, progress=progress, query_budget=query_budget)
        if self._model is not None:
            with self._model.uncounted(), target.uncounted():
                sp = self._model.predict_proba(res.x_adv).argmax(1)
            goal = y_target if self.targeted and y_target is not None else res.y
            ok = res.clean_pred == res.y
            fooled_s = (sp == goal) if self.targeted else (sp != res.y)
            self._info["surrogate_success_rate"] = float(fooled_s[ok].mean()) if ok.any() else None
        res.extra["surrogate"] = dict(self._info)
        res.extra.setdefault("notes", []).append(
            f"crafted on a {self._info.get('source', 'surrogate')} surrogate with '{self.attack}'; success is "
            "measured on the target")
        qlog = getattr(target, "query_log", None)
        if isinstance(qlog, dict):
            res.extra["query_log"] = dict(qlog)
        return res

    # --- the surrogate ---------------------------------------------------------------------------
    def _surrogate(self, target: Target) -> DifferentiableTarget:
        if self._model is not None:
            return self._model
        if self.surrogate is not None:
            self._model = self._given(target)
            self._info.update({"source": "given", "name": self._model.name})
            return self._model
        key = (self.seed, self.train_queries, self.augment_rounds, self.augment_step, self.epochs)
        hit = _CACHE.get(target, {}).get(key)
        if hit is not None:
            self._model = hit
            self._info.update(getattr(hit, "_bastion_info", {}), reused=True)
            return hit
        from bastion.attacks.evasion._surrogate import train_surrogate

        assert self._pool is not None
        model, info = train_surrogate(target, self._pool, train_queries=self.train_queries,
                                      augment_rounds=self.augment_rounds, augment_step=self.augment_step,
                                      epochs=self.epochs, seed=self.seed)
        model._bastion_info = info  # type: ignore[attr-defined]
        _CACHE.setdefault(target, {})[key] = model
        self._model = model
        self._info.update(info)
        return model

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
    def _attack_batch(self, target: Target, x: np.ndarray, goal: np.ndarray, rows: np.ndarray) -> np.ndarray:
        surrogate = self._surrogate(target)
        with surrogate.uncounted():
            if self.attack == "pgd" and not self.attack_params:
                return self._momentum_pgd(surrogate, target, x, goal, rows)
            inner = get_attack(self.attack, eps=self.eps, norm=self.norm, targeted=self.targeted, seed=self.seed,
                               **self.attack_params)
            if inner.minimal:
                raise UsageError(f"'{self.attack}' is a minimal-perturbation attack; craft transfers with a "
                                 "fixed-ε attack such as pgd or apgd-ce")
            return inner._attack_batch(surrogate, x, goal, rows)

    def _momentum_pgd(self, surrogate: DifferentiableTarget, target: Target, x: np.ndarray, goal: np.ndarray,
                      rows: np.ndarray) -> np.ndarray:
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
        gen = torch.Generator(device=dev).manual_seed(self.seed + int(rows[0]))
        delta = random_start(tuple(x0.shape), self.eps, self.norm, gen, dev) * geo.mask * 0.5
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
