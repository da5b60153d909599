"""The embedded demo: a small CNN on scikit-learn's digits, an MLP on the breast-cancer table, and an
MLP deliberately overfit on 150 digits (the privacy demo: its training records leak).

Models are trained on first use and cached under the user's cache directory, keyed by a hash of
the recipe, so later runs load in milliseconds. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from bastion.core.data import Dataset
from bastion.core.io import atomic_write_bytes, cache_root
from bastion.core.spec import InputSpec, tabular_spec
from bastion.errors import UsageError

log = logging.getLogger(__name__)

DIGITS_RECIPE = {"model": "digits-cnn", "version": 2, "epochs": 30, "lr": 3e-3, "batch": 64, "seed": 0,
                 "test_size": 0.2, "split_seed": 0, "arch": "conv16-conv32-pool-fc64"}
CANCER_RECIPE = {"model": "breast-cancer-mlp", "version": 1, "hidden": [32], "max_iter": 600, "seed": 0,
                 "test_size": 0.2, "split_seed": 0}
#: the privacy demo: an MLP without regularisation on few records (members); non-members and
#: reference records (for shadow models) are other digits. The policy's trainer repeats the estimator.
PRIVACY_RECIPE = {"model": "digits-mlp", "version": 1, "hidden": [256], "max_iter": 1000, "alpha": 0.0, "seed": 0,
                  "split_seed": 1, "members": 150, "non_members": 400, "reference": 300}
DEMO_TARGETS = ("digits-cnn", "breast-cancer", "digits-mlp")
DEMO_DATA = ("digits", "breast-cancer", "digits-train", "breast-cancer-train", "digits-members", "digits-non-members",
             "digits-reference")


def cache_dir() -> Path:
    return cache_root() / "demo"


def _recipe_key(recipe: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


# --- data -----------------------------------------------------------------------------------------
def _digits_split() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]  # (n, 1, 8, 8) in [0, 1]
    return tuple(train_test_split(x, d.target, test_size=DIGITS_RECIPE["test_size"],
                                  random_state=DIGITS_RECIPE["split_seed"], stratify=d.target))


def _cancer_split() -> tuple[Any, ...]:
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    d = load_breast_cancer()
    parts = train_test_split(d.data.astype(np.float32), d.target, test_size=CANCER_RECIPE["test_size"],
                             random_state=CANCER_RECIPE["split_seed"], stratify=d.target)
    return (*parts, [str(n) for n in d.feature_names], [str(n) for n in d.target_names])


def _privacy_split(part: str) -> tuple[np.ndarray, np.ndarray]:
    """The privacy demo's ``members`` (the MLP's training records), ``non-members`` or ``reference``
    records: disjoint random digits, flattened to 64 features in [0, 1]."""
    from sklearn.datasets import load_digits

    r = PRIVACY_RECIPE
    d = load_digits()
    perm = np.random.default_rng(r["split_seed"]).permutation(len(d.target))
    bounds = np.cumsum([0, r["members"], r["non_members"], r["reference"]])
    i = ("members", "non-members", "reference").index(part)
    idx = perm[bounds[i]:bounds[i + 1]]
    return (d.images[idx] / 16.0).astype(np.float32).reshape(len(idx), -1), d.target[idx]


def demo_data(name: str) -> Dataset:
    """``digits`` / ``breast-cancer``: the held-out test split; ``*-train``: the training split;
    ``digits-members`` / ``-non-members`` / ``-reference``: the privacy demo's records."""
    if name in ("digits-members", "digits-non-members", "digits-reference"):
        x, y = _privacy_split(name.removeprefix("digits-"))
        return Dataset(x, y, name=f"demo:{name}", meta={"kind": "tabular"})
    if name in ("digits", "digits-train"):
        xtr, xte, ytr, yte = _digits_split()
        x, y = (xtr, ytr) if name.endswith("train") else (xte, yte)
        return Dataset(x, y, name=f"demo:{name}", meta={"kind": "image"})
    if name in ("breast-cancer", "breast-cancer-train"):
        xtr, xte, ytr, yte, names, classes = _cancer_split()
        x, y = (xtr, ytr) if name.endswith("train") else (xte, yte)
        return Dataset(x, y, name=f"demo:{name}", feature_names=names,
                       meta={"kind": "tabular", "class_names": {str(i): c for i, c in enumerate(classes)}})
    raise UsageError(f"unknown demo dataset '{name}'; available: {', '.join(DEMO_DATA)}")


