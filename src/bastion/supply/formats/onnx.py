"""ONNX models: external-data paths, links and custom operator domains.

The protobuf wire format is read by this module (field numbers from onnx/onnx.proto; encoding from
the Protocol Buffers guide), so the onnx package is imported only for a model the walk cannot judge
exactly as onnx would; that one is parsed with the ``onnx`` package without loading external data (ONNX IR spec,
"External Tensor Data": ``location`` is a path relative to the model file's directory). A
location that is absolute, climbs out with ``..``, or resolves through a symlink outside the
directory makes the runtime read arbitrary files; hard links can do the same unseen.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from bastion.core.severity import Severity
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


# --------------------------------------------------------------------------- wire-format pre-check
# Field numbers from onnx/onnx.proto (ModelProto, GraphProto, NodeProto, AttributeProto, TensorProto,
# SparseTensorProto, OperatorSetIdProto); wire format from the Protocol Buffers encoding guide.
_MODEL = {7: "graph", 8: "opset", 25: "function"}
_GRAPH = {1: "node", 5: "tensor", 15: "sparse"}
_NODE = {5: "attr"}
_ATTR = {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"}
_SPARSE = {1: "tensor", 2: "tensor"}
_MAX_NESTING = 32


class _Undecided(Exception):
    """The pre-check cannot vouch for the model: the onnx package decides."""


def _varint(b: bytes, i: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= end or shift > 63:
            raise _Undecided
        x = b[i]
        i += 1
        value |= (x & 0x7F) << shift
        if x < 0x80:
            return value, i
        shift += 7


def _fields(b: bytes, i: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value or start, end) of each field in ``b[i:end]``."""
    while i < end:
        key, i = _varint(b, i, end)
        num, wire = key >> 3, key & 7
        if not 0 < num < 1 << 29:
            raise _Undecided
        if wire == 0:
            v, i = _varint(b, i, end)
            yield num, 0, v, i
        elif wire == 2:
            n, i = _varint(b, i, end)
            if i + n > end:
                raise _Undecided
            yield num, 2, i, i + n
            i += n
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
            if i > end:
                raise _Undecided
            yield num, wire, 0, i
        else:   # groups (deprecated) and invalid wire types
            raise _Undecided


class _Wire:
    """What the wire-format walk read: operator domains and the external tensors (name, external_data)."""

    def __init__(self) -> None:
        self.domains: set[str] = set()
        self.externals: list[tuple[str, dict[str, str]]] = []


_SINGULAR = {("model", 7), ("attr", 5), ("attr", 6), ("attr", 22), ("sparse", 1), ("sparse", 2)}
_DOMAIN_FIELD = {"opset": 1, "node": 7, "function": 10}


def _utf8(b: bytes) -> str:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        raise _Undecided from None    # the onnx package decides what it makes of such a string


def _tensor(b: bytes, i: int, end: int, out: _Wire) -> None:
    """TensorProto: name (8), external_data (13: key 1, value 2), data_location (14; 1 = EXTERNAL)."""
    name, location_kind, entries = "", 0, {}
    for num, wire, a, z in _fields(b, i, end):
        if num == 8 or num == 13:
            if wire != 2:
                raise _Undecided
            if num == 8:
                name = _utf8(b[a:z])
                continue
            key = value = ""
            for n2, w2, a2, z2 in _fields(b, a, z):
                if n2 in (1, 2):
                    if w2 != 2:
                        raise _Undecided
                    if n2 == 1:
                        key = _utf8(b[a2:z2])
                    else:
                        value = _utf8(b[a2:z2])
            entries[key] = value
        elif num == 14:
            if wire != 0:
                raise _Undecided
            location_kind = a
    if location_kind == 1:
        out.externals.append((name, entries))


