"""The one table of model-spec schemes, used by the loader, the pre-load scan and path resolution.

A model spec is ``SCHEME:REST`` (``onnx:model.onnx``, ``python:pkg.mod:factory``), a bare file
path recognised by its suffix (``model.onnx``), or a bare ``http://`` / ``https://`` URL (an HTTP
target). :func:`parse_model_spec` splits a spec, :func:`model_file` says which file a spec opens
(the file ``bastion inspect`` scans before any loader opens it), and :func:`resolve_model_spec`
makes a relative file path relative to a policy's folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from bastion.errors import TargetError, UsageError


@dataclass(frozen=True)
class Scheme:
    """One kind of model spec. ``kind`` says what follows the colon: a file path (``file``), a
    ``module:attr`` reference (``ref``), a URL (``url``) or a name (``name``); ``suffixes`` are the
    file suffixes a bare path is recognised by."""

    name: str
    kind: str
    example: str
    suffixes: tuple[str, ...] = ()


MODEL_SCHEMES: dict[str, Scheme] = {s.name: s for s in (
    Scheme("demo", "name", "demo:digits-cnn"),
    Scheme("python", "ref", "python:pkg.module:factory"),
    Scheme("torchscript", "file", "torchscript:model.pt", (".pt", ".ts")),
    Scheme("onnx", "file", "onnx:model.onnx", (".onnx",)),
    Scheme("sklearn", "file", "sklearn:model.skops", (".skops",)),
    Scheme("http", "url", "https://host/predict"),
)}
_URL = re.compile(r"^https?://", re.IGNORECASE)


def scheme_help() -> str:
    return ", ".join(s.example for s in MODEL_SCHEMES.values())


def parse_model_spec(spec: str) -> tuple[Scheme, str]:
    """``(scheme, rest)`` of a model spec; a UsageError names the schemes when none applies."""
    if not isinstance(spec, str) or not spec.strip():
        raise UsageError("empty model spec", hint=f"write one of: {scheme_help()}")
    if _URL.match(spec):
        return MODEL_SCHEMES["http"], spec
    name, sep, rest = spec.partition(":")
    if sep and name in MODEL_SCHEMES:
        return MODEL_SCHEMES[name], rest
    if sep and len(name) > 1:  # one letter is a Windows drive
        raise UsageError(f"unknown model scheme '{name}' in '{spec}'; use one of: {', '.join(MODEL_SCHEMES)}",
                         hint=f"for example: {scheme_help()}")
    suffix = Path(spec).suffix.lower()
    for scheme in MODEL_SCHEMES.values():
        if suffix and suffix in scheme.suffixes:
            return scheme, spec
    raise UsageError(f"cannot tell what kind of model '{spec}' is",
                     hint=f"prefix it with a scheme: {scheme_help()}")


def model_file(spec: str) -> Path | None:
    """The file a model spec opens, or None for demo, python and http specs. A directory is
    refused here, before a scan walks it or a loader tries it."""
    try:
        scheme, rest = parse_model_spec(spec)
    except UsageError:
        return None  # the loader reports a bad spec in its own words
    if scheme.kind != "file":
        return None
    path = Path(rest)
    if path.is_dir():
        raise TargetError(f"{path} is a directory, not a model file",
                          hint=f"give the model file itself, e.g. {scheme.name}:{path / ('model' + scheme.suffixes[0])}")
    return path


def resolve_model_spec(spec: str, base: Path) -> str:
    """``spec`` with a relative model-file path made relative to ``base`` (a policy's folder)
    when that file exists there; other specs unchanged."""
    if not isinstance(spec, str) or _URL.match(spec):
        return spec
    name, sep, rest = spec.partition(":")
    scheme = MODEL_SCHEMES.get(name) if sep and len(name) > 1 else None
    if sep and len(name) > 1 and (scheme is None or scheme.kind != "file"):
        return spec
    path = rest if scheme else spec
    if Path(path).is_absolute() or not (base / path).exists():
        return spec
    return f"{name}:{base / path}" if scheme else str(base / path)
