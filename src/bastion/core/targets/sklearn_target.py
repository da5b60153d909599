"""scikit-learn targets: any estimator with ``predict_proba``; exact torch twins for linear and
MLP pipelines make those white-box."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from bastion.core.spec import InputSpec
from bastion.core.targets.base import DifferentiableTarget, Target, probe_batch
from bastion.errors import TargetError

log = logging.getLogger(__name__)


class SklearnTarget(Target):
    """A fitted scikit-learn classifier, queried through ``predict_proba`` (black-box)."""

    kind = "sklearn"

    def __init__(self, estimator: Any, input_spec: InputSpec, *, name: str = "",
                 query_budget: int | None = None) -> None:
        if not hasattr(estimator, "predict_proba"):
            raise TargetError(f"{type(estimator).__name__} has no predict_proba",
                              hint="use a probabilistic classifier, or wrap it with CalibratedClassifierCV")
        classes = list(getattr(estimator, "classes_", []))
        super().__init__(classes, input_spec, name=name or _estimator_name(estimator), query_budget=query_budget)
        _check_n_features(estimator, input_spec, self.name)
        self.estimator = estimator

    def _predict_proba(self, x: np.ndarray) -> np.ndarray:
        return self.estimator.predict_proba(x.reshape(len(x), -1))


class DifferentiableSklearnTarget(DifferentiableTarget, SklearnTarget):
    """A scikit-learn pipeline of scalers and a LogisticRegression or MLPClassifier, with an exact
    torch twin so gradient attacks run white-box. Built by :func:`sklearn_target`."""

    kind = "sklearn"

    def __init__(self, estimator: Any, input_spec: InputSpec, forward: Any, **kwargs: Any) -> None:
        SklearnTarget.__init__(self, estimator, input_spec, **kwargs)
        self._forward = forward

    def logits(self, x: Any) -> Any:
        self.count_queries(int(x.shape[0]))
        return self._forward(x.reshape(x.shape[0], -1))

    def _predict_proba(self, x: np.ndarray) -> np.ndarray:
        return SklearnTarget._predict_proba(self, x)


def sklearn_target(estimator: Any, input_spec: InputSpec, **kwargs: Any) -> SklearnTarget:
    """Wrap an estimator; white-box when a verified torch twin exists, black-box otherwise."""
    _check_n_features(estimator, input_spec, kwargs.get("name") or _estimator_name(estimator))
    forward = _torch_twin(estimator)
    if forward is not None and _twin_matches(estimator, forward, input_spec):
        return DifferentiableSklearnTarget(estimator, input_spec, forward, **kwargs)
    return SklearnTarget(estimator, input_spec, **kwargs)


def _check_n_features(estimator: Any, spec: InputSpec, name: str) -> None:
    """Refuse inputs with another number of features than the estimator was fitted on."""
    n_in, n_data = getattr(estimator, "n_features_in_", None), int(np.prod(spec.shape))
    if n_in is not None and int(n_in) != n_data:
        raise TargetError(f"{name} was fitted on {int(n_in)} features but the inputs have {n_data} "
                          f"(per-sample shape {tuple(spec.shape)})",
                          hint="give data with the same columns, in the same order, as the model's training data")


def _estimator_name(est: Any) -> str:
    steps = getattr(est, "steps", None)
    if steps:
        return " → ".join(type(s).__name__ for _, s in steps)
    return type(est).__name__


def _torch_twin(estimator: Any) -> Any | None:
    """A torch function computing the estimator's logits, or None if a step is not supported."""
    try:
        import torch
    except ImportError:
        return None
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    steps = [s for _, s in estimator.steps] if hasattr(estimator, "steps") else [estimator]
    layers: list[Any] = []
    for step in steps[:-1]:
        if isinstance(step, StandardScaler):
            mean = torch.tensor(step.mean_ if step.with_mean else 0.0, dtype=torch.float32)
            scale = torch.tensor(step.scale_ if step.with_std else 1.0, dtype=torch.float32)
            layers.append(lambda z, m=mean, s=scale: (z - m) / s)
        elif isinstance(step, MinMaxScaler):
            mul, add = torch.tensor(step.scale_, dtype=torch.float32), torch.tensor(step.min_, dtype=torch.float32)
            layers.append(lambda z, m=mul, a=add: z * m + a)
        elif step == "passthrough" or step is None:
            continue
        else:
            return None
    final = steps[-1]
    if isinstance(final, LogisticRegression):
        w = torch.tensor(final.coef_, dtype=torch.float32)
        b = torch.tensor(final.intercept_, dtype=torch.float32)
        if w.shape[0] == 1:
            layers.append(lambda z, w=w, b=b: torch.cat([torch.zeros_like(z[:, :1]), z @ w.T + b], dim=1))
        else:
            layers.append(lambda z, w=w, b=b: z @ w.T + b)
    elif isinstance(final, MLPClassifier):
        acts = {"relu": torch.relu, "tanh": torch.tanh, "logistic": torch.sigmoid, "identity": lambda t: t}
        hidden = acts[final.activation]
        ws = [torch.tensor(c, dtype=torch.float32) for c in final.coefs_]
        bs = [torch.tensor(c, dtype=torch.float32) for c in final.intercepts_]
        binary = final.out_activation_ == "logistic"

        def mlp(z: Any, ws: list[Any] = ws, bs: list[Any] = bs) -> Any:
            for i, (w, b) in enumerate(zip(ws, bs)):
                z = z @ w + b
                if i < len(ws) - 1:
                    z = hidden(z)
            return torch.cat([torch.zeros_like(z), z], dim=1) if binary else z

        layers.append(mlp)
    else:
        return None

    def forward(z: Any) -> Any:
        for layer in layers:
            z = layer(z)
        return z

    return forward


def _twin_matches(estimator: Any, forward: Any, spec: InputSpec) -> bool:
    import torch

    x = probe_batch(spec, 16)
    want = estimator.predict_proba(x.reshape(16, -1))
    with torch.no_grad():
        got = torch.softmax(forward(torch.from_numpy(x.reshape(16, -1))), dim=1).double().numpy()
    ok = got.shape == want.shape and np.abs(got - want).max() < 1e-4
    if not ok:
        log.info("torch twin of %s does not match predict_proba; using it as a black box", type(estimator).__name__)
    return bool(ok)
