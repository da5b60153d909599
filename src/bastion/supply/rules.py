"""The model-file scanner's rules (stable ids ``BASTION-SC-*``), registered in the catalogue of
:mod:`bastion.core.rules`, and :class:`ScanFinding`, what the scanner records for a hit.

The scanner works without pydantic (``bastion inspect`` starts fast): a hit is a plain
:class:`ScanFinding`, turned into a :class:`bastion.core.results.Finding` of its catalogue rule only
where a report needs one (:meth:`ScanFinding.to_finding`). The catalogue's pydantic
:class:`~bastion.core.rules.Rule` objects are built from :data:`_TABLE` the first time a
``BASTION-SC-`` id is looked up."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bastion.core.severity import Severity

if TYPE_CHECKING:
    from bastion.core.results import Finding
    from bastion.core.rules import Rule

CHECK_NAME = "inspect"
_THREAT, _NIST = "supply-chain", "Manage"
_HELP = ("bastion inspect reads model files without loading them; see docs/inspect.md for what each format can "
         "hide and how the scanner finds it.")

#: Every scanner rule: id -> (title, remediation).
_TABLE: dict[str, tuple[str, str]] = {rule_id: (title, remediation) for rule_id, title, remediation in [
    ("BASTION-SC-001", "Pickle imports a code-execution primitive",
     "Do not load this file. Obtain the model from a trusted source, or as safetensors/ONNX."),
    ("BASTION-SC-002", "Pickle calls a constructor outside the allow-list",
     "Load only if you trust the class; add it to the allow-list (docs/inspect.md) once reviewed, "
     "or re-export the weights as safetensors."),
    ("BASTION-SC-003", "Pickle references a global outside the allow-list",
     "Review the global; add it to the allow-list if it is a known-safe class."),
    ("BASTION-SC-004", "Pickle makes an indirect or dynamic call",
     "Do not load this file: it computes what to import or call while loading."),
    ("BASTION-SC-005", "Pickle contains a nested serialised payload",
     "Do not load this file: a payload inside the payload hides from scanners."),
    ("BASTION-SC-006", "Pickle uses the copyreg extension registry",
     "Do not load this file: extension codes resolve globals out of sight."),
    ("BASTION-SC-007", "Malformed or truncated serialised data",
     "Re-download the file; a loader may behave unpredictably on malformed input."),
    ("BASTION-SC-008", "Resource limit exceeded: file not fully analysed",
     "Treat the file as unsafe, or raise the limit in the inspect config if the file is trusted."),
    ("BASTION-SC-010", "Archive structure anomaly",
     "Do not load this file: archive readers disagree on its content (zip header tricks)."),
    ("BASTION-SC-011", "Archive member path or link escapes the archive",
     "Do not extract or load this archive."),
    ("BASTION-SC-020", "Keras config runs code (Lambda layer or module reference)",
     "Load Keras models with safe_mode=True and without custom objects you have not reviewed."),
    ("BASTION-SC-030", "External data leaves the model directory (ONNX, HDF5)",
     "Do not load this model: external data paths must stay inside the model directory."),
    ("BASTION-SC-031", "ONNX model uses a custom operator domain",
     "Custom operators need a native library; load only with a reviewed custom-op library."),
    ("BASTION-SC-040", "Invalid safetensors header",
     "Re-export the file; invalid offsets or sizes target parser bugs."),
    ("BASTION-SC-050", "Format not fully analysed",
     "Review the file by other means, or convert it to a format bastion can analyse."),
    ("BASTION-SC-060", "Symbolic or hard link in a model directory",
     "Replace links by real files inside the model directory."),
    ("BASTION-SC-070", "NumPy array stores Python objects (pickle inside)",
     "Store numeric arrays only; object arrays need allow_pickle=True to load."),
]}


def __getattr__(name: str) -> Any:
    """``CATALOGUE``: the rules as pydantic :class:`~bastion.core.rules.Rule` objects, built on first use
    (the catalogue of :mod:`bastion.core.rules` imports it when a BASTION-SC- id is first looked up)."""
    if name == "CATALOGUE":
        from bastion.core.rules import Rule

        catalogue = [Rule(id=rule_id, title=title, threat=_THREAT, nist=_NIST, remediation=remediation, help=_HELP)
                     for rule_id, (title, remediation) in _TABLE.items()]
        globals()["CATALOGUE"] = catalogue
        return catalogue
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


@dataclass(eq=True)
class ScanFinding:
    """One hit of the scanner: the fields of a :class:`~bastion.core.results.Finding` that the scan
    fills in (the rest comes from the rule's catalogue entry), without pydantic."""

    rule_id: str
    title: str
    severity: Severity
    description: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    location: str | None = None
    offset: int | None = None
    check: str = CHECK_NAME

    @property
    def remediation(self) -> str:
        return _TABLE[self.rule_id][1]

    @property
    def nist(self) -> str:
        return _NIST

    @property
    def atlas(self) -> list[str]:
        from bastion.core.threatmap import THREATS

        return list(THREATS[_THREAT].atlas)

    @property
    def owasp(self) -> list[str]:
        from bastion.core.threatmap import THREATS

        return list(THREATS[_THREAT].owasp)

    def to_finding(self) -> Finding:
        """The typed :class:`~bastion.core.results.Finding` of the catalogue rule, for reports."""
        from bastion.core.rules import get_rule

        return get_rule(self.rule_id).finding(title=self.title, severity=self.severity, check=self.check,
                                              description=self.description, metrics=self.metrics,
                                              location=self.location, offset=self.offset)


def make_finding(rule_id: str, severity: Severity, title: str, *, location: str | None,
                 offset: int | None = None, description: str = "", **metrics: Any) -> ScanFinding:
    """A hit of ``rule_id`` (text made valid UTF-8: file and member names, and names read from the scanned
    data, may not be)."""
    return ScanFinding(rule_id, safe_text(title), severity, safe_text(description or _TABLE[rule_id][0]),
                       {k: safe_text(v) if isinstance(v, str) else v for k, v in metrics.items() if v is not None},
                       None if location is None else safe_text(location), offset)