# --- models ---------------------------------------------------------------------------------------
def digits_cnn_module() -> Any:
    """The demo CNN architecture (untrained)."""
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10),
    )


def _train_digits_cnn() -> Any:
    from bastion.core.training import TorchTrainingProcedure, TrainRequest, adam

    r = DIGITS_RECIPE
    xtr, _, ytr, _ = _digits_split()
    procedure = TorchTrainingProcedure(model=digits_cnn_module, optimizer=adam(r["lr"]), epochs=r["epochs"],
                                       batch_size=r["batch"])
    return procedure.fit(TrainRequest(xtr, ytr, seed=r["seed"]))


def digits_cnn(**kwargs: Any) -> Any:
    """The trained demo CNN as a TorchTarget (trained once, then loaded from the cache)."""
    import torch

    from bastion.core.targets.torch_target import TorchTarget

    path = cache_dir() / f"digits-cnn-{_recipe_key(DIGITS_RECIPE)}.pt"
    model = digits_cnn_module()
    if path.exists():
        from bastion.core.safe_load import torch_load_weights

        model.load_state_dict(torch_load_weights(path))
    else:
        log.info("training the demo digits CNN (first run only)")
        model = _train_digits_cnn()
        import io

        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        atomic_write_bytes(path, buf.getvalue())
    spec = InputSpec(shape=(1, 8, 8), lower=0.0, upper=1.0, kind="image")
    return TorchTarget(model, spec, classes=list(range(10)), name="demo:digits-cnn", **kwargs)


def _cancer_spec() -> InputSpec:
    xtr, _, _, _, names, _ = _cancer_split()
    return tabular_spec(xtr, names, lower=np.zeros(xtr.shape[1]), upper=xtr.max(axis=0) * 2.0)


def breast_cancer(**kwargs: Any) -> Any:
    """The trained demo MLP pipeline (StandardScaler → MLPClassifier), white-box through its torch twin."""
    from bastion.core.safe_load import load_skops
    from bastion.core.targets.sklearn_target import sklearn_target

    path = cache_dir() / f"breast-cancer-{_recipe_key(CANCER_RECIPE)}.skops"
    if path.exists():
        est = load_skops(path)
    else:
        import skops.io
        from sklearn.neural_network import MLPClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        from bastion.core.training import TrainRequest, fit_estimator

        r = CANCER_RECIPE
        xtr, _, ytr, _, _, _ = _cancer_split()
        est = fit_estimator(make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=tuple(r["hidden"]),
                                                                          max_iter=r["max_iter"])),
                            TrainRequest(xtr, ytr, seed=r["seed"]))
        atomic_write_bytes(path, skops.io.dumps(est))
    return sklearn_target(est, _cancer_spec(), name="demo:breast-cancer", **kwargs)


def privacy_estimator() -> Any:
    """The privacy demo's estimator (untrained): an MLP without weight decay, trained to convergence."""
    from sklearn.neural_network import MLPClassifier

    r = PRIVACY_RECIPE
    return MLPClassifier(hidden_layer_sizes=tuple(r["hidden"]), max_iter=r["max_iter"], alpha=r["alpha"])


def digits_mlp(**kwargs: Any) -> Any:
    """The privacy demo's overfit MLP as a SklearnTarget (trained once, then loaded from the cache)."""
    from bastion.core.safe_load import load_skops
    from bastion.core.targets.sklearn_target import sklearn_target

    path = cache_dir() / f"digits-mlp-{_recipe_key(PRIVACY_RECIPE)}.skops"
    if path.exists():
        est = load_skops(path)
    else:
        import skops.io

        from bastion.core.training import TrainRequest, fit_estimator

        log.info("training the privacy demo MLP (first run only)")
        x, y = _privacy_split("members")
        est = fit_estimator(privacy_estimator(), TrainRequest(x, y, seed=PRIVACY_RECIPE["seed"]))
        atomic_write_bytes(path, skops.io.dumps(est))
    spec = InputSpec(shape=(64,), lower=0.0, upper=1.0)
    return sklearn_target(est, spec, name="demo:digits-mlp", **kwargs)


def demo_target(name: str, **kwargs: Any) -> Any:
    if name == "digits-mlp":
        return digits_mlp(**kwargs)
    if name == "digits-cnn":
        return digits_cnn(**kwargs)
    if name == "breast-cancer":
        return breast_cancer(**kwargs)
    raise UsageError(f"unknown demo model '{name}'; available: {', '.join(DEMO_TARGETS)}")
