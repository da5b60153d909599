"""The embedded demo: a small CNN on scikit-learn's digits and an MLP on the breast-cancer table.

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
from bastion.core.io import atomic_write_bytes
from bastion.core.spec import InputSpec, tabular_spec
from bastion.errors import UsageError

log = logging.getLogger(__name__)

DIGITS_RECIPE = {"model": "digits-cnn", "version": 2, "epochs": 30, "lr": 3e-3, "batch": 64, "seed": 0,
                 "test_size": 0.2, "split_seed": 0, "arch": "conv16-conv32-pool-fc64"}
CANCER_RECIPE = {"model": "breast-cancer-mlp", "version": 1, "hidden": [32], "max_iter": 600, "seed": 0,
                 "test_size": 0.2, "split_seed": 0}
DEMO_TARGETS = ("digits-cnn", "breast-cancer")
DEMO_DATA = ("digits", "breast-cancer", "digits-train", "breast-cancer-train")


def cache_dir() -> Path:
    import os

    from platformdirs import user_cache_dir

    return Path(os.environ.get("BASTION_CACHE_DIR") or user_cache_dir("bastion")) / "demo"


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


def demo_data(name: str) -> Dataset:
    """``digits`` / ``breast-cancer``: the held-out test split; ``*-train``: the training split."""
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


def demo_target(name: str, **kwargs: Any) -> Any:
    if name == "digits-cnn":
        return digits_cnn(**kwargs)
    if name == "breast-cancer":
        return breast_cancer(**kwargs)
    raise UsageError(f"unknown demo model '{name}'; available: {', '.join(DEMO_TARGETS)}")
