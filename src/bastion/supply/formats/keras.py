"""Keras model configs (``.keras`` zip config.json, legacy HDF5 ``model_config``, model JSON).

Keras runs code from a config through Lambda layers (marshalled Python bytecode) and through
``module``/``class_name`` references that import arbitrary callables (CVE-2024-3660,
CVE-2025-1550). HDF5 is not parsed in full (no h5py dependency): the ``model_config`` JSON is
located by its signature inside the file and analysed; an HDF5 file without one is reported as
not analysed (info).
"""

from __future__ import annotations

import json
from typing import Any, BinaryIO

from bastion.core.results import Severity
from bastion.supply.context import ScanContext

_KERAS_MODULES = ("keras", "tensorflow", "tf_keras", "keras_nlp", "keras_cv", "keras_hub")
_CODE_CLASSES = {"Lambda", "__lambda__", "function", "__function__", "TFOpLambda", "SlicingOpLambda"}


def analyse_config(ctx: ScanContext, doc: Any, *, offset: int | None = None) -> bool:
    """Walk a Keras config tree; returns True if it looks like a Keras model config."""
    stack: list[tuple[Any, str]] = [(doc, "$")]
    keras_like = False
    seen = 0
    while stack:
        node, path = stack.pop()
        seen += 1
        if seen > 1_000_000:
            break
        if isinstance(node, dict):
            cls = node.get("class_name")
            if isinstance(cls, str):
                keras_like = True
                if cls in _CODE_CLASSES:
                    ctx.add("BASTION-SC-020", Severity.critical, f"Keras {cls} layer at {path} runs code on load",
                            offset=offset, description="Lambda layers carry marshalled Python bytecode (or a "
                            "function reference) that Keras executes when the model is loaded or called.",
                            config_path=path)
            mod = node.get("module")
            if isinstance(mod, str) and mod.split(".")[0] not in _KERAS_MODULES:
                verdict, reason = ctx.config.policy.classify(mod, str(node.get("class_name") or "?"))
                sev = Severity.critical if verdict == "deny" else Severity.high
                ctx.add("BASTION-SC-020", sev, f"Keras config at {path} imports module {mod!r}",
                        offset=offset, description=f"Keras imports '{mod}' while deserialising; {reason}.",
                        config_path=path)
            fn = node.get("function")
            if isinstance(fn, (list, tuple, str)) and path.endswith("config") and node.get("function_type"):
                ctx.add("BASTION-SC-020", Severity.critical, f"Keras config at {path} carries a function",
                        offset=offset, config_path=path)
            stack.extend((v, f"{path}.{k}") for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(node))
    return keras_like


def analyse_config_bytes(ctx: ScanContext, data: bytes, offset: int | None = None) -> None:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        ctx.add("BASTION-SC-007", Severity.medium, f"Keras config is not valid JSON: {exc}", offset=offset)
        return
    analyse_config(ctx, doc, offset=offset)


def scan_json(ctx: ScanContext, fh: BinaryIO, size: int) -> None:
    if size > ctx.config.max_header_bytes:
        return
    try:
        doc = json.loads(fh.read())
    except (ValueError, RecursionError):
        ctx.formats[-1] = "text"
        return
    if analyse_config(ctx, doc):
        ctx.formats[-1] = "keras-json"


def scan_hdf5(ctx: ScanContext, fh: BinaryIO, size: int) -> None:
    """Find JSON model configs (``{"class_name": ...``) stored as HDF5 attributes and analyse them."""
    limit = min(size, ctx.config.max_member_bytes)
    data = fh.read(limit)
    ctx.count_unpacked(0)
    decoder = json.JSONDecoder()
    found = False
    pos = data.find(b'{"class_name"')
    while pos >= 0:
        ctx.check_time()
        end = data.find(b"\x00", pos)
        chunk = data[pos: end if end > 0 else len(data)]
        try:
            doc, used = decoder.raw_decode(chunk.decode("utf-8", "replace"))
            found = True
            analyse_config(ctx, doc, offset=pos)
            pos = data.find(b'{"class_name"', pos + max(used, 1))
        except (ValueError, RecursionError):
            pos = data.find(b'{"class_name"', pos + 1)
    if not found:
        ctx.add("BASTION-SC-050", Severity.info, "HDF5 file without a Keras model config (weights only?)",
                description="bastion locates Keras configs in HDF5 without parsing HDF5 in full; no config was "
                "found, so only the absence of a model config was checked.")
