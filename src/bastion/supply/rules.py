"""The model-file scanner's rules (stable ids ``BASTION-SC-*``), registered in the catalogue of
:mod:`bastion.core.rules`, and the helper that turns a hit into a Finding."""

from __future__ import annotations

from typing import Any

from bastion.core.results import Finding, Severity
from bastion.core.rules import Rule

CHECK_NAME = "inspect"


def _rule(rule_id: str, title: str, remediation: str) -> Rule:
    return Rule(id=rule_id, title=title, threat="supply-chain", nist="Manage", remediation=remediation,
                help="bastion inspect reads model files without loading them; see docs/inspect.md for what "
                     "each format can hide and how the scanner finds it.")


#: Every scanner rule (the catalogue imports this list when a BASTION-SC- id is first looked up).
CATALOGUE: list[Rule] = [
    _rule("BASTION-SC-001", "Pickle imports a code-execution primitive",
          "Do not load this file. Obtain the model from a trusted source, or as safetensors/ONNX."),
    _rule("BASTION-SC-002", "Pickle calls a constructor outside the allow-list",
          "Load only if you trust the class; add it to the allow-list (docs/inspect.md) once reviewed, "
          "or re-export the weights as safetensors."),
    _rule("BASTION-SC-003", "Pickle references a global outside the allow-list",
          "Review the global; add it to the allow-list if it is a known-safe class."),
    _rule("BASTION-SC-004", "Pickle makes an indirect or dynamic call",
          "Do not load this file: it computes what to import or call while loading."),
    _rule("BASTION-SC-005", "Pickle contains a nested serialised payload",
          "Do not load this file: a payload inside the payload hides from scanners."),
    _rule("BASTION-SC-006", "Pickle uses the copyreg extension registry",
          "Do not load this file: extension codes resolve globals out of sight."),
    _rule("BASTION-SC-007", "Malformed or truncated serialised data",
          "Re-download the file; a loader may behave unpredictably on malformed input."),
    _rule("BASTION-SC-008", "Resource limit exceeded: file not fully analysed",
          "Treat the file as unsafe, or raise the limit in the inspect config if the file is trusted."),
    _rule("BASTION-SC-010", "Archive structure anomaly",
          "Do not load this file: archive readers disagree on its content (zip header tricks)."),
    _rule("BASTION-SC-011", "Archive member path or link escapes the archive",
          "Do not extract or load this archive."),
    _rule("BASTION-SC-020", "Keras config runs code (Lambda layer or module reference)",
          "Load Keras models with safe_mode=True and without custom objects you have not reviewed."),
    _rule("BASTION-SC-030", "External data leaves the model directory (ONNX, HDF5)",
          "Do not load this model: external data paths must stay inside the model directory."),
    _rule("BASTION-SC-031", "ONNX model uses a custom operator domain",
          "Custom operators need a native library; load only with a reviewed custom-op library."),
    _rule("BASTION-SC-040", "Invalid safetensors header",
          "Re-export the file; invalid offsets or sizes target parser bugs."),
    _rule("BASTION-SC-050", "Format not fully analysed",
          "Review the file by other means, or convert it to a format bastion can analyse."),
    _rule("BASTION-SC-060", "Symbolic or hard link in a model directory",
          "Replace links by real files inside the model directory."),
    _rule("BASTION-SC-070", "NumPy array stores Python objects (pickle inside)",
          "Store numeric arrays only; object arrays need allow_pickle=True to load."),
]
RULES: dict[str, Rule] = {r.id: r for r in CATALOGUE}


def safe_text(s: str) -> str:
    """``s`` as valid UTF-8 text for reports: the bytes of an undecodable file name (surrogate escapes)
    shown as ``\\xNN``, any other lone surrogate as ``\\uNNNN``; valid text is returned unchanged."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        pass
    try:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return s.encode("utf-8", "backslashreplace").decode("utf-8")


def make_finding(rule_id: str, severity: Severity, title: str, *, location: str | None,
                 offset: int | None = None, description: str = "", **metrics: Any) -> Finding:
    """Build a Finding for ``rule_id`` with the supply-chain ATLAS/OWASP ids (text made valid UTF-8:
    file and member names, and names read from the scanned data, may not be)."""
    rule = RULES[rule_id]
    return rule.finding(title=safe_text(title), severity=severity, check=CHECK_NAME,
                        description=safe_text(description or rule.title),
                        metrics={k: safe_text(v) if isinstance(v, str) else v for k, v in metrics.items()
                                 if v is not None},
                        location=None if location is None else safe_text(location), offset=offset)
