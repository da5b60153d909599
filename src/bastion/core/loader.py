"""Turn model and data specs (strings in a policy or on the command line) into Targets and Datasets.

Model specs (the table is :data:`bastion.core.schemes.MODEL_SCHEMES`): ``demo:digits-cnn``,
``demo:breast-cancer``, ``python:pkg.module:factory`` (or ``python:path/file.py:factory``),
``torchscript:model.pt``, ``onnx:model.onnx``, ``sklearn:model.skops``, ``https://host/predict``
or ``http:https://host/predict`` (a JSON prediction API); a bare path is recognised by its suffix.
Pickles are refused.

This loader does not scan model files: core cannot call the scanner (a capability). Use
``bastion.load_target`` (:func:`bastion.campaign.preflight.load_target`), which runs
``bastion inspect`` on the file first, as the CLI does.

Data specs: ``demo:digits``, ``demo:breast-cancer``, ``npz:data.npz`` (arrays x, y),
``npy:x.npy,y.npy``, ``csv:data.csv?label=COLUMN``, ``images:DIR`` (one folder per class),
``python:pkg.module:factory`` returning ``(x, y)`` or a Dataset.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bastion.core import demo
from bastion.core.data import Dataset, load_csv, load_image_folder, load_npy_pair, load_npz
from bastion.core.safe_load import load_skops, refuse_pickle
from bastion.core.schemes import model_file, parse_model_spec
from bastion.core.spec import FeatureSpec, InputSpec, constraints_from_config, tabular_spec
from bastion.core.targets.base import Target
from bastion.errors import BastionError, DataError, TargetError, UsageError

DATA_SCHEMES = ("demo", "npz", "npy", "csv", "images", "python")


def _split(spec: str, schemes: tuple[str, ...], what: str) -> tuple[str, str]:
    if not isinstance(spec, str) or not spec.strip():
        raise UsageError(f"empty {what} spec")
    scheme, sep, rest = spec.partition(":")
    if sep and scheme in schemes:
        return scheme, rest
    if sep and len(scheme) > 1 and scheme not in schemes:
        raise UsageError(f"unknown {what} scheme '{scheme}' in '{spec}'; use one of: {', '.join(schemes)}")
    return "", spec


def import_object(ref: str) -> Any:
    """``pkg.module:attr`` or ``path/to/file.py:attr`` → the attribute (user code, run on purpose)."""
    mod_name, sep, attr = ref.rpartition(":")
    if not sep or not mod_name or not attr:
        raise UsageError(f"'{ref}' is not of the form pkg.module:name or path/file.py:name")
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name)
            if not path.is_file():
                raise UsageError(f"no such Python file: {path}")
            mspec = importlib.util.spec_from_file_location(f"bastion_user_{path.stem}", path)
            assert mspec and mspec.loader
            module = importlib.util.module_from_spec(mspec)
            sys.modules[mspec.name] = module
            mspec.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
    except UsageError:
        raise
    except (Exception, SystemExit) as exc:  # user code: an import that fails or exits is the user's to fix
        raise UsageError(f"cannot import '{mod_name}': {_describe(exc)}") from exc
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise UsageError(f"'{mod_name}' has no attribute '{attr}'") from exc


def call_factory(ref: str) -> Any:
    """Import and call a ``python:`` factory. Its errors are the user's code failing: a UsageError
    naming the factory (never bastion's internal error, never its exit code from ``sys.exit``);
    bastion errors and Ctrl-C pass through."""
    factory = import_object(ref)
    try:
        return factory()
    except (BastionError, KeyboardInterrupt):
        raise
    except (Exception, SystemExit) as exc:
        raise UsageError(f"the factory '{ref}' raised {_describe(exc)}",
                         hint="this is an error in your code: run the factory in Python to see the traceback") \
            from exc


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit (it called sys.exit({exc.code!r}))"
    return f"{type(exc).__name__}: {exc}"


def load_target(spec: Any, *, features: list[dict[str, Any]] | None = None, **kwargs: Any) -> Target:
    """Load the model a spec names (see module docstring). ``spec`` may also be a Target, an
    ``nn.Module`` or a fitted scikit-learn estimator. Shape and bounds default to those of ``data``
    (keyword arguments: input_shape, bounds, classes, output, data, query_budget, and the HTTP
    options for ``http:`` specs). ``features`` adds tabular constraints (see
    :func:`bastion.core.spec.constraints_from_config`)."""
    target = _load_target(spec, **kwargs)
    if features:
        apply_features(target, features, kwargs.get("data"))
    return target


def apply_features(target: Target, features: list[dict[str, Any]], data: Dataset | None = None) -> None:
    """Replace a tabular target's feature specs with the constraints of a policy or API call."""
    spec = target.input_spec
    if len(spec.shape) != 1:
        raise UsageError(f"feature constraints apply to tabular models; this one takes inputs of shape {spec.shape}")
    if spec.features is not None:
        names = [f.name for f in spec.features]
    elif data is not None and data.feature_names:
        names = list(data.feature_names)
    else:
        names = [f"x{i}" for i in range(spec.shape[0])]
    base = spec.features
    if base is None:
        lo, hi = spec.bounds_arrays()
        base = [FeatureSpec(name=n, lower=float(lo[i]), upper=float(hi[i])) for i, n in enumerate(names)]
    specs = constraints_from_config(features, names, base=base, x=data.x if data is not None else None)
    target.input_spec = InputSpec(shape=spec.shape, features=specs, kind="tabular")


def _load_target(spec: Any, *, input_shape: tuple[int, ...] | None = None,
                 bounds: tuple[float, float] | None = None, classes: list[Any] | None = None,
                 output: str | None = None, data: Dataset | None = None, **kwargs: Any) -> Target:
    if isinstance(spec, Target):
        return spec
    if not isinstance(spec, str):
        return wrap_model(spec, input_shape=input_shape, bounds=bounds, classes=classes, output=output,
                          data=data, **kwargs)
    try:
        parsed, rest = parse_model_spec(spec)
    except UsageError:
        refuse_pickle(spec)  # a bare pickle path: say why it is refused, not just "unknown kind"
        raise
    scheme = parsed.name
    if scheme == "demo":
        return _demo_target(rest, input_shape=input_shape, bounds=bounds, classes=classes, output=output,
                            **_target_kwargs(kwargs))
    if scheme == "http":  # http:https://host/predict — options (request_template, ...) as keyword arguments
        from bastion.core.targets.http_target import http_target

        if classes is None and data is not None:
            classes = sorted(np.unique(data.y).tolist())
        ispec = _spec(input_shape, bounds, data, tabular=True) if (input_shape or data is not None) else None
        return http_target(rest, classes=classes, input_spec=ispec, **kwargs)
    if scheme == "python":
        return wrap_model(call_factory(rest), input_shape=input_shape, bounds=bounds, classes=classes,
                          output=output, data=data, name=spec, **kwargs)
    refuse_pickle(rest)
    path = model_file(spec)  # refuses a directory
    if path is None or not path.is_file():
        raise TargetError(f"no such model file: {rest}")
    if scheme == "torchscript":
        from bastion.core.targets.torch_target import load_torchscript

        return load_torchscript(rest, _spec(input_shape, bounds, data), classes=classes,
                                output=output or "logits", **_target_kwargs(kwargs))
    if scheme == "onnx":
        from bastion.core.targets.onnx_target import OnnxTarget

        ispec = _spec(input_shape, bounds, data) if (input_shape or data is not None) else None
        return OnnxTarget(rest, ispec, classes=classes, output=output or "auto", **_target_kwargs(kwargs))
    if scheme == "sklearn":
        from bastion.core.targets.sklearn_target import sklearn_target

        est = load_skops(rest)
        return sklearn_target(est, _spec(input_shape, bounds, data, tabular=True), name=f"sklearn:{rest}",
                              **_target_kwargs(kwargs))
    raise UsageError(f"unsupported model scheme '{scheme}'")  # pragma: no cover


def _demo_target(name: str, *, input_shape: tuple[int, ...] | None, bounds: tuple[float, float] | None,
                 classes: list[Any] | None, output: str | None, **kwargs: Any) -> Target:
    """A demo model, whose shape, bounds and outputs are fixed: a policy value that differs is an
    error naming the field (never silently ignored); ``classes`` of the right length rename them."""
    target = demo.demo_target(name, **kwargs)
    spec, what = target.input_spec, f"demo:{name}"
    if input_shape is not None and tuple(input_shape) != tuple(spec.shape):
        raise UsageError(f"{what} takes inputs of shape {tuple(spec.shape)}, not input_shape {tuple(input_shape)}",
                         hint="remove input_shape (a demo model's shape is fixed)")
    if bounds is not None:
        lo, hi = spec.bounds_arrays()
        if spec.features is not None or not (np.all(lo == bounds[0]) and np.all(hi == bounds[1])):
            have = "per-feature bounds" if spec.features is not None else f"[{lo.flat[0]:g}, {hi.flat[0]:g}]"
            raise UsageError(f"{what} has {have}; bounds {list(bounds)} cannot change them",
                             hint="remove bounds; for a table, narrow features with 'features' constraints")
    actual = getattr(target, "output", "probabilities")
    if output is not None and output not in ("auto", actual):
        raise UsageError(f"{what} returns {actual}, not output='{output}'", hint=f"remove output or set it to {actual}")
    if classes is not None:
        if len(classes) != target.n_classes:
            raise UsageError(f"{what} has {target.n_classes} classes; 'classes' lists {len(classes)}",
                             hint=f"give {target.n_classes} class names, in the order of the model's outputs")
        target.classes = list(classes)
    return target


def _target_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k in ("query_budget", "name", "device")}


