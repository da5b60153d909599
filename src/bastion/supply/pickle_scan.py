"""Symbolic walk of pickle opcodes: what loading would import and call, without loading.

The opcode semantics are those of CPython's ``pickle`` module (``Lib/pickle.py``,
``_Unpickler.dispatch``) and of PEP 307 (protocol 2), PEP 3154 (protocol 4: STACK_GLOBAL,
MEMOIZE, FRAME) and PEP 574 (protocol 5). Opcodes are tokenised with ``pickletools``' argument
readers; values are simulated on a symbolic stack and memo, so names that reach STACK_GLOBAL
through the memo or through computed strings are resolved (or flagged as dynamic).
"""

from __future__ import annotations

import io
import pickletools
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from bastion.core.results import Severity
from bastion.supply.allowlist import normalise
from bastion.supply.context import LimitExceeded, Malformed, ScanContext

_CODE2OP = {op.code.encode("latin-1"): op for op in pickletools.opcodes}
_IN_MEMORY = 64 * 1024**2  # streams up to this size are read into memory once
_KEEP = 64  # items kept per symbolic container (enough for argument analysis, bounded memory)

# Callables whose bytes argument is itself deserialised: analysed recursively.
_NESTED_LOADERS = {"pickle.loads", "_pickle.loads", "pickle._loads", "dill.loads", "cloudpickle.loads",
                   "torch.load", "joblib.load", "numpy.load", "marshal.loads", "torch.serialization.load",
                   "torch.storage._load_from_bytes", "pickle.load", "_pickle.load"}
# Allowed helpers that call (or instantiate) the callable they receive as an argument.
_FORWARDERS = {"copyreg._reconstructor": 1, "torch._tensor._rebuild_from_type_v2": 2,
               "torch._utils._rebuild_wrapper_subclass": 1, "copyreg.__newobj__": 1}
_JOBLIB_WRAPPER = "joblib.numpy_pickle.NumpyArrayWrapper"


class Mark:
    __slots__ = ()


MARK = Mark()


@dataclass(eq=False)
class Const:
    value: Any


