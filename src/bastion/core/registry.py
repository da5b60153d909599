"""Lazy registries: one per kind of plug-in (attacks, checks, renderers, defenses, detectors).

A :class:`Registry` maps a name to a reference ``"package.module:attr"``. The module is imported
only when that name is loaded, so listing names imports nothing heavy (no torch to list attacks).
Third-party packages add entries through the entry-point group of the kind, ``bastion.<kind>s``::

    # a plug-in's pyproject.toml
    [project.entry-points."bastion.attacks"]
    my-attack = "my_pkg.attacks:MyAttack"

Use::

    from bastion.core.registry import Registry

    RENDERERS = Registry("renderer", {"roc": "bastion.outputs.report.render:render_roc"})
    "roc" in RENDERERS                 # True; imports nothing
    list(RENDERERS)                    # sorted names, built-ins and plug-ins; imports nothing
    RENDERERS.ref("roc")               # "bastion.outputs.report.render:render_roc"
    RENDERERS["roc"]                   # imports the module once, returns the object
    RENDERERS.get_object("roc")        # same, but an unknown name is a UsageError listing the names
    RENDERERS.add("table", "pkg.mod:render_table")   # a reference, or the object itself
    @RENDERERS.register("histogram")                 # decorator form of add()
    def render_histogram(artifact): ...

A registry is a read-only ``Mapping[str, object]`` (``.items()`` and ``.values()`` import every
entry). Rules:

- a name added twice with different references is a :class:`DuplicateNameError` (exit 2) naming
  both; adding the same reference again is a no-op (a module imported twice);
- an entry point that clashes with a built-in or another plug-in is the same error, raised when the
  registry first reads its entry points;
- loading an entry whose optional library is not installed raises
  :class:`~bastion.errors.MissingExtraError`: one line naming ``pip install 'bastion[extra]'``.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from bastion.errors import UsageError

log = logging.getLogger(__name__)

T = TypeVar("T")
GROUP_PREFIX = "bastion."


class DuplicateNameError(UsageError):
    """Two different objects registered under one name."""


class Registry(Mapping[str, T], Generic[T]):
    """Name -> ``"module:attr"``, imported on first use; extended by the entry-point group
    ``bastion.<kind>s`` (``group`` overrides it). ``kind`` is singular, as in messages ("unknown
    attack 'x'"); ``builtins`` are bastion's own entries."""

    def __init__(self, kind: str, builtins: Mapping[str, str] | None = None, *, group: str | None = None) -> None:
        self.kind = kind
        self.group = group or f"{GROUP_PREFIX}{kind}s"
        self._refs: dict[str, str] = {}
        self._origin: dict[str, str] = {}
        self._loaded: dict[str, T] = {}
        self._plugins_read = False
        self._lock = threading.RLock()
        for name, ref in (builtins or {}).items():
            self._put(name, ref, "bastion")

    # --- adding -----------------------------------------------------------------------------------
    def add(self, name: str, obj: str | T, *, origin: str = "") -> None:
        """Register ``obj`` (a ``"module:attr"`` reference, or the object itself) under ``name``."""
        with self._lock:
            if isinstance(obj, str):
                self._put(name, obj, origin or "add()")
                return
            ref = object_ref(obj)
            self._put(name, ref, origin or getattr(obj, "__module__", "add()"))
            self._loaded[name] = obj

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        def deco(obj: T) -> T:
            self.add(name, obj)
            return obj
        return deco

    def remove(self, name: str) -> None:
        """Forget ``name`` (for tests and interactive use)."""
        with self._lock:
            self._refs.pop(name, None)
            self._origin.pop(name, None)
            self._loaded.pop(name, None)

    def refresh(self) -> None:
        """Read the entry points again (after installing a plug-in in a running interpreter)."""
        with self._lock:
            self._plugins_read = False
            self._read_plugins()

    def _put(self, name: str, ref: str, origin: str) -> None:
        if not isinstance(name, str) or not name.strip():
            raise UsageError(f"a {self.kind} needs a non-empty name, got {name!r}")
        mod, sep, attr = ref.partition(":")
        if not sep or not mod or not attr:
            raise UsageError(f"{self.kind} '{name}' from {origin}: reference '{ref}' is not 'package.module:attr'")
        old = self._refs.get(name)
        if old is not None and old != ref:
            raise DuplicateNameError(
                f"two {self.kind}s named '{name}': '{old}' (from {self._origin[name]}) and '{ref}' (from {origin})",
                hint="rename one of them; names must be unique")
        self._refs[name] = ref
        self._origin.setdefault(name, origin)

    def _read_plugins(self) -> None:
        if self._plugins_read:
            return
        from importlib.metadata import entry_points

        seen: set[tuple[str, str]] = set()
        for ep in entry_points(group=self.group):
            dist = getattr(ep, "dist", None)
            origin = f"entry point '{self.group}' of {dist.name if dist else 'an installed package'}"
            if (ep.name, ep.value) in seen:  # one package visible twice on sys.path
                continue
            seen.add((ep.name, ep.value))
            self._put(ep.name, ep.value, origin)
        self._plugins_read = True

    # --- reading ----------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Every registered name, sorted; imports nothing."""
        with self._lock:
            self._read_plugins()
            return sorted(self._refs)

    def ref(self, name: str) -> str:
        """The ``"module:attr"`` reference of ``name``; imports nothing."""
        self._known(name)
        return self._refs[name]

    def origin(self, name: str) -> str:
        """Where ``name`` came from: ``bastion``, a module, or an entry point and its package."""
        self._known(name)
        return self._origin[name]

    def get_object(self, name: str) -> T:
        """The object registered as ``name``, imported now if needed."""
        self._known(name)
        with self._lock:
            if name not in self._loaded:
                self._loaded[name] = load_ref(self._refs[name], what=f"{self.kind} '{name}'")
            return self._loaded[name]

    def loaded(self) -> dict[str, T]:
        """The entries imported so far (imports nothing more)."""
        with self._lock:
            return dict(self._loaded)

    def _known(self, name: str) -> None:
        if name not in self:
            raise UsageError(f"unknown {self.kind} '{name}'; available: {', '.join(self.names())}")

    def __contains__(self, name: object) -> bool:
        with self._lock:
            self._read_plugins()
            return name in self._refs

    def __getitem__(self, name: str) -> T:
        if name not in self:
            raise KeyError(name)
        return self.get_object(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self)} entries, group={self.group!r})"


def object_ref(obj: Any) -> str:
    """``"module:qualname"`` of a class or function."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not module or not qualname:
        raise UsageError(f"cannot register {obj!r}: it has no module and name; register a 'module:attr' string")
    return f"{module}:{qualname}"


def load_ref(ref: str, *, what: str = "") -> Any:
    """Import ``"module:attr"`` (attr may be dotted). A missing optional library becomes the
    one-line MissingExtraError; a plug-in that fails to import is a UsageError naming it."""
    from bastion.core.extras import missing_extra

    mod_name, _, attr = ref.partition(":")
    label = what or ref
    try:
        obj: Any = importlib.import_module(mod_name)
    except ImportError as exc:
        hint = missing_extra(exc)
        if hint is not None:
            raise hint from exc
        if mod_name.startswith("bastion.") and exc.name is None:
            raise  # a bug inside bastion: let it surface
        raise UsageError(f"{label}: cannot import '{mod_name}': {exc}",
                         hint="is the package that provides it installed?") from exc
    try:
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError as exc:
        raise UsageError(f"{label}: '{mod_name}' has no attribute '{attr}'") from exc
    return obj
