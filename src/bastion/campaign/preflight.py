"""Preflight: scan a model file with ``bastion inspect`` before any loader opens it.

Core's loaders cannot call the scanner (a capability sits above core, and core imports no
capability), so the scan-then-load step lives here, in the layer that composes them:
:func:`load_target` is ``bastion.load_target`` and what ``bastion scan`` and ``bastion attack``
call. Which spec names which file comes from the one scheme table,
:mod:`bastion.core.schemes`.
"""

from __future__ import annotations

from typing import Any

from bastion.core.results import Severity
from bastion.core.schemes import model_file
from bastion.core.targets.base import Target
from bastion.errors import UnsafeFileError


def scan_model_file(spec: Any, fail_on: Severity = Severity.high) -> None:
    """Refuse (UnsafeFileError) a model file whose scan finds something at or above ``fail_on``.
    Specs that name no file (demo, python, http, objects) pass; a directory is refused."""
    path = model_file(spec) if isinstance(spec, str) else None
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


def load_target(spec: Any, **kwargs: Any) -> Target:
    """Scan the model file a spec names (see :func:`scan_model_file`), then load it with
    :func:`bastion.core.loader.load_target` (same keyword arguments)."""
    from bastion.core.loader import load_target as load_unscanned

    scan_model_file(spec)
    return load_unscanned(spec, **kwargs)


__all__ = ["load_target", "model_file", "scan_model_file"]
