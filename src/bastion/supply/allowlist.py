"""The allow-list policy for pickle globals.

Design follows the allow-list approach of PyTorch's ``weights_only`` unpickler and skops'
trusted types (see ANCHORS.md: deny-lists are bypassed by callables they forgot). Each global a
pickle imports is classified as:

* ``deny``    - a known code-execution, import or indirect-call primitive (critical);
* ``allow``   - a constructor model files legitimately use (no finding);
* ``unknown`` - anything else (suspicious: high when loading calls it, medium otherwise).

Order of precedence: a known-dangerous callable from the public advisories against pickle scanners
(``known_dangerous.yaml``) is always denied; then an exact deny entry; then an exact allow entry,
which wins over a deny rule for its whole module (``torch.serialization._get_layout``; PyTorch's
own ``weights_only`` allow-list, ``torch_weights_only.yaml``, is the reference for torch files);
then module deny rules, name segments and dunders; allow patterns come last, so a broad pattern
(``sklearn.*:[A-Z]*``) can never admit ``sklearn.utils.fixes.Popen`` or
``numpy.testing._private.utils.os``.
"""

from __future__ import annotations

import _compat_pickle
import fnmatch
import functools
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from bastion.errors import PolicyError

Verdict = Literal["allow", "deny", "unknown"]

# Sub-package names that only test helpers live under: never admitted by a pattern.
_UNTRUSTED_MODULE_PARTS = frozenset({"tests", "testing", "_testing", "conftest", "externals", "_vendor"})
# A module root bound by the TorchScript unpickler to scripted classes, not a Python import.
_TORCHSCRIPT_ROOT = "__torch__"

_REASONS: dict[str, str] = {
    "os": "gives access to the operating system (shell commands, files, environment)",
    "posix": "is the OS module under another name",
    "nt": "is the OS module under another name",
    "subprocess": "runs external programs",
    "sys": "reaches the interpreter's modules and state",
    "builtins": "exposes eval/exec/getattr/__import__",
    "pty": "spawns a shell",
    "ctypes": "calls arbitrary native code",
    "importlib": "imports arbitrary modules by name",
    "pkgutil": "resolves arbitrary dotted names to objects (pkgutil.resolve_name)",
    "runpy": "runs Python modules and files",
    "profile": "runs a code string under the profiler",
    "cProfile": "runs a code string under the profiler",
    "pydoc": "locates and imports arbitrary objects by name",
    "timeit": "executes a code string",
    "code": "executes a code string",
    "functools": "builds indirect calls (functools.partial)",
    "operator": "builds attribute-chain and method calls (attrgetter, methodcaller)",
    "pickle": "deserialises a nested payload",
    "_pickle": "deserialises a nested payload",
    "marshal": "deserialises Python bytecode",
    "types": "constructs functions and code objects",
    "pip": "installs and runs packages (pip.main)",
    "torch.utils.collect_env": "runs shell commands (torch.utils.collect_env.run)",
    "torch.load": "deserialises a nested pickle without restrictions",
    "torch.hub": "downloads and runs code",
    "numpy.testing": "contains helpers that execute code strings and processes",
    "numpy.load": "deserialises a nested pickle (allow_pickle)",
}


@dataclass
class Policy:
    """Allow/deny rules for pickle globals (``module.qualname`` strings)."""

    allow: set[str] = field(default_factory=set)
    allow_patterns: list[tuple[str, str]] = field(default_factory=list)
    deny: set[str] = field(default_factory=set)
    deny_segments: set[str] = field(default_factory=set)
    dangerous: set[str] = field(default_factory=set)   # published gadgets: critical even over an allow entry
    # verdicts already computed (model files repeat the same few globals); emptied by extend()
    _verdicts: dict[tuple[str, str, bool], tuple[Verdict, str]] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def default(cls) -> Policy:
        policy = cls()
        for name in _DEFAULT_FILES:
            policy.extend(_default_doc(name), source=name)
        return policy

    def extend(self, doc: dict[str, Any] | None, *, source: str = "<config>") -> None:
        """Add the entries of a parsed allow-list document (keys: allow, allow_patterns, deny, deny_segments,
        dangerous)."""
        if not doc:
            return
        if not isinstance(doc, dict):
            raise PolicyError("the allow-list must be a mapping", file=source)
        unknown = set(doc) - set(_KEYS)
        if unknown:
            raise PolicyError(f"unknown keys {sorted(unknown)}; allowed: {', '.join(_KEYS)}", file=source)
        for key in _KEYS:
            values = doc.get(key) or []
            if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
                raise PolicyError("must be a list of non-empty strings", file=source, field=key)
        self._verdicts.clear()
        self.allow.update(doc.get("allow") or [])
        self.deny.update(doc.get("deny") or [])
        self.deny_segments.update(doc.get("deny_segments") or [])
        self.dangerous.update(doc.get("dangerous") or [])
        for pat in doc.get("allow_patterns") or []:
            mod, sep, name = pat.partition(":")
            if not sep or not mod or not name:
                raise PolicyError(f"pattern '{pat}' must look like 'module_glob:name_glob'",
                                  file=source, field="allow_patterns")
            self.allow_patterns.append((mod, name))

    def classify(self, module: str, name: str, *, torchscript: bool = False) -> tuple[Verdict, str]:
        """Return the verdict for ``module.name`` and a one-line reason.

        Verdicts are cached per policy; change the rules through :meth:`extend`, which empties the cache.
        """
        key = (module, name, torchscript)
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self._verdicts[key] = self._classify(module, name, torchscript)
        return verdict

    def _classify(self, module: str, name: str, torchscript: bool) -> tuple[Verdict, str]:
        module, name = normalise(module, name)
        full = f"{module}.{name}"
        segments = full.split(".")
        if torchscript and segments[0] == _TORCHSCRIPT_ROOT:
            return "allow", "TorchScript class resolved by the TorchScript loader"
        prefixes = [".".join(segments[:i]) for i in range(len(segments), 0, -1)]
        for prefix in prefixes:
            if prefix in self.dangerous:
                return "deny", "is a known code-execution gadget named in public advisories against pickle scanners"
        # an exact deny entry, then an exact allow entry (it wins over a deny rule for a whole module:
        # torch.serialization._get_layout), then deny rules for modules
        if full in self.deny:
            return "deny", _REASONS.get(full, _REASONS.get(segments[0], "is a code-execution primitive"))
        if full in self.allow:
            return "allow", "on the allow-list"
        for prefix in prefixes:
            if prefix in self.deny:
                return "deny", _REASONS.get(prefix, _REASONS.get(segments[0], "is a code-execution primitive"))
        for seg in segments:
            if seg in self.deny_segments:
                return "deny", f"reaches '{seg}' ({_REASONS.get(seg, 'a code-execution primitive')})"
            if len(seg) > 4 and seg.startswith("__") and seg.endswith("__") and seg != "__main__":
                return "deny", f"uses the dunder attribute '{seg}' to reach interpreter internals"
        if "." not in name and not (set(module.split(".")) & _UNTRUSTED_MODULE_PARTS):
            for mod_glob, name_glob in self.allow_patterns:
                if fnmatch.fnmatchcase(module, mod_glob) and fnmatch.fnmatchcase(name, name_glob):
                    return "allow", f"matches allow pattern {mod_glob}:{name_glob}"
        return "unknown", "is not on the allow-list of constructors used by model files"