@dataclass(eq=False)
class Global:
    module: str
    name: str
    offset: int
    verdict: str
    reason: str
    invoked: bool = False

    @property
    def full(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(eq=False)
class Call:
    func: Any
    args: Any
    offset: int
    state: Any = None


@dataclass(eq=False)
class Seq:
    kind: str                                   # list, tuple, dict, set, frozenset
    items: list[Any] = field(default_factory=list)
    count: int = 0

    def add(self, *vals: Any) -> None:
        for v in vals:
            self.count += 1
            if len(self.items) < _KEEP:
                self.items.append(v)


class Unknown:
    __slots__ = ()


UNKNOWN = Unknown()


class BoundedReader:
    """File wrapper that refuses to read past ``limit`` bytes from ``start`` (memory bound)."""

    def __init__(self, fh: BinaryIO, limit: int) -> None:
        self.fh, self.limit = fh, limit
        self.start = fh.tell()
        self.used = 0

    def _budget(self, n: int) -> None:
        if n < 0 or self.used + n > self.limit:
            raise LimitExceeded("max_pickle_bytes", f"pickle data larger than {self.limit} bytes",
                                self.tell())

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.limit - self.used
        self._budget(min(n, self.limit + 1 - self.used) if n > self.limit - self.used else n)
        data = self.fh.read(n)
        self.used += len(data)
        return data

    def readline(self, limit: int = -1) -> bytes:
        cap = min(self.limit - self.used, 1 << 20)
        data = self.fh.readline(cap + 1)
        if len(data) > cap:
            raise Malformed("text opcode argument longer than 1 MiB or past the pickle limit", self.tell())
        self.used += len(data)
        return data

    def tell(self) -> int:
        return self.fh.tell()

    def peek1(self) -> bytes:
        pos = self.fh.tell()
        b = self.fh.read(1)
        self.fh.seek(pos)
        return b


def _strip_bytes(v: Any) -> bytes | None:
    if isinstance(v, Const) and isinstance(v.value, (bytes, bytearray)):
        return bytes(v.value)
    return None


class PickleWalker:
    """Walk one or more pickles from a stream, recording findings in ``ctx``."""

    def __init__(self, ctx: ScanContext, *, base_offset: int = 0, torchscript: bool = False) -> None:
        self.ctx = ctx
        self.cfg = ctx.config
        self.base = base_offset       # offset of the stream inside the reported file/member
        self.torchscript = torchscript
        self.globals: list[Global] = []
        self.opcodes = 0
        self.pickles = 0

    # -- public entry points ---------------------------------------------------------------
    def walk_stream(self, reader: BoundedReader, *, multi: bool = True) -> None:
        """Walk pickles back to back (torch legacy files and joblib hold several)."""
        first = True
        while True:
            start = reader.tell()
            if not first:
                nxt = reader.peek1()
                if not nxt or nxt not in _CODE2OP:
                    break
            try:
                self.walk_one(reader, trailing=not first)
            except (Malformed, LimitExceeded):
                if first:
                    raise
                break      # data after the last pickle (tensor storage, padding): not pickle
            self.pickles += 1
            first = False
            if not multi or reader.tell() == start:
                break
        self.report_globals()

    def report_globals(self) -> None:
        seen: set[tuple[str, bool]] = set()
        for g in self.globals:
            if g.verdict != "unknown" or (g.full, g.invoked) in seen:
                continue
            seen.add((g.full, g.invoked))
            if g.invoked:
                self.ctx.add("BASTION-SC-002", Severity.high, f"Loading calls {g.full}, which is not on the allow-list",
                             offset=self.base + g.offset, description=f"{g.full} {g.reason}; loading the file "
                             "calls it, so it runs whatever that callable does.", global_name=g.full)
            else:
                self.ctx.add("BASTION-SC-003", Severity.medium, f"References {g.full}, which is not on the allow-list",
                             offset=self.base + g.offset, description=f"{g.full} {g.reason}.", global_name=g.full)
        self.globals.clear()

    # -- the walk ----------------------------------------------------------------------------
    def walk_one(self, r: BoundedReader, *, trailing: bool = False) -> None:
        stack: list[Any] = []
        marks: list[list[Any]] = []
        memo: dict[int, Any] = {}
        pending: list[tuple[Any, ...]] = []   # findings deferred until a trailing pickle parses fully
        local_globals: list[Global] = []
        cfg = self.cfg

        def emit(*args: Any, **kw: Any) -> None:
            if trailing:
                pending.append((args, kw))
            else:
                self.ctx.add(*args, **kw)

        def pop() -> Any:
            if not stack:
                raise Malformed("stack underflow", pos)
            return stack.pop()

        def pop_mark() -> list[Any]:
            nonlocal stack
            if not marks:
                raise Malformed("MARK missing", pos)
            items = stack
            stack = marks.pop()
            return items

        def resolve(module: Any, name: Any, dynamic: bool) -> Any:
            if not (isinstance(module, Const) and isinstance(module.value, str)
                    and isinstance(name, Const) and isinstance(name.value, str)):
                emit("BASTION-SC-004", Severity.critical, "STACK_GLOBAL imports a name computed while loading",
                     offset=self.base + pos, description="The module or attribute name is not a constant: it is "
                     "produced by a call at load time, a classic way to hide the real import from scanners.")
                return UNKNOWN
            mod, nm = normalise(module.value, name.value)
            verdict, reason = self.ctx.config.policy.classify(mod, nm, torchscript=self.torchscript)
            g = Global(mod, nm, pos, verdict, reason)
            if verdict == "deny":
                emit("BASTION-SC-001", Severity.critical, f"Imports {g.full}: code-execution primitive",
                     offset=self.base + pos, description=f"{g.full} {reason}. Loading this file imports it"
                     + (" via STACK_GLOBAL" if dynamic else "") + ".", global_name=g.full)
            else:
                (local_globals if trailing else self.globals).append(g)
            return g

        def invoke(func: Any, args: Any, op_name: str) -> Call:
            if isinstance(func, Global):
                func.invoked = True
                if func.full in _NESTED_LOADERS:
                    self._nested(args, pos)
                n = _FORWARDERS.get(func.full)
                if n and isinstance(args, Seq):
                    for a in args.items[:n]:
                        if isinstance(a, Global):
                            a.invoked = True
            elif isinstance(func, (Call, Unknown)):
                emit("BASTION-SC-004", Severity.high, f"{op_name} calls an object produced while loading",
                     offset=self.base + pos, description="The callable is the result of an earlier call or a "
                     "persistent/extension lookup, not a plain import: an indirect call that hides its target.")
            else:
                emit("BASTION-SC-007", Severity.medium, f"{op_name} calls a non-callable value",
                     offset=self.base + pos)
            return Call(func, args, pos)

        while True:
            self.opcodes += 1
            if self.opcodes > cfg.max_opcodes:
                raise LimitExceeded("max_opcodes", f"more than {cfg.max_opcodes} pickle opcodes", self.base + r.tell())
            if self.opcodes & 0xFFFF == 0:
                self.ctx.check_time()
            pos = r.tell() - r.start
            code = r.read(1)
            if not code:
                raise Malformed("truncated pickle: no STOP opcode", pos)
            op = _CODE2OP.get(code)
            if op is None:
                raise Malformed(f"unknown opcode {code!r}", pos)
            try:
                arg = op.arg.reader(r) if op.arg is not None else None
            except ValueError as exc:
                raise Malformed(f"truncated or invalid argument of {op.name}: {exc}", pos) from exc
            name = op.name
            if len(stack) > cfg.max_stack:
                raise LimitExceeded("max_stack", f"symbolic stack deeper than {cfg.max_stack}", self.base + pos)

            if name == "STOP":
                break
            if name in ("PROTO", "FRAME", "READONLY_BUFFER"):
                continue
            if name == "MARK":
                marks.append(stack)
                stack = []
            elif name in ("INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "STRING",
                          "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
                          "BYTEARRAY8", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8",
                          "FLOAT", "BINFLOAT"):
                stack.append(Const(arg))
            elif name in ("NONE", "NEWTRUE", "NEWFALSE"):
                stack.append(Const({"NONE": None, "NEWTRUE": True, "NEWFALSE": False}[name]))
            elif name == "NEXT_BUFFER":
                stack.append(UNKNOWN)
            elif name in ("EMPTY_LIST", "EMPTY_TUPLE", "EMPTY_DICT", "EMPTY_SET"):
                stack.append(Seq(name[6:].lower()))
            elif name in ("APPEND", "SETITEM"):
                vals = [pop() for _ in range(1 if name == "APPEND" else 2)][::-1]
                target = stack[-1] if stack else None
                if isinstance(target, Seq):
                    target.add(*vals)
            elif name in ("APPENDS", "SETITEMS", "ADDITEMS"):
                items = pop_mark()
                if stack and isinstance(stack[-1], Seq):
                    stack[-1].add(*items)
            elif name in ("LIST", "TUPLE", "DICT", "FROZENSET"):
                s = Seq(name.lower())
                s.add(*pop_mark())
                stack.append(s)
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                n = int(name[-1])
                s = Seq("tuple")
                s.add(*[pop() for _ in range(n)][::-1])
                stack.append(s)
            elif name == "POP":
                if stack:
                    stack.pop()
                elif marks:
                    stack = marks.pop()      # POP of a MARK, as pickle.py does
                else:
                    raise Malformed("stack underflow", pos)
            elif name == "POP_MARK":
                pop_mark()
            elif name == "DUP":
                v = pop()
                stack.extend((v, v))
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                idx = int(arg)
                if idx not in memo:
                    raise Malformed(f"memo key {idx} read before it was written", pos)
                stack.append(memo[idx])
            elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                if not stack:
                    raise Malformed("memo store from an empty stack", pos)
                idx = len(memo) if name == "MEMOIZE" else int(arg)
                if idx < 0:
                    raise Malformed("negative memo index", pos)
                if idx not in memo and len(memo) >= cfg.max_memo:
                    raise LimitExceeded("max_memo", f"more than {cfg.max_memo} memo entries", self.base + pos)
                memo[idx] = stack[-1]
            elif name == "GLOBAL":
                module, _, attr = str(arg).partition(" ")
                stack.append(resolve(Const(module), Const(attr), False))
            elif name == "STACK_GLOBAL":
                attr = pop()
                module = pop()
                stack.append(resolve(module, attr, True))
            elif name == "INST":
                module, _, attr = str(arg).partition(" ")
                args = Seq("tuple")
                args.add(*pop_mark())
                stack.append(invoke(resolve(Const(module), Const(attr), False), args, "INST"))
            elif name == "OBJ":
                items = pop_mark()
                if not items:
                    raise Malformed("OBJ without a class", pos)
                args = Seq("tuple")
                args.add(*items[1:])
                stack.append(invoke(items[0], args, "OBJ"))
            elif name == "NEWOBJ":
                args = pop()
                cls = pop()
                stack.append(invoke(cls, args, "NEWOBJ"))
            elif name == "NEWOBJ_EX":
                pop()  # kwargs
                args = pop()
                cls = pop()
                stack.append(invoke(cls, args, "NEWOBJ_EX"))
            elif name == "REDUCE":
                args = pop()
                func = pop()
                stack.append(invoke(func, args, "REDUCE"))
            elif name == "BUILD":
                state = pop()
                if not stack:
                    raise Malformed("BUILD without an object", pos)
                obj = stack[-1]
                if isinstance(obj, Global):
                    emit("BASTION-SC-004", Severity.high, f"BUILD modifies the global object {obj.full}",
                         offset=self.base + pos, description="Setting attributes on an imported module or class "
                         "while loading changes code that runs later (monkey-patching).", global_name=obj.full)
                elif isinstance(obj, Call):
                    obj.state = state
                    if isinstance(obj.func, Global):
                        if obj.func.verdict == "unknown":
                            obj.func.invoked = True   # __setstate__ of an unreviewed class runs
                        if obj.func.full == _JOBLIB_WRAPPER:
                            self._skip_joblib_array(r, state, pos)
            elif name in ("PERSID", "BINPERSID"):
                if name == "BINPERSID":
                    pop()
                stack.append(UNKNOWN)
            elif name in ("EXT1", "EXT2", "EXT4"):
                emit("BASTION-SC-006", Severity.high, f"{name} loads a global from the copyreg extension registry",
                     offset=self.base + pos, description=f"Extension code {arg} names a global that is not visible "
                     "in the file; scanners cannot tell what it imports.")
                stack.append(UNKNOWN)
            else:  # pragma: no cover - every opcode of protocols 0-5 is handled above
                raise Malformed(f"unsupported opcode {name}", pos)

        for args, kw in pending:
            self.ctx.add(*args, **kw)
        self.globals.extend(local_globals)

    # -- helpers -----------------------------------------------------------------------------
    def _nested(self, args: Any, pos: int) -> None:
        payloads = [b for b in (_strip_bytes(a) for a in (args.items if isinstance(args, Seq) else []))
                    if b is not None]
        strs = [a.value.encode("latin-1", "replace") for a in (args.items if isinstance(args, Seq) else [])
                if isinstance(a, Const) and isinstance(a.value, str)]
        for payload in payloads + strs:
            self.ctx.add("BASTION-SC-005", Severity.critical, "Nested pickle payload passed to a loader",
                         offset=self.base + pos, description=f"A {len(payload)}-byte serialised payload is "
                         "deserialised while loading; its content is analysed as a nested pickle.",
                         payload_bytes=len(payload))
            sub = self.ctx.child(f"nested@{self.base + pos}")
            walker = PickleWalker(sub, torchscript=self.torchscript)
            try:
                walker.walk_stream(BoundedReader(io.BytesIO(payload), len(payload)))
            except Malformed:
                pass    # not a pickle (e.g. marshal): the loader call itself is already critical

    def _skip_joblib_array(self, r: BoundedReader, state: Any, pos: int) -> None:
        """Skip the raw array bytes joblib writes after a NumpyArrayWrapper (joblib/numpy_pickle.py)."""
        fields = _dict_of(state)
        shape = fields.get("shape")
        dtype = fields.get("dtype")
        dims = [d.value for d in shape.items] if isinstance(shape, Seq) and all(
            isinstance(d, Const) and isinstance(d.value, int) for d in shape.items) else None
        descr = dtype.args.items[0].value if isinstance(dtype, Call) and isinstance(dtype.args, Seq) and \
            dtype.args.items and isinstance(dtype.args.items[0], Const) else None
        if dims is None or not isinstance(descr, str):
            raise Malformed("joblib array wrapper without a constant shape and dtype", pos)
        import numpy as np

        try:
            dt = np.dtype(descr)
        except TypeError as exc:
            raise Malformed(f"joblib array with invalid dtype {descr!r}", pos) from exc
        if dt.hasobject:
            self.ctx.add("BASTION-SC-070", Severity.medium, "joblib array of Python objects (nested pickle)",
                         offset=self.base + pos)
            self.walk_one(r)   # the nested pickle follows in the same stream
            return
        count = 1
        for d in dims:
            count *= d
        if fields.get("numpy_array_alignment_bytes") is not None:
            pad = r.fh.read(1)
            if pad:
                r.fh.seek(pad[0], io.SEEK_CUR)
        r.fh.seek(count * dt.itemsize, io.SEEK_CUR)


def _dict_of(state: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(state, Seq) and state.kind == "dict":
        it = state.items
        for k, v in zip(it[::2], it[1::2]):
            if isinstance(k, Const) and isinstance(k.value, str):
                out[k.value] = v
    return out


def scan_pickle_stream(ctx: ScanContext, fh: BinaryIO, *, base_offset: int = 0, multi: bool = True,
                       torchscript: bool = False) -> int:
    """Walk the pickle(s) at the current position of ``fh``; returns the number of pickles.

    Raises :class:`Malformed` if the first pickle does not parse (the caller decides whether that
    is a finding), and :class:`LimitExceeded` when a configured bound is hit.
    """
    walker = PickleWalker(ctx, base_offset=base_offset, torchscript=torchscript)
    if not isinstance(fh, io.BytesIO):
        # small files are walked from memory (much faster tell/read); large ones stream from disk
        start = fh.tell()
        head = fh.read(_IN_MEMORY + 1)
        if len(head) <= _IN_MEMORY:
            fh = io.BytesIO(head)
            base_offset += start
            walker.base = base_offset
        else:
            fh.seek(start)
    reader = BoundedReader(fh, ctx.config.max_pickle_bytes)
    try:
        walker.walk_stream(reader, multi=multi)
    finally:
        walker.report_globals()
    return walker.pickles