def _spec(input_shape: tuple[int, ...] | None, bounds: tuple[float, float] | None, data: Dataset | None,
          tabular: bool = False) -> InputSpec:
    if input_shape is None and data is None:
        raise UsageError("the model's input shape is unknown", hint="give the data (or an input shape) with the model")
    if tabular and data is not None and data.x.ndim == 2 and bounds is None:
        return tabular_spec(data.x, data.feature_names)
    shape = tuple(input_shape) if input_shape else tuple(data.x.shape[1:])  # type: ignore[union-attr]
    kind = "image" if len(shape) >= 2 else "vector"
    if bounds is None:
        if data is not None and data.x.min() >= 0 and data.x.max() <= 1:
            bounds = (0.0, 1.0)
        elif data is not None and kind == "image":  # ε is a fraction of the pixel range: it must be known
            raise DataError(f"image inputs range over [{float(data.x.min()):g}, {float(data.x.max()):g}], not [0, 1]; "
                            "bounds taken from the data would give ε no fixed meaning",
                            hint="scale the images to [0, 1], or declare the pixel range (target.bounds: [0, 255] "
                                 "in a policy, bounds=(0, 255) in Python)")
        elif data is not None:
            bounds = (float(data.x.min()), float(data.x.max()))
        else:
            bounds = (0.0, 1.0)
    return InputSpec(shape=shape, lower=bounds[0], upper=bounds[1], kind=kind)