def _walk(b: bytes, i: int, end: int, kind: str, depth: int, out: _Wire) -> bool:
    """Walk one message, collecting domains and external tensors into ``out``; raise _Undecided on
    anything the onnx package must judge. Returns True for a graph holding nodes or initializers."""
    if depth > _MAX_NESTING:
        raise _Undecided
    if kind == "tensor":
        _tensor(b, i, end, out)
        return False
    schema = {"graph": _GRAPH, "node": _NODE, "attr": _ATTR, "sparse": _SPARSE}.get(kind, {})
    content = False
    seen: set[int] = set()
    domain_field = _DOMAIN_FIELD.get(kind)
    for num, wire, a, z in _fields(b, i, end):
        if num == domain_field:
            if wire != 2 or num in seen:       # a repeated singular field: protobuf keeps the last one
                raise _Undecided
            seen.add(num)
            out.domains.add(_utf8(b[a:z]))
            continue
        sub = schema.get(num)
        if sub is None:
            continue
        if wire != 2:
            raise _Undecided
        if (kind, num) in _SINGULAR:
            if num in seen:                    # protobuf merges repeated singular messages: let it
                raise _Undecided
            seen.add(num)
        if kind == "graph" and num in (1, 5):
            content = True
        _walk(b, a, z, sub, depth + 1, out)
    return content


def wire_model(data: bytes) -> _Wire | None:
    """Read an ONNX ModelProto's operator domains and external tensors from the protobuf wire format,
    without the onnx package. None when ``data`` is not a model with ir_version > 0 and a non-empty
    graph, or holds anything the walk cannot judge exactly as the onnx package would (the caller then
    parses it with the onnx package)."""
    if not data:
        return None
    out = _Wire()
    try:
        ir_version, content, graphs = 0, False, 0
        for num, wire, a, z in _fields(data, 0, len(data)):
            kind = _MODEL.get(num)
            if num == 1:
                if wire != 0:
                    raise _Undecided
                ir_version = a
            elif kind is not None:
                if wire != 2:
                    raise _Undecided
                graphs += kind == "graph"
                if graphs > 1:
                    raise _Undecided
                content |= _walk(data, a, z, kind, 1, out) and kind == "graph"
        return out if 0 < ir_version < 1 << 63 and content else None
    except (_Undecided, RecursionError):
        return None


def looks_like_onnx(ctx: ScanContext, fh: BinaryIO, size: int) -> bool:
    if size <= ctx.config.max_onnx_bytes:
        fh.seek(0)
        wire = wire_model(fh.read())
        if wire is not None:
            fh.seek(0)
            ctx._onnx_model = wire  # type: ignore[attr-defined]
            return True
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
                for sp in ([attr.sparse_tensor] if attr.HasField("sparse_tensor") else []) + list(attr.sparse_tensors):
                    yield sp.values
                    yield sp.indices


def scan_onnx(ctx: ScanContext, fh: BinaryIO, size: int) -> None:
    model = getattr(ctx, "_onnx_model", None) or _parse(fh, size, ctx.config.max_onnx_bytes)
    if model is None:
        return
    if isinstance(model, _Wire):
        externals, domains = model.externals, model.domains
    else:
        externals = [(_text(t.name), {_text(e.key): _text(e.value) for e in t.external_data})
                     for t in _tensors(model) if t.data_location == 1]      # TensorProto.EXTERNAL
        domains = {op.domain for op in model.opset_import} | {n.domain for g in _graphs(model.graph)
                                                               for n in g.node}
        domains |= {fn.domain for fn in model.functions}
    model_dir = ctx.path.parent
    real_dir = os.path.realpath(model_dir)
    for name, entries in externals:
        _check_location(ctx, name, entries.get("location", ""), model_dir, real_dir)
    for dom in sorted(domains - STANDARD_DOMAINS):
        ctx.add("BASTION-SC-031", Severity.medium, f"ONNX model uses custom operator domain {dom!r}",
                description="Running it needs a custom-operator shared library registered with the runtime: "
                "native code that bastion cannot analyse.", domain=dom)


def _text(value: str | bytes) -> str:
    """A protobuf string field (invalid UTF-8 comes back as bytes): as a str, undecodable bytes escaped."""
    return os.fsdecode(value) if isinstance(value, bytes) else value


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
    if ctx.member is None:
        ctx.data_files.append(real)   # raw tensor bytes: not a format to analyse, not "not analysed"
    try:
        st = os.stat(target)
    except OSError:
        ctx.add("BASTION-SC-007", Severity.medium, f"ONNX external data file {loc!r} is missing")
        return
    if st.st_nlink > 1:
        ctx.add("BASTION-SC-060", Severity.high, f"ONNX external data {loc!r} is a hard link "
                f"({st.st_nlink} names)", description="A hard link can give a file outside the model directory "
                "a name inside it.", external_location=loc)
