"""``bastion.load_model``: the safe loader the rest of bastion uses.

Scans first (:func:`bastion.supply.inspect.scan_paths`) and refuses a file with a finding at or above
``fail_on``; then loads with the restricted loader of each format: PyTorch with
``torch.load(weights_only=True)``, TorchScript with ``torch.jit.load``, scikit-learn through skops
(trusted types vetted against the allow-list), ONNX with an onnxruntime session, NumPy with
``allow_pickle=False``, safetensors by our own header-validated reader. Plain pickles (joblib
files) load only with ``allow_pickle=True``, through an unpickler whose ``find_class`` admits
allow-listed globals only. torch and onnxruntime are imported lazily.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path
from typing import Any

from bastion.core.severity import Severity
from bastion.core.safe_load import load_skops, torch_load_weights
from bastion.errors import TargetError, UnsafeFileError, require
from bastion.supply.config import InspectConfig
from bastion.supply.inspect import InspectResult, scan_paths

log = logging.getLogger(__name__)

_NP_DTYPES = {"BOOL": "?", "U8": "u1", "I8": "i1", "I16": "<i2", "U16": "<u2", "F16": "<f2", "I32": "<i4",
              "U32": "<u4", "F32": "<f4", "F64": "<f8", "I64": "<i8", "U64": "<u8"}


class _AllowListUnpickler(pickle.Unpickler):
    """Unpickler that resolves only globals the policy allows (runtime twin of the static scan)."""

    def __init__(self, fh: Any, config: InspectConfig) -> None:
        super().__init__(fh)
        self._policy = config.policy

    def find_class(self, module: str, name: str) -> Any:
        verdict, reason = self._policy.classify(module, name)
        if verdict != "allow":
            raise UnsafeFileError(f"refusing to load {module}.{name}: it {reason}")
        return super().find_class(module, name)


def _refuse(path: Path, res: InspectResult, fail_on: Severity) -> None:
    if res.errors:
        raise UnsafeFileError(f"{path}: could not be scanned: {res.errors[0].message}")
    if res.failed(fail_on):
        worst = sorted(res.findings, key=lambda f: -f.severity.rank)[0]
        raise UnsafeFileError(
            f"{path}: refusing to load, {worst.severity.value} finding {worst.rule_id}: {worst.title}",
            hint="run 'bastion inspect' on the file for every finding")


def _load_safetensors(path: Path) -> dict[str, Any]:
    import numpy as np

    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
        base = 8 + n
        out: dict[str, Any] = {}
        for name, t in header.items():
            if name == "__metadata__":
                continue
            if t["dtype"] not in _NP_DTYPES:
                torch = require("torch", "torch")
                begin, end = t["data_offsets"]
                fh.seek(base + begin)
                raw = bytearray(fh.read(end - begin))
                dt = {"BF16": torch.bfloat16, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}.get(
                    t["dtype"])
                if dt is None:
                    raise TargetError(f"{path}: tensor {name!r} has dtype {t['dtype']} that cannot be loaded")
                out[name] = torch.frombuffer(raw, dtype=dt).reshape(t["shape"])
                continue
            begin, end = t["data_offsets"]
            fh.seek(base + begin)
            out[name] = np.frombuffer(fh.read(end - begin), dtype=_NP_DTYPES[t["dtype"]]).reshape(t["shape"]).copy()
    return out


def _load_skops(path: Path, config: InspectConfig) -> Any:
    def allowed(type_name: str) -> bool:
        mod, _, name = type_name.rpartition(".")
        return config.policy.classify(mod, name)[0] == "allow"

    return load_skops(path, trust=allowed, trusted_set="the allow-list",
                      hint="review them and add them to the allow-list with --config")


def load_model(path: str | os.PathLike[str], *, config: InspectConfig | None = None,
               fail_on: Severity = Severity.high, allow_pickle: bool = False) -> Any:
    """Scan ``path``, refuse it if a finding reaches ``fail_on``, then load it with a restricted loader.

    Returns a ``torch`` object (state dict, tensors, ScriptModule), an estimator (skops), an
    ``onnxruntime.InferenceSession``, a NumPy array / dict of arrays, or a dict of tensors
    (safetensors). Raises :class:`UnsafeFileError` for files that fail the scan or need an
    unrestricted unpickler, :class:`TargetError` for formats it cannot load.
    """
    cfg = config or InspectConfig()
    p = Path(path)
    if p.is_dir():
        raise TargetError(f"{p} is a directory; pass the model file")
    res = scan_paths([p], config=cfg)
    _refuse(p, res, fail_on)
    formats = res.formats.get(str(p), [])
    kind = formats[0] if formats else "unknown"
    log.info("loading %s as %s", p, kind)
    if kind == "torchscript":
        torch = require("torch", "torch")
        return torch.jit.load(str(p), map_location="cpu")
    if kind == "pytorch-zip":
        return torch_load_weights(p)
    if kind == "onnx":
        ort = require("onnxruntime", "onnx")
        return ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
    if kind == "safetensors":
        return _load_safetensors(p)
    if kind in ("npy", "npz"):
        import numpy as np

        data = np.load(str(p), allow_pickle=False)
        return dict(data) if kind == "npz" else data
    if kind == "zip":
        import zipfile

        with zipfile.ZipFile(p) as zf:
            if "schema.json" in zf.namelist():
                return _load_skops(p, cfg)
    if kind == "pickle":
        with open(p, "rb") as fh:
            head = fh.read(64)
        if b"\x8a\x0a" in head[:8] or head.startswith(b"\x80\x02\x8a\x0a"):   # legacy torch magic number
            return torch_load_weights(p)
        if not allow_pickle:
            raise UnsafeFileError(f"{p} is a plain pickle/joblib file; bastion loads it only with allow_pickle=True",
                                  hint="convert scikit-learn models with skops.io.dump, or pass allow_pickle=True "
                                  "to load through the allow-list unpickler")
        with open(p, "rb") as fh:
            return _AllowListUnpickler(fh, cfg).load()
    raise TargetError(f"{p}: bastion cannot load a '{kind}' file",
                      hint="supported: PyTorch, TorchScript, ONNX, safetensors, NumPy, skops, pickle (opt-in)")
