"""ONNX models run through onnxruntime (black-box: scores only)."""

from __future__ import annotations

from typing import Any

import numpy as np

from bastion.core.spec import InputSpec
from bastion.core.targets.base import Target, looks_like_probabilities
from bastion.errors import TargetError, require


class OnnxTarget(Target):
    """An ONNX classifier. The output used is ``output_name`` or the first float tensor of shape
    (batch, n_classes); ``output`` says whether it holds logits or probabilities ('auto' probes)."""

    kind = "onnx"

    def __init__(self, path: str, input_spec: InputSpec | None = None, *, classes: list[Any] | None = None,
                 output: str = "auto", output_name: str | None = None, name: str = "",
                 query_budget: int | None = None) -> None:
        ort = require("onnxruntime", "onnx")
        try:
            self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise TargetError(f"cannot load ONNX model '{path}': {exc}") from exc
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        if input_spec is None:
            dims = inp.shape[1:]
            if not all(isinstance(d, int) for d in dims):
                raise TargetError(f"the ONNX input '{inp.name}' has a dynamic shape {inp.shape}",
                                  hint="declare the input shape of the target")
            input_spec = InputSpec(shape=tuple(dims), lower=-np.inf, upper=np.inf)
        self.output_name = output_name or self._pick_output()
        probe = self._run(np.zeros((2, *input_spec.shape), np.float32))
        if classes is None:
            classes = list(range(probe.shape[1]))
        super().__init__(classes, input_spec, name=name or f"onnx:{path}", query_budget=query_budget)
        if output == "auto":
            output = "probabilities" if looks_like_probabilities(probe) else "logits"
        if output not in ("probabilities", "logits"):
            raise TargetError(f"output must be 'probabilities', 'logits' or 'auto', not {output!r}")
        self.output = output

    def _pick_output(self) -> str:
        for out in self.session.get_outputs():
            if "tensor(float" in out.type and len(out.shape or []) == 2:
                return out.name
        names = [f"{o.name} ({o.type})" for o in self.session.get_outputs()]
        raise TargetError(f"no float tensor output of shape (batch, classes) among {names}",
                          hint="export the model with probability tensors (for skl2onnx: zipmap=False)")

    def _run(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run([self.output_name], {self.input_name: x})[0], dtype=np.float64)

    def _predict_proba(self, x: np.ndarray) -> np.ndarray:
        out = self._run(x)
        if self.output == "logits":
            out = np.exp(out - out.max(axis=1, keepdims=True))
            out /= out.sum(axis=1, keepdims=True)
        return out
