"""Deployment variants of a model: what runs on the edge in place of the model that was tested.

- :func:`torch_int8`: int8 dynamic quantisation of a PyTorch model's ``Linear`` layers
  (``torch.ao.quantization.quantize_dynamic``; weights in int8, activations quantised on the fly,
  Jacob et al. 2018, arXiv:1712.05877);
- :func:`onnx_export`: the model exported to ONNX with torch's TorchScript-based exporter
  (``dynamo=False``: the newer exporter needs ``onnxscript``, which bastion does not install);
- :func:`onnx_int8`: ONNX Runtime dynamic quantisation of an ONNX file
  (``onnxruntime.quantization.quantize_dynamic``, int8 weights).

A quantised model has no usable input gradient: torch's quantised kernels define no backward pass
(autograd silently returns nothing) and ONNX Runtime computes no gradient at all. Attacking such a
variant with its own "gradients" would credit it with robustness it does not have (gradient
masking, Athalye, Carlini & Wagner 2018, arXiv:1802.00420). So a non-differentiable variant is a
:class:`StandInTarget`: predictions come from the variant, and white-box attacks take gradients
through the full-precision model it was made from — BPDA for a whole model, the full model being
the differentiable approximation of its quantised copy.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bastion.core.defense import TargetView, straight_through
from bastion.core.targets.base import DifferentiableTarget, Target
from bastion.errors import TargetError, UsageError, require

if TYPE_CHECKING:
    import torch

    from bastion.core.targets.torch_target import TorchTarget


class StandInTarget(Target):
    """A model without usable gradients (a quantised copy, an ONNX or remote model), attacked through a
    differentiable stand-in. Predictions, the query counter and the budget are the model's own;
    ``adaptive_view()`` gives white-box attacks the model's outputs on the forward pass and the
    stand-in's gradient on the backward pass (BPDA, Athalye et al. 2018)."""

    kind = "stand-in"

    def __init__(self, inner: Target, stand_in: DifferentiableTarget, *, name: str = "") -> None:
        check_compatible(inner, stand_in, what=f"the variant '{name or inner.name}'")
        super().__init__(inner.classes, inner.input_spec, name=name or inner.name)
        self.inner, self.stand_in = inner, stand_in
        self.label_only, self.remote, self.randomized = inner.label_only, inner.remote, inner.randomized

    def _predict_proba(self, x: np.ndarray) -> np.ndarray:
        with self.inner.uncounted():  # counted once, on this target
            return self.inner.predict_proba(x)

    def predict_log_proba(self, x: np.ndarray) -> np.ndarray:
        x = self.input_spec.validate(x)
        self.count_queries(len(x))
        with self.inner.uncounted():
            return self.inner.predict_log_proba(x)

    def adaptive_view(self) -> Target:
        return StandInView(self)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "inner": self.inner.describe(),
                "gradients": f"BPDA: the gradient of '{self.stand_in.name}'"}


class StandInView(TargetView):
    """A :class:`StandInTarget` as white-box attacks see it: the log-probabilities of the real model,
    with the gradient of the stand-in's log-probabilities (straight-through)."""

    kind = "stand-in-view"

    def __init__(self, base: StandInTarget) -> None:
        super().__init__(base, name=f"bpda({base.name} ~ {base.stand_in.name})", device=base.stand_in.device)
        self.stand_in = base.stand_in

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        self.count_queries(int(x.shape[0]))
        base = self.base
        assert isinstance(base, StandInTarget)
        with base.uncounted():
            real = base.predict_log_proba(x.detach().cpu().numpy().astype(np.float32))
        approx = torch.log_softmax(self.stand_in._raw_logits(x), dim=1)
        return straight_through(torch.as_tensor(real, dtype=approx.dtype, device=approx.device), approx)


def check_compatible(variant: Target, full: Target, *, what: str) -> None:
    """Refuse a variant that cannot stand in for ``full``: another number of classes or another input
    shape (a :class:`TargetError`, naming both)."""
    if variant.n_classes != full.n_classes:
        raise TargetError(f"{what} has {variant.n_classes} classes; the model it replaces has {full.n_classes}",
                          hint="a deployment variant must answer the same classes, in the same order")
    if tuple(variant.input_spec.shape) != tuple(full.input_spec.shape):
        raise TargetError(f"{what} takes inputs of shape {tuple(variant.input_spec.shape)}; the model it replaces "
                          f"takes {tuple(full.input_spec.shape)}")