_KEYS = ("allow", "allow_patterns", "deny", "deny_segments", "dangerous")
# Data files of the default policy: bastion's own lists, torch.load(weights_only=True)'s allow-list (the
# reference for PyTorch files), and the known-dangerous callables of public advisories.
_DEFAULT_FILES = ("default_allowlist.yaml", "torch_weights_only.yaml", "known_dangerous.yaml")


_YAML11_WORDS = {"null", "true", "false", "yes", "no", "on", "off", "y", "n"}  # not strings to PyYAML
_KEY_LINE = re.compile(r"([a-z_]+):")
_ITEM_LINE = re.compile(r"  - (?:\"([^\"\\\\]+)\"|([A-Za-z_][\w.]*))")


def parse_plain_lists(text: str) -> dict[str, list[str]] | None:
    """Parse the YAML subset the default allow-list is written in: comments, ``key:`` lines and
    ``  - item`` lines (dotted names, or double-quoted strings without escapes). Returns None for
    anything else, which then goes to a full YAML parser (importing PyYAML costs more than the scan
    of a small directory). The test suite checks the result equals ``yaml.safe_load``'s."""
    doc: dict[str, list[str]] = {}
    items: list[str] | None = None
    for line in text.splitlines():
        body = line.split(" #", 1)[0].rstrip() if not line.lstrip().startswith("#") else ""
        if not body:
            continue
        m = _KEY_LINE.fullmatch(body)
        if m and m.group(1) not in doc:
            items = doc[m.group(1)] = []
            continue
        m = _ITEM_LINE.fullmatch(body)
        if m is None or items is None or (m.group(2) or "").lower() in _YAML11_WORDS:
            return None
        items.append(m.group(1) or m.group(2))
    return doc if all(doc.values()) else None


@functools.lru_cache(maxsize=None)
def _default_parsed(name: str) -> dict[str, Any]:
    text = resources.files("bastion.supply").joinpath(name).read_text("utf-8")
    doc = parse_plain_lists(text)
    if doc is not None:
        return doc
    import yaml

    # libyaml's safe loader when PyYAML was built with it (about 4x faster), else the pure one
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _default_doc(name: str = "default_allowlist.yaml") -> dict[str, Any]:
    """A parsed default policy file (parsed once per process; a fresh copy each call)."""
    return {k: list(v) for k, v in _default_parsed(name).items()}


def normalise(module: str, name: str) -> tuple[str, str]:
    """Map Python 2 names (``__builtin__``, ``copy_reg``) to the Python 3 ones pickle imports."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    if module in ("__builtin__", "__builtins__"):
        module = "builtins"
    return module, name


def load_policy_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a YAML or TOML allow-list/config file (chosen by extension, YAML otherwise)."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise PolicyError(f"cannot read config file: {exc.strerror}", file=str(p)) from exc
    import tomllib

    import yaml

    try:
        if p.suffix.lower() == ".toml":
            doc = tomllib.loads(raw.decode("utf-8"))
        else:
            doc = yaml.safe_load(raw) or {}
    except (tomllib.TOMLDecodeError, yaml.YAMLError, UnicodeDecodeError) as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        raise PolicyError(f"cannot parse config file: {exc}", file=str(p),
                          line=None if line is None else line + 1) from exc
    if not isinstance(doc, dict):
        raise PolicyError("the config file must contain a mapping", file=str(p))
    return doc


def names(entries: Iterable[str]) -> list[str]:
    return sorted(set(entries))