def wrap_model(model: Any, *, input_shape: tuple[int, ...] | None = None, bounds: tuple[float, float] | None = None,
               classes: list[Any] | None = None, output: str | None = None, data: Dataset | None = None,
               name: str = "", **kwargs: Any) -> Target:
    """Wrap a Python object (Target, nn.Module, sklearn estimator, or callable) as a Target."""
    if isinstance(model, Target):
        return model
    extra = _target_kwargs({**kwargs, "name": name})
    if "torch" in sys.modules:
        import torch

        if isinstance(model, torch.nn.Module):
            from bastion.core.targets.torch_target import TorchTarget

            shape = input_shape or getattr(model, "input_shape", None)
            return TorchTarget(model, _spec(shape, bounds, data), classes=classes, output=output or "logits", **extra)
    if hasattr(model, "predict_proba") and hasattr(model, "fit"):
        from bastion.core.targets.sklearn_target import sklearn_target

        return sklearn_target(model, _spec(input_shape, bounds, data, tabular=True), **extra)
    if callable(model):
        from bastion.core.targets.callable_target import CallableTarget

        if classes is None:
            if data is None:
                raise UsageError("a callable target needs its classes (or data to infer them)")
            classes = sorted(np.unique(data.y).tolist())
        return CallableTarget(model, classes, _spec(input_shape, bounds, data), output=output or "probabilities",
                              **extra)
    raise TargetError(f"cannot use an object of type {type(model).__name__} as a model",
                      hint="return a torch.nn.Module, a fitted scikit-learn classifier, a callable or a bastion Target")


