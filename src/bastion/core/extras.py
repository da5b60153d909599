"""Which ``pip install 'bastion[EXTRA]'`` provides an optional library.

``pip install bastion`` holds what ``inspect``, ``sign``, ``verify`` and the model registry need;
everything else is an extra. :func:`missing_extra` turns the ImportError of an optional library
into the one-line :class:`~bastion.errors.MissingExtraError` naming the extra to install.
"""

from __future__ import annotations

from bastion.errors import MissingExtraError

# top-level import name -> extra that installs it
EXTRA_FOR_PACKAGE: dict[str, str] = {
    "numpy": "scan",
    "torch": "torch",
    "safetensors": "torch",
    "onnxruntime": "onnx",
    "onnx": "onnx",
    "sklearn": "sklearn",
    "scipy": "sklearn",
    "skops": "sklearn",
    "matplotlib": "reports",
    "jinja2": "reports",
    "PIL": "images",
    "httpx": "http",
    "psycopg": "postgres",
    "py7zr": "formats",
    "h5py": "formats",
    "jsonschema": "schema",
    "pyarrow": "audit",
    "opacus": "dp",
}


def failed_module(exc: ImportError) -> str | None:
    """The top-level module whose import failed: ``exc.name`` for a missing module, else the
    module that raised the ImportError (a library present but broken or blocked)."""
    if exc.name:
        return exc.name.split(".")[0]
    tb = exc.__traceback__
    name = None
    while tb is not None:
        name = tb.tb_frame.f_globals.get("__name__", name)
        tb = tb.tb_next
    return name.split(".")[0] if isinstance(name, str) else None


def missing_extra(exc: ImportError) -> MissingExtraError | None:
    """The install hint for an optional library that failed to import, or None if ``exc`` is
    about anything else (a bug, a user module): those must not be disguised as a missing extra."""
    package = failed_module(exc)
    if package in EXTRA_FOR_PACKAGE:
        return MissingExtraError(package, EXTRA_FOR_PACKAGE[package])
    return None


def require_all(*modules: str) -> None:
    """Import each module or raise one MissingExtraError naming every missing extra at once
    (``bastion demo`` needs several: better one message than one per attempt)."""
    import importlib

    missing: dict[str, str] = {}
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            package = failed_module(exc) or module.split(".")[0]
            missing[package] = EXTRA_FOR_PACKAGE.get(package, "all")
    if missing:
        raise MissingExtraError(", ".join(missing), ",".join(dict.fromkeys(missing.values())))
