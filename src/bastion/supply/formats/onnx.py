"""ONNX models: external-data paths, links and custom operator domains.

The protobuf is parsed with the ``onnx`` package without loading external data (ONNX IR spec,
"External Tensor Data": ``location`` is a path relative to the model file's directory). A
location that is absolute, climbs out with ``..``, or resolves through a symlink outside the
directory makes the runtime read arbitrary files; hard links can do the same unseen.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from bastion.core.results import Severity
from bastion.supply.context import ScanContext

STANDARD_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "ai.onnx.training", "ai.onnx.preview.training",
                    "com.microsoft", "com.microsoft.nchwc", "com.ms.internal.nhwc"}


def _parse(fh: BinaryIO, size: int, limit: int) -> Any | None:
    if size > limit:
        return None
    try:
        import onnx
    except ImportError:
        return None
    fh.seek(0)
    model = onnx.ModelProto()
    try:
        model.ParseFromString(fh.read())
    except Exception:  # protobuf DecodeError and friends: not ONNX
        return None
    if model.ir_version <= 0 or not (len(model.graph.node) or len(model.graph.initializer)):
        return None
    return model


def looks_like_onnx(ctx: ScanContext, fh: BinaryIO, size: int) -> bool:
    model = _parse(fh, size, ctx.config.max_onnx_bytes)
    fh.seek(0)
    if model is not None:
        ctx._onnx_model = model  # type: ignore[attr-defined]
        return True
    return False


def _graphs(graph: Any) -> Iterator[Any]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _graphs(attr.g)
            for g in attr.graphs:
                yield from _graphs(g)


def _tensors(model: Any) -> Iterator[Any]:
    for g in _graphs(model.graph):
        yield from g.initializer
        for sp in g.sparse_initializer:
            yield sp.values
            yield sp.indices
        for node in g.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors


def scan_onnx(ctx: ScanContext, fh: BinaryIO, size: int) -> None:
    model = getattr(ctx, "_onnx_model", None) or _parse(fh, size, ctx.config.max_onnx_bytes)
    if model is None:
        return
    model_dir = ctx.path.parent
    real_dir = os.path.realpath(model_dir)
    for t in _tensors(model):
        if t.data_location != 1:   # TensorProto.EXTERNAL
            continue
        entries = {e.key: e.value for e in t.external_data}
        loc = entries.get("location", "")
        _check_location(ctx, t.name, loc, model_dir, real_dir)
    domains = {op.domain for op in model.opset_import} | {n.domain for g in _graphs(model.graph) for n in g.node}
    for fn in model.functions:
        domains.add(fn.domain)
    for dom in sorted(domains - STANDARD_DOMAINS):
        ctx.add("BASTION-SC-031", Severity.medium, f"ONNX model uses custom operator domain {dom!r}",
                description="Running it needs a custom-operator shared library registered with the runtime: "
                "native code that bastion cannot analyse.", domain=dom)


def _check_location(ctx: ScanContext, tensor: str, loc: str, model_dir: Path, real_dir: str) -> None:
    if ctx.member is not None:
        model_dir = ctx.path.parent
    norm = posixpath.normpath(loc.replace("\\", "/"))
    if not loc:
        ctx.add("BASTION-SC-007", Severity.medium, f"ONNX tensor {tensor!r} is external without a location")
        return
    if os.path.isabs(loc) or loc.startswith(("/", "\\")) or (len(loc) > 1 and loc[1] == ":") \
            or norm == ".." or norm.startswith("../"):
        ctx.add("BASTION-SC-030", Severity.critical, f"ONNX external data {loc!r} (tensor {tensor!r}) points "
                "outside the model directory", description="The runtime would read that file as tensor data "
                "(path traversal: exfiltration or denial of service).", external_location=loc, tensor=tensor)
        return
    target = model_dir / norm
    real = os.path.realpath(target)
    if os.path.commonpath([real, real_dir]) != real_dir:
        ctx.add("BASTION-SC-030", Severity.high, f"ONNX external data {loc!r} resolves through a link to {real}",
                description="A symbolic link inside the model directory sends the runtime outside it.",
                external_location=loc, tensor=tensor)
        return
    try:
        st = os.stat(target)
    except OSError:
        ctx.add("BASTION-SC-007", Severity.medium, f"ONNX external data file {loc!r} is missing")
        return
    if st.st_nlink > 1:
        ctx.add("BASTION-SC-060", Severity.high, f"ONNX external data {loc!r} is a hard link "
                f"({st.st_nlink} names)", description="A hard link can give a file outside the model directory "
                "a name inside it.", external_location=loc)