def data_scheme(spec: str) -> str:
    """The scheme of a data spec: its prefix, or what a bare path's suffix (or a folder) says."""
    scheme, rest = _split(spec, DATA_SCHEMES, "data")
    if not scheme:
        suffix = Path(rest.split("?")[0]).suffix.lower()
        scheme = {".npz": "npz", ".csv": "csv"}.get(suffix, "images" if Path(rest).is_dir() else "")
        if not scheme:
            raise UsageError(f"cannot tell what kind of data '{spec}' is",
                             hint=f"prefix it with a scheme: {', '.join(s + ':' for s in DATA_SCHEMES)}")
    return scheme


def load_data(spec: Any, *, limit: int | None = None, seed: int = 0, label: str | None = None,
              image_size: tuple[int, int] | None = None) -> Dataset:
    """Load the data a spec names (see module docstring); ``limit`` keeps a seeded random subset."""
    if isinstance(spec, Dataset):
        return spec.sample(limit, seed)
    if isinstance(spec, tuple) and len(spec) == 2:
        return Dataset(*spec, name="arrays").sample(limit, seed)
    scheme = data_scheme(spec)
    rest = _split(spec, DATA_SCHEMES, "data")[1]
    path, _, query = rest.partition("?")
    params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
    if scheme == "demo":
        ds = demo.demo_data(rest)
    elif scheme == "npz":
        _exists(path)
        ds = load_npz(path)
    elif scheme == "npy":
        parts = path.split(",")
        if len(parts) != 2:
            raise UsageError(f"'{spec}': npy data needs two files, npy:x.npy,y.npy")
        for p in parts:
            _exists(p)
        ds = load_npy_pair(*parts)
    elif scheme == "csv":
        _exists(path)
        lab = label or params.get("label")
        if not lab:
            raise UsageError(f"'{spec}': CSV data needs the name of its label column",
                             hint="write csv:data.csv?label=COLUMN (or --label COLUMN)")
        ds = load_csv(path, lab)
    elif scheme == "images":
        if not Path(path).is_dir():
            raise DataError(f"no such image folder: {path}")
        ds = load_image_folder(path, size=image_size, grayscale=params.get("mode") == "L")
    elif scheme == "python":
        obj = call_factory(rest)
        if isinstance(obj, Dataset):
            ds = obj
        elif isinstance(obj, tuple) and len(obj) == 2:
            ds = Dataset(obj[0], obj[1], name=spec)
        else:
            raise DataError(f"the data factory '{rest}' must return (x, y) or a bastion Dataset")
    else:  # pragma: no cover
        raise UsageError(f"unsupported data scheme '{scheme}'")
    return ds.sample(limit, seed)


def _exists(path: str) -> None:
    if Path(path).is_dir():
        raise DataError(f"{path} is a directory; this data scheme needs one file",
                        hint="name the file (npz:DIR/test.npz), or use images:DIR for one sub-folder per class")
    if not Path(path).is_file():
        raise DataError(f"no such data file: {path}")
