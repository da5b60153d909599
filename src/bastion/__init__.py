"""bastion: stress-test machine-learning models against every credible attack.

The top-level API (imported lazily, so ``import bastion`` stays fast)::

    bastion.load_target(spec)       # a Target: the model under test (a model file is scanned first)
    bastion.load_data(spec)         # a Dataset
    bastion.align_labels(data, t)   # labels -> class indices of the target
    bastion.attacks.PGD(eps=0.1)    # attacks, or bastion.attacks.get_attack("pgd")
    bastion.scan(policy)            # run a policy -> ScanResult
    bastion.harden(policy)          # adversarially train a hardened copy -> HardenResult
    bastion.build_variants(target)  # its deployment variants: int8 (PyTorch, ONNX Runtime), distilled, files
    bastion.evaluate_variants(...)  # the model and its variants side by side -> VariantsResult
    bastion.load_model(path)        # scan a model file, then load it safely
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_target": ("bastion.campaign.preflight", "load_target"),
    "load_data": ("bastion.core.loader", "load_data"),
    "align_labels": ("bastion.core.data", "align_labels"),
    "Dataset": ("bastion.core.data", "Dataset"),
    "ThreatModel": ("bastion.core.threat", "ThreatModel"),
    "scan": ("bastion.campaign.runner", "scan"),
    "harden": ("bastion.campaign.harden", "harden"),
    "build_variants": ("bastion.campaign.variants", "build_variants"),
    "evaluate_variants": ("bastion.campaign.variants", "evaluate_variants"),
    "load_policy": ("bastion.campaign.policy", "load_policy"),
    "load_model": ("bastion.supply.loader", "load_model"),
    "ScanResult": ("bastion.core.results", "ScanResult"),
    "Finding": ("bastion.core.results", "Finding"),
}
_SUBMODULES = {"attacks", "core", "campaign", "outputs", "supply", "errors"}

__all__ = ["__version__", *_LAZY, *sorted(_SUBMODULES)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"bastion.{name}")
    raise AttributeError(f"module 'bastion' has no attribute {name!r}")
