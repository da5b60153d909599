"""PyTorch and TorchScript targets: white-box, gradients on torch tensors."""

from __future__ import annotations

from typing import Any

import numpy as np

from bastion.core.spec import InputSpec
from bastion.core.targets.base import DifferentiableTarget, OutputKind, looks_like_probabilities
from bastion.errors import TargetError, require


class TorchTarget(DifferentiableTarget):
    """A ``torch.nn.Module`` classifier.

    The target works on its own copy of the module (``copy=True``), in eval mode with frozen
    parameters (``requires_grad=False``) so an attack's backward pass computes input gradients only;
    the caller's module keeps its mode, device and ``requires_grad`` flags. ``copy=False`` uses the
    module itself, for a module nobody else holds (one bastion loaded from a file). ``output`` says
    whether the module returns logits (default) or probabilities; a mismatch found on a probe batch
    is refused with a clear error, and ``output="auto"`` decides from that probe instead.
    """

    kind = "pytorch"

    def __init__(self, module: Any, input_spec: InputSpec, *, classes: list[Any] | None = None,
                 output: OutputKind = "logits", device: str = "cpu", name: str = "",
                 query_budget: int | None = None, copy: bool = True) -> None:
        torch = require("torch", "torch")
        if not isinstance(module, torch.nn.Module):
            raise TargetError(f"expected a torch.nn.Module, got {type(module).__name__}")
        if copy:
            module = _private_copy(module)
        self.module = module.to(device).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.device = device
        probe = self._probe(input_spec)
        if classes is None:
            classes = list(range(probe.shape[1]))
        super().__init__(classes, input_spec, name=name or type(module).__name__, query_budget=query_budget)
        if probe.ndim != 2 or probe.shape[1] != self.n_classes:
            raise TargetError(f"the model returns outputs of shape {tuple(probe.shape)} for a batch of inputs "
                              f"of shape {input_spec.shape}; expected (batch, {self.n_classes})")
        self.output = self._resolve_output(output, probe)

    def _probe(self, spec: InputSpec) -> np.ndarray:
        import torch

        lo, hi = spec.bounds_arrays()
        lo, hi = np.where(np.isfinite(lo), lo, -1.0), np.where(np.isfinite(hi), hi, 1.0)
        rng = np.random.default_rng(0)
        x = (lo + (hi - lo) * rng.random((4, *spec.shape))).astype(np.float32)
        try:
            with torch.no_grad():
                return self.module(torch.from_numpy(x).to(self.device)).double().cpu().numpy()
        except Exception as exc:
            raise TargetError(f"the model failed on a probe batch of shape (4, {', '.join(map(str, spec.shape))}): "
                              f"{type(exc).__name__}: {exc}", hint="check the declared input shape") from exc

    @staticmethod
    def _resolve_output(output: OutputKind, probe: np.ndarray) -> str:
        probs = looks_like_probabilities(probe)
        if output == "auto":
            return "probabilities" if probs else "logits"
        if output == "logits" and probs:
            raise TargetError("the model's outputs are already probabilities (each row sums to 1) but output='logits' "
                              "was declared", hint="declare output='probabilities' (or 'auto')")
        if output == "probabilities" and not probs:
            raise TargetError("output='probabilities' was declared but the model's outputs are not probabilities",
                              hint="declare output='logits' (or 'auto')")
        if output not in ("logits", "probabilities"):
            raise TargetError(f"output must be 'logits', 'probabilities' or 'auto', not {output!r}")
        return output

    def logits(self, x: Any) -> Any:
        import torch

        self.count_queries(int(x.shape[0]))
        out = self.module(x)
        if self.output == "probabilities":
            out = torch.log(out.clamp_min(1e-12))
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "device": self.device, "output": self.output}


def _private_copy(module: Any) -> Any:
    """A deep copy of ``module``, so that eval mode, frozen parameters and the device move never
    reach the caller's model."""
    import copy

    try:
        return copy.deepcopy(module)
    except Exception as exc:
        raise TargetError(f"cannot copy the model ({type(exc).__name__}: {exc}); bastion attacks a private copy so "
                          "that your module's mode and parameters stay as they are",
                          hint="make the module deep-copyable, or pass copy=False to TorchTarget to let bastion "
                               "switch it to eval mode and freeze its parameters in place") from exc


def load_torchscript(path: str, input_spec: InputSpec, **kwargs: Any) -> TorchTarget:
    """Load a TorchScript archive (``torch.jit.save``) as a white-box target on the CPU."""
    torch = require("torch", "torch")
    try:
        module = torch.jit.load(path, map_location="cpu")
    except Exception as exc:
        raise TargetError(f"cannot load TorchScript archive '{path}': {exc}") from exc
    return TorchTarget(module, input_spec, name=kwargs.pop("name", f"torchscript:{path}"), copy=False, **kwargs)
