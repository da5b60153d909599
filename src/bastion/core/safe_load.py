"""Loading model files without executing them: skops with vetted types, torch weights only,
and a clear refusal for pickles."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bastion.errors import TargetError, UnsafeFileError, require

PICKLE_SUFFIXES = {".pkl", ".pickle", ".joblib", ".sav", ".dill", ".cloudpickle"}
TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.", "builtins.", "collections.")


def refuse_pickle(path: str | Path) -> None:
    """Raise UnsafeFileError for pickle-based files: loading them can execute arbitrary code."""
    p = Path(path)
    if p.suffix.lower() in PICKLE_SUFFIXES:
        raise UnsafeFileError(
            f"{p}: refusing to load a pickle/joblib file — unpickling can execute arbitrary code",
            hint="save scikit-learn models with skops (skops.io.dump) and load them as 'sklearn:model.skops'; "
                 "for PyTorch use TorchScript, ONNX, or a state dict with a python: factory; "
                 "run 'bastion inspect FILE' to see what the pickle would do")


def load_skops(path: str | Path, *, trust: Callable[[str], bool] | None = None,
               trusted_set: str = "scikit-learn/NumPy/SciPy",
               hint: str = "review these types; load the file yourself with skops only if you trust them") -> Any:
    """Load a skops file, trusting only the types ``trust`` accepts (default: scikit-learn, NumPy,
    SciPy and the standard containers); anything else is refused with the list of untrusted types.
    ``trusted_set`` names the trusted types in that message."""
    sio = require("skops.io", "sklearn")
    p = Path(path)
    if not p.is_file():
        raise TargetError(f"{p}: no such model file")
    try:
        untrusted = sio.get_untrusted_types(file=p)
    except Exception as exc:
        raise TargetError(f"{p}: not a valid skops file: {exc}") from exc
    trust = trust or (lambda name: name.startswith(TRUSTED_PREFIXES))
    refused = [t for t in untrusted if not trust(t)]
    if refused:
        raise UnsafeFileError(f"{p}: the skops file references types outside {trusted_set}: {', '.join(refused)}",
                              hint=hint)
    return sio.load(p, trusted=untrusted)


def torch_load_weights(path: str | Path) -> Any:
    """``torch.load`` with ``weights_only=True``: tensors and plain containers only."""
    torch = require("torch", "torch")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UnsafeFileError(f"{path}: cannot be loaded as weights only ({exc})",
                              hint="it may contain code; run 'bastion inspect' on it") from exc