def _torch_target(target: Target, what: str) -> TorchTarget:
    from bastion.core.targets.torch_target import TorchTarget

    if not isinstance(target, TorchTarget):
        raise UsageError(f"{what} needs a PyTorch model; the target '{target.name}' is a {target.kind} model",
                         hint="give the PyTorch model (python: factory or torchscript:), or an ONNX export of it "
                              "as 'onnx' for the ONNX Runtime variant")
    return target


def torch_int8(target: Target, *, name: str = "torch-int8") -> StandInTarget:
    """``target`` (a PyTorch model) with its ``Linear`` layers quantised to int8 by
    ``torch.ao.quantization.quantize_dynamic``, as a :class:`StandInTarget` whose gradients are the
    full model's. The target's module is not changed (a copy is quantised)."""
    import copy

    torch = require("torch", "torch")
    from bastion.core.targets.torch_target import TorchTarget

    full = _torch_target(target, "int8 dynamic quantisation in PyTorch")
    module = copy.deepcopy(full.module).cpu().eval()
    with warnings.catch_warnings():  # torch.ao.quantization's deprecation notice: the API still works
        warnings.simplefilter("ignore")
        qmodel = torch.ao.quantization.quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8)
        inner = TorchTarget(qmodel, full.input_spec, classes=full.classes, output=full.output, name=name, copy=False)
    if not any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in qmodel.modules()):
        raise UsageError(f"the model '{full.name}' has no Linear layer for int8 dynamic quantisation to change",
                         hint="remove torch-int8 from 'quantize'; give your own quantised model in 'models'")
    return StandInTarget(inner, full, name=name)


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's and the quantiser's advice (deprecation warnings, a root-logger hint to
    pre-process the model) for the duration of the block."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def onnx_export(target: Target, path: str | Path) -> Path:
    """Export ``target`` (a PyTorch model) to the ONNX file ``path``, with a dynamic batch axis.
    An export that fails is a :class:`UsageError` that says to give an ONNX export instead."""
    torch = require("torch", "torch")
    require("onnx", "onnx")
    full = _torch_target(target, "the ONNX Runtime variant")
    path = Path(path)
    example = torch.zeros((1, *full.input_spec.shape), dtype=torch.float32, device=full.device)
    try:
        with _quiet():
            torch.onnx.export(full.module, (example,), str(path), dynamo=False, input_names=["input"],
                              output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    except Exception as exc:
        raise UsageError(f"cannot export the model '{full.name}' to ONNX: {type(exc).__name__}: {exc}",
                         hint="export it yourself and give the file as 'onnx: model.onnx' (policy) or "
                              "onnx='model.onnx' (Python)") from exc
    return path


def onnx_int8(source: str | Path, full: Target, out: str | Path, *, name: str = "onnx-int8") -> StandInTarget:
    """The ONNX model ``source`` quantised by ONNX Runtime's ``quantize_dynamic`` (int8 weights) into
    ``out``, as a :class:`StandInTarget` of ``full`` (whose gradients white-box attacks follow)."""
    require("onnx", "onnx")
    quantization = require("onnxruntime.quantization", "onnx")
    from bastion.core.targets.onnx_target import OnnxTarget

    if not isinstance(full, DifferentiableTarget):
        raise UsageError(f"the variants of '{full.name}' are attacked through its gradients; it is a black box")
    try:
        with _quiet():
            quantization.quantize_dynamic(str(source), str(out), weight_type=quantization.QuantType.QInt8)
    except Exception as exc:
        raise TargetError(f"ONNX Runtime cannot quantise '{source}': {type(exc).__name__}: {exc}",
                          hint="give an ONNX file of a classifier with float32 weights") from exc
    inner = OnnxTarget(str(out), full.input_spec, classes=full.classes,
                       output=getattr(full, "output", "auto"), name=name)
    return StandInTarget(inner, full, name=name)
