"""ONNX models run through onnxruntime (black-box: scores only)."""

from __future__ import annotations

from typing import Any

import numpy as np

from bastion.core.spec import InputSpec
from bastion.core.targets.base import Target, as_score_rows, check_width, resolve_output
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
        dims = list(inp.shape or [])
        # a model exported with a fixed batch size (often 1) is run in batches of exactly that size
        self.fixed_batch = dims[0] if dims and isinstance(dims[0], int) and dims[0] > 0 else None
        if input_spec is None:
            if not dims or not all(isinstance(d, int) for d in dims[1:]):
                raise TargetError(f"the ONNX input '{inp.name}' has a dynamic shape {inp.shape}",
                                  hint="declare the input shape of the target")
            input_spec = InputSpec(shape=tuple(dims[1:]), lower=-np.inf, upper=np.inf)
        _check_rank(path, inp.name, dims, tuple(input_spec.shape))
        self.output_name = output_name or self._pick_output()
        try:
            probe = as_score_rows(self._run(np.zeros((2, *input_spec.shape), np.float32)),
                                  source=f"the ONNX model '{path}'")
        except TargetError:
            raise
        except Exception as exc:
            raise TargetError(f"the ONNX model '{path}' failed on a probe batch of shape {(2, *input_spec.shape)}: "
                              f"{type(exc).__name__}: {exc}",
                              hint="check the input shape and dtype the model was exported with") from exc
        if classes is None:
            classes = list(range(probe.shape[1]))
        super().__init__(classes, input_spec, name=name or f"onnx:{path}", query_budget=query_budget)
        check_width(probe, self.n_classes, source=f"the ONNX model '{path}'")
        self.output = resolve_output(output, probe)

    def _pick_output(self) -> str:
        for out in self.session.get_outputs():
            shape = out.shape or []
            if "tensor(float" in out.type and len(shape) >= 2 and sum(d != 1 for d in shape[1:]) <= 1:
                return out.name
        names = [f"{o.name} ({o.type})" for o in self.session.get_outputs()]
        raise TargetError(f"no float tensor output of shape (batch, classes) among {names}",
                          hint="export the model with probability tensors (for skl2onnx: zipmap=False)")

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self.fixed_batch is None:
            return self._run_batch(x)
        n, b = len(x), self.fixed_batch
        pad = (-n) % b
        if pad:  # fill the last batch with copies of its first row; their outputs are dropped
            x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
        out = np.concatenate([self._run_batch(x[i:i + b]) for i in range(0, len(x), b)])
        return out[:n]

    def _run_batch(self, x: np.ndarray) -> np.ndarray:
        out = np.asarray(self.session.run([self.output_name], {self.input_name: x})[0], dtype=np.float64)
        return out.reshape(out.shape[0], -1) if out.ndim > 2 else out

    def _predict_proba(self, x: np.ndarray) -> np.ndarray:
        out = self._run(x)
        if self.output == "logits":
            out = np.exp(out - out.max(axis=1, keepdims=True))
            out /= out.sum(axis=1, keepdims=True)
        return out


def _check_rank(path: str, name: str, dims: list[Any], shape: tuple[int, ...]) -> None:
    """Refuse data whose per-sample shape cannot fit the ONNX input, naming both shapes."""
    if not dims:
        return
    want = dims[1:]
    fixed_ok = all(not isinstance(w, int) or w == s for w, s in zip(want, shape))
    if len(want) != len(shape) or not fixed_ok:
        shown = ["batch", *("?" if not isinstance(w, int) else str(w) for w in want)]
        raise TargetError(f"the ONNX model '{path}' takes input '{name}' of shape ({', '.join(shown)}), but the "
                          f"inputs have per-sample shape {shape}",
                          hint="reshape the data to the model's input shape (e.g. add or drop a channel axis), "
                               "or declare input_shape to match the model")
