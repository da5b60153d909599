"""PyTorch and TorchScript targets: white-box, gradients on torch tensors."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from bastion.core.run import seeded_forward
from bastion.core.spec import InputSpec
from bastion.core.targets.base import (
    DifferentiableTarget,
    Target,
    OutputKind,
    as_score_rows,
    check_width,
    probe_batch,
    resolve_output,
)
from bastion.errors import TargetError, require

if TYPE_CHECKING:
    from bastion.core.defense import BPDA


class TorchTarget(DifferentiableTarget):
    """A ``torch.nn.Module`` classifier.

    The target works on its own copy of the module (``copy=True``), in eval mode with frozen
    parameters (``requires_grad=False``) so an attack's backward pass computes input gradients only;
    the caller's module keeps its mode, device and ``requires_grad`` flags. ``copy=False`` uses the
    module itself, for a module nobody else holds (one bastion loaded from a file). ``output`` says
    whether the module returns logits (default) or probabilities; a mismatch found on a probe batch
    is refused with a clear error, and ``output="auto"`` decides from that probe instead.

    ``bpda`` declares a differentiable substitute for a non-differentiable step of the model
    (:class:`bastion.core.defense.BPDA`): white-box attacks take gradients through it
    (``adaptive_view()``), predictions still come from the real model. A model that draws random
    numbers in ``forward`` is seeded from the run during an attack (``bastion.core.run.seeded_forward``).
    """

    kind = "pytorch"

    def __init__(self, module: Any, input_spec: InputSpec, *, classes: list[Any] | None = None,
                 output: OutputKind = "logits", device: str = "cpu", name: str = "",
                 query_budget: int | None = None, copy: bool = True, bpda: BPDA | None = None) -> None:
        torch = require("torch", "torch")
        if not isinstance(module, torch.nn.Module):
            raise TargetError(f"expected a torch.nn.Module, got {type(module).__name__}")
        if copy:
            module = _private_copy(module)
        self.module = module.to(device).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.device = device
        probe = as_score_rows(self._probe(input_spec), source="the model")
        if classes is None:
            classes = list(range(probe.shape[1]))
        super().__init__(classes, input_spec, name=name or type(module).__name__, query_budget=query_budget)
        check_width(probe, self.n_classes, source="the model")
        self.output = resolve_output(output, probe)
        self.bpda = bpda
        if bpda is not None:
            bpda.install(self.module)

    def _probe(self, spec: InputSpec) -> np.ndarray:
        import torch

        x = probe_batch(spec)
        try:
            with torch.no_grad():
                return self.module(torch.from_numpy(x).to(self.device)).double().cpu().numpy()
        except Exception as exc:
            raise TargetError(f"the model failed on a probe batch of shape (4, {', '.join(map(str, spec.shape))}): "
                              f"{type(exc).__name__}: {exc}", hint="check the declared input shape") from exc

    def logits(self, x: Any) -> Any:
        import torch

        self.count_queries(int(x.shape[0]))
        with seeded_forward(self.device):
            out = self.module(x)
        if out.ndim > 2:  # (batch, 1, k) and the like: as_score_rows accepted it on the probe
            out = out.reshape(out.shape[0], -1)
        if self.output == "probabilities":
            out = torch.log(out.clamp_min(1e-12))
        return out

    def with_bpda(self, bpda: BPDA) -> TorchTarget:
        """This model with ``bpda`` declared: a new target on the same module (own query counter)."""
        import copy

        out = copy.copy(self)
        out.queries, out.bpda = 0, bpda
        bpda.install(out.module)
        return out

    def adaptive_view(self) -> Target:
        """With a declared BPDA, the view whose gradients cross the non-differentiable step."""
        if self.bpda is None:
            return self
        from bastion.core.defense import BPDAView

        return BPDAView(self, self.bpda)

    def describe(self) -> dict[str, Any]:
        out = {**super().describe(), "device": self.device, "output": self.output}
        if self.bpda is not None:
            out["bpda"] = self.bpda.describe()
        return out


def _is_torch_save_file(path: str) -> bool:
    """A torch.save zip: ``data.pkl`` without TorchScript's ``constants.pkl`` and ``code/``."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            names = [n.split("/", 1)[-1] for n in z.namelist()]
    except (OSError, zipfile.BadZipFile):
        return False
    return "data.pkl" in names and "constants.pkl" not in names and not any(n.startswith("code/") for n in names)


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
        if _is_torch_save_file(path):
            raise TargetError(
                f"{path} was written by torch.save (a state dict or a pickled module), not torch.jit.save: it is "
                "not a TorchScript archive",
                hint="load it with a python: factory that builds the module and calls "
                     "module.load_state_dict(bastion.core.safe_load.torch_load_weights(path)), or export the model "
                     "with torch.jit.script(model).save(path)") from exc
        raise TargetError(f"cannot load TorchScript archive '{path}': {exc}") from exc
    return TorchTarget(module, input_spec, name=kwargs.pop("name", f"torchscript:{path}"), copy=False, **kwargs)
