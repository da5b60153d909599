"""Preflight: scan a model file with ``bastion inspect`` before any loader opens it.

Core's loaders cannot call the scanner (capabilities sit above core), so every interface that
loads a model from a spec — ``bastion scan`` and ``bastion attack`` — runs this first.
"""

from __future__ import annotations

from pathlib import Path

from bastion.core.results import Severity
from bastion.errors import UnsafeFileError

FILE_SCHEMES = ("torchscript", "onnx", "sklearn")
FILE_SUFFIXES = {".pt", ".ts", ".onnx", ".skops"}


def model_file(spec: str) -> Path | None:
    """The file a model spec names, or None for demo/python/http specs."""
    scheme, sep, rest = spec.partition(":")
    if sep and scheme in FILE_SCHEMES:
        return Path(rest)
    if (not sep or len(scheme) == 1) and Path(spec).suffix.lower() in FILE_SUFFIXES:
        return Path(spec)
    return None


def scan_model_file(spec: str, fail_on: Severity = Severity.high) -> None:
    """Refuse (UnsafeFileError) a model file whose scan finds something at or above ``fail_on``."""
    path = model_file(spec)
    if path is None or not path.exists():
        return  # the loader reports a missing file in its own words
    from bastion.supply.inspect import scan_paths

    result = scan_paths([path])
    if result.errors:
        raise UnsafeFileError(f"{path}: the model file could not be scanned ({result.errors[0].message})",
                              hint=f"run 'bastion inspect {path}' for details")
    if result.failed(fail_on):
        worst = max(result.findings, key=lambda f: f.severity.rank)
        raise UnsafeFileError(f"{path}: refusing to load the model — {worst.title} ({worst.severity.value})",
                              hint=f"run 'bastion inspect {path}' for every finding")
