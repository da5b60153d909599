"""Symbolic walk of pickle opcodes: what loading would import and call, without loading.

The opcode semantics are those of CPython's ``pickle`` module (``Lib/pickle.py``,
``_Unpickler.dispatch``) and of PEP 307 (protocol 2), PEP 3154 (protocol 4: STACK_GLOBAL,
MEMOIZE, FRAME) and PEP 574 (protocol 5). Values are simulated on a symbolic stack and memo, so
names that reach STACK_GLOBAL through the memo or through computed strings are resolved (or
flagged as dynamic).

The walk runs over the raw bytes in memory (a memory map for streams over 64 MiB) with one
dispatch on the opcode byte; binary arguments are decoded in place. Text arguments (protocol 0)
and any argument that is truncated, invalid or crosses ``max_pickle_bytes`` are read with
``pickletools``' own argument readers, so errors and values are exactly those of the reference
tokenizer (the test suite checks the opcode sequence against ``pickletools.genops``).
"""

from __future__ import annotations

import io
import mmap
import pickletools
import struct
from collections.abc import Callable
from typing import Any, BinaryIO

from bastion.core.severity import Severity
from bastion.supply.allowlist import normalise
from bastion.supply.context import LimitExceeded, Malformed, ScanContext

_OPS: dict[int, pickletools.OpcodeInfo] = {ord(op.code): op for op in pickletools.opcodes}
_IN_MEMORY = 64 * 1024**2  # streams up to this size are read into memory once; larger ones are mapped
_KEEP = 64  # items kept per symbolic container (enough for argument analysis, bounded memory)

# Callables whose bytes argument is itself deserialised: analysed recursively.
_NESTED_LOADERS = {"pickle.loads", "_pickle.loads", "pickle._loads", "dill.loads", "cloudpickle.loads",
                   "torch.load", "joblib.load", "numpy.load", "marshal.loads", "torch.serialization.load",
                   "torch.storage._load_from_bytes", "pickle.load", "_pickle.load"}
# Allowed helpers that call (or instantiate) the callable they receive as an argument.
_FORWARDERS = {"copyreg._reconstructor": 1, "torch._tensor._rebuild_from_type_v2": 2,
               "torch._utils._rebuild_wrapper_subclass": 1, "copyreg.__newobj__": 1}
_JOBLIB_WRAPPER = "joblib.numpy_pickle.NumpyArrayWrapper"


def _utf8(b: bytes) -> str:
    return b.decode("utf-8", "surrogatepass")


def _latin1(b: bytes) -> str:
    return b.decode("latin-1")


def _same(b: bytes) -> bytes:
    return b


# Binary arguments decoded in place: opcode byte -> (size, unpack) for fixed-size arguments, or
# (length size, length unpack, convert) for length-prefixed data (pickletools' arg descriptors).
_U1, _U2, _I4, _U4, _U8, _F8 = (struct.Struct(f).unpack_from for f in ("<B", "<H", "<i", "<I", "<Q", ">d"))
_FIXED: dict[int, tuple[int, Callable[..., tuple[Any, ...]]]] = {
    ord("J"): (4, _I4), ord("M"): (2, _U2), ord("j"): (4, _U4), ord("r"): (4, _U4), ord("G"): (8, _F8),
    0x82: (1, _U1), 0x83: (2, _U2), 0x84: (4, _I4), 0x95: (8, _U8), 0x80: (1, _U1), ord("K"): (1, _U1),
    ord("h"): (1, _U1), ord("q"): (1, _U1)}
_COUNTED: dict[int, tuple[int, Callable[..., tuple[Any, ...]], Callable[[bytes], Any]]] = {
    ord("T"): (4, _I4, _latin1), ord("U"): (1, _U1, _latin1), ord("B"): (4, _U4, _same),
    ord("C"): (1, _U1, _same), 0x8E: (8, _U8, _same), 0x96: (8, _U8, bytearray),
    0x8C: (1, _U1, _utf8), ord("X"): (4, _U4, _utf8), 0x8D: (8, _U8, _utf8),
    0x8A: (1, _U1, pickletools.decode_long), 0x8B: (4, _I4, pickletools.decode_long)}
_CONST_OPS = frozenset(ord(c) for c in "IJKMLSTUBCVXFG") | {0x8A, 0x8B, 0x8E, 0x96, 0x8C, 0x8D}


class Const:
    """A constant pushed by the pickle (number, string, bytes, None, bool)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class Global:
    """A name the pickle imports, with the policy's verdict."""

    __slots__ = ("full", "invoked", "module", "name", "offset", "reason", "verdict")

    def __init__(self, module: str, name: str, offset: int, verdict: str, reason: str) -> None:
        self.module, self.name, self.offset, self.verdict, self.reason = module, name, offset, verdict, reason
        self.invoked = False
        self.full = f"{module}.{name}"


class Call:
    """The result of calling ``func`` with ``args`` (REDUCE, NEWOBJ, OBJ, INST)."""

    __slots__ = ("args", "func", "offset", "state")

    def __init__(self, func: Any, args: Any, offset: int) -> None:
        self.func, self.args, self.offset, self.state = func, args, offset, None


class Seq:
    """A list, tuple, dict, set or frozenset; keeps its first ``_KEEP`` items (bounded memory)."""

    __slots__ = ("count", "items", "kind")

    def __init__(self, kind: str, items: list[Any] | None = None, count: int = 0) -> None:
        self.kind, self.items, self.count = kind, items if items is not None else [], count

    def add(self, *vals: Any) -> None:
        self.extend(vals)

    def extend(self, vals: Any) -> None:
        self.count += len(vals)
        room = _KEEP - len(self.items)
        if room > 0:
            self.items.extend(vals[:room])


def _seq(kind: str, items: list[Any]) -> Seq:
    return Seq(kind, items if len(items) <= _KEEP else items[:_KEEP], len(items))


class Unknown:
    __slots__ = ()


UNKNOWN = Unknown()
_NONE, _TRUE, _FALSE = Const(None), Const(True), Const(False)
_SMALL = [Const(k) for k in range(256)]   # BININT1 values (constants are never mutated)
_CHECK_EVERY = 1024
_NO_FRAME = 1 << 62        # frame end when no FRAME is open (greater than any index)


class BoundedReader:
    """File wrapper that refuses to read past ``limit`` bytes from ``start`` (memory bound)."""

    def __init__(self, fh: BinaryIO | _MapFile, limit: int) -> None:
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



class _MapFile:
    """Minimal binary file over a memory map (``mmap.readline`` takes no size limit)."""

    def __init__(self, buf: mmap.mmap) -> None:
        self.buf, self.i = buf, 0

    def seek(self, i: int, whence: int = 0) -> int:
        self.i = i + (self.i if whence == io.SEEK_CUR else 0)
        return self.i

    def tell(self) -> int:
        return self.i

    def read(self, n: int = -1) -> bytes:
        end = len(self.buf) if n < 0 else self.i + n
        data = self.buf[self.i:end]
        self.i += len(data)
        return data

    def readline(self, limit: int = -1) -> bytes:
        end = len(self.buf) if limit < 0 else min(len(self.buf), self.i + limit)
        nl = self.buf.find(b"\n", self.i, end)
        return self.read((nl + 1 if nl >= 0 else end) - self.i)


def _strip_bytes(v: Any) -> bytes | None:
    if isinstance(v, Const) and isinstance(v.value, (bytes, bytearray)):
        return bytes(v.value)
    return None


class PickleWalker:
    """Walk one or more pickles from a buffer, recording findings in ``ctx``.

    ``trace``, when a list, receives ``(offset, opcode name)`` for every opcode walked (tests
    compare it with ``pickletools.genops``).
    """

    def __init__(self, ctx: ScanContext, *, base_offset: int = 0, torchscript: bool = False,
                 trace: list[tuple[int, str]] | None = None) -> None:
        self.ctx = ctx
        self.cfg = ctx.config
        self.base = base_offset       # offset of the stream inside the reported file/member
        self.torchscript = torchscript
        self.trace = trace
        self.globals: list[Global] = []
        self.opcodes = 0
        self.pickles = 0
        self.buf: bytes | mmap.mmap = b""
        self.origin = 0               # index in buf where the stream starts (offsets are relative to it)
        self.pos = 0                  # index in buf of the next opcode
        self.skipped = 0              # raw array bytes jumped over (not counted in max_pickle_bytes)
        self._fh: BinaryIO | _MapFile | None = None

    # -- public entry points ---------------------------------------------------------------
    def walk_stream(self, buf: bytes | mmap.mmap, origin: int = 0, *, multi: bool = True) -> None:
        """Walk pickles back to back from ``buf[origin:]`` (torch legacy files and joblib hold several)."""
        self.buf, self.origin, self.pos, self.skipped = buf, origin, origin, 0
        self._fh = _MapFile(buf) if isinstance(buf, mmap.mmap) else None
        first = True
        while True:
            start = self.pos
            if not first and (start >= len(buf) or buf[start] not in _OPS):
                break
            try:
                self.walk_one(trailing=not first)
            except (Malformed, LimitExceeded):
                if first:
                    raise
                break      # data after the last pickle (tensor storage, padding): not pickle
            self.pickles += 1
            first = False
            if not multi or self.pos == start:
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

    # -- argument reading ----------------------------------------------------------------------
    def _limit(self) -> tuple[int, int]:
        """(stop, lim): the max_pickle_bytes bound as an index, and min(stop, end of data)."""
        stop = self.origin + self.cfg.max_pickle_bytes + self.skipped
        return stop, min(stop, len(self.buf))

    def _slow_arg(self, c: int, i: int, pos: int) -> tuple[Any, int]:
        """Read the argument of opcode ``c`` at ``buf[i]`` with pickletools' reader (text arguments,
        and every truncated or invalid one: same values and errors as ``pickletools.genops``)."""
        op = _OPS[c]
        if self._fh is None:
            self._fh = io.BytesIO(self.buf)
        fh = self._fh
        fh.seek(i)
        r = BoundedReader(fh, self.cfg.max_pickle_bytes)
        r.start, r.used = self.origin, i - self.origin - self.skipped
        try:
            arg = op.arg.reader(r)
        except ValueError as exc:
            raise Malformed(f"truncated or invalid argument of {op.name}: {exc}", pos) from exc
        return arg, fh.tell()

    def _arg(self, c: int, i: int, pos: int, lim: int) -> tuple[Any, int]:
        """Decode the binary argument at ``buf[i]`` in place; anything unusual goes to :meth:`_slow_arg`."""
        buf = self.buf
        fixed = _FIXED.get(c)
        if fixed is not None:
            size, unpack = fixed
            if i + size <= lim:
                return unpack(buf, i)[0], i + size
        else:
            counted = _COUNTED.get(c)
            if counted is not None:
                size, unpack, convert = counted
                if i + size <= lim:
                    n = unpack(buf, i)[0]
                    j = i + size + n
                    if n >= 0 and j <= lim:
                        try:
                            return convert(buf[i + size:j]), j
                        except ValueError:
                            pass
        return self._slow_arg(c, i, pos)

    def _check_bounds(self, stack: list[Any], i: int) -> None:
        """Per-file deadline and symbolic stack depth (a pickle pushes at most one item per opcode,
        so checking every ``_CHECK_EVERY`` opcodes bounds memory to within that many items)."""
        self.ctx.check_time()
        if len(stack) > self.cfg.max_stack:
            raise LimitExceeded("max_stack", f"symbolic stack deeper than {self.cfg.max_stack}",
                                self.base + i - self.origin)

    # -- semantic helpers ------------------------------------------------------------------------
    def _emit(self, pending: list[Any] | None, *args: Any, **kw: Any) -> None:
        if pending is not None:
            pending.append((args, kw))
        else:
            self.ctx.add(*args, **kw)

    def _resolve(self, module: Any, name: Any, dynamic: bool, pos: int, pending: list[Any] | None,
                 sink: list[Global]) -> Any:
        if not (isinstance(module, str) and isinstance(name, str)):
            self._emit(pending, "BASTION-SC-004", Severity.critical, "STACK_GLOBAL imports a name computed while "
                       "loading", offset=self.base + pos, description="The module or attribute name is not a "
                       "constant: it is produced by a call at load time, a classic way to hide the real import "
                       "from scanners.")
            return UNKNOWN
        mod, nm = normalise(module, name)
        verdict, reason = self.cfg.policy.classify(mod, nm, torchscript=self.torchscript)
        g = Global(mod, nm, pos, verdict, reason)
        if verdict == "deny":
            self._emit(pending, "BASTION-SC-001", Severity.critical, f"Imports {g.full}: code-execution primitive",
                       offset=self.base + pos, description=f"{g.full} {reason}. Loading this file imports it"
                       + (" via STACK_GLOBAL" if dynamic else "") + ".", global_name=g.full)
        else:
            sink.append(g)
        return g

    def _invoke(self, func: Any, args: Any, op_name: str, pos: int, pending: list[Any] | None) -> Call:
        if isinstance(func, Global):
            func.invoked = True
            full = func.full
            if full in _NESTED_LOADERS:
                self._nested(args, pos)
            n = _FORWARDERS.get(full)
            if n and isinstance(args, Seq):
                for a in args.items[:n]:
                    if isinstance(a, Global):
                        a.invoked = True
        elif isinstance(func, (Call, Unknown)):
            self._emit(pending, "BASTION-SC-004", Severity.high, f"{op_name} calls an object produced while loading",
                       offset=self.base + pos, description="The callable is the result of an earlier call or a "
                       "persistent/extension lookup, not a plain import: an indirect call that hides its target.")
        else:
            self._emit(pending, "BASTION-SC-007", Severity.medium, f"{op_name} calls a non-callable value",
                       offset=self.base + pos)
        return Call(func, args, pos)

    # -- the walk ----------------------------------------------------------------------------
    def walk_one(self, *, trailing: bool = False) -> None:
        """Walk one pickle from ``self.pos`` to its STOP opcode (``self.pos`` is left after it)."""
        stack: list[Any] = []
        marks: list[list[Any]] = []
        memo: dict[int, Any] = {}
        pending: list[Any] | None = [] if trailing else None   # findings deferred until a trailing pickle parses
        sink: list[Global] = [] if trailing else self.globals
        cfg = self.cfg
        max_ops, max_memo = cfg.max_opcodes, cfg.max_memo
        buf, origin, trace = self.buf, self.origin, self.trace
        stop, lim = self._limit()
        i = self.pos
        nops = self.opcodes
        arg_of = self._arg

        check_at = min(max_ops, nops + _CHECK_EVERY)
        frame_end = _NO_FRAME         # index in buf where the current FRAME ends (PEP 3154)
        notes: list[str] = []
        op_start = i

        while True:
            if i >= frame_end:        # the frame is used up: at its end exactly, or an opcode crossed it
                if i > frame_end:
                    self._frame_crossed(op_start - origin, frame_end - origin, pending)
                frame_end = _NO_FRAME
            op_start = i
            nops += 1
            if nops > check_at:       # bounds checked every _CHECK_EVERY opcodes, not on each one (speed)
                if nops > max_ops:
                    raise LimitExceeded("max_opcodes", f"more than {max_ops} pickle opcodes", self.base + i - origin)
                self._check_bounds(stack, i)
                check_at = min(max_ops, nops + _CHECK_EVERY)
            pos = i - origin
            if i >= lim:
                if i >= stop:
                    raise LimitExceeded("max_pickle_bytes", f"pickle data larger than {cfg.max_pickle_bytes} bytes",
                                        self.base + pos)
                raise Malformed("truncated pickle: no STOP opcode", pos)
            c = buf[i]
            i += 1
            if trace is not None:
                trace.append((pos, _OPS[c].name if c in _OPS else "?"))

            # The most frequent opcodes of model pickles first (measured on torch/sklearn/joblib files).
            if c == 0x94:                                   # MEMOIZE
                if not stack:
                    raise Malformed("memo store from an empty stack", pos)
                idx = len(memo)
                if idx not in memo and idx >= max_memo:
                    raise LimitExceeded("max_memo", f"more than {max_memo} memo entries", self.base + pos)
                memo[idx] = stack[-1]
            elif c == 0x68 or c == 0x6A:                    # BINGET, LONG_BINGET
                if c == 0x68 and i < lim:
                    idx = buf[i]
                    i += 1
                else:
                    idx, i = arg_of(c, i, pos, lim)
                if idx not in memo:
                    raise Malformed(f"memo key {idx} read before it was written", pos)
                stack.append(memo[idx])
            elif c == 0x4B:                                 # BININT1
                if i < lim:
                    stack.append(_SMALL[buf[i]])
                    i += 1
                else:
                    v, i = arg_of(c, i, pos, lim)
                    stack.append(Const(v))
            elif c == 0x8C:                                 # SHORT_BINUNICODE
                j = i + 1 + buf[i] if i < lim else lim + 1
                if j <= lim:
                    try:
                        stack.append(Const(buf[i + 1:j].decode("utf-8", "surrogatepass")))
                        i = j
                        continue
                    except UnicodeDecodeError:
                        pass
                v, i = self._slow_arg(c, i, pos)
                stack.append(Const(v))
            elif c == 0x71 or c == 0x72:                    # BINPUT, LONG_BINPUT
                if c == 0x71 and i < lim:
                    idx = buf[i]
                    i += 1
                else:
                    idx, i = arg_of(c, i, pos, lim)
                if not stack:
                    raise Malformed("memo store from an empty stack", pos)
                if idx not in memo and len(memo) >= max_memo:
                    raise LimitExceeded("max_memo", f"more than {max_memo} memo entries", self.base + pos)
                memo[idx] = stack[-1]
            elif c in _CONST_OPS:                           # other numbers, strings, bytes
                fixed = _FIXED.get(c)
                if fixed is not None:
                    size, unpack = fixed
                    if i + size <= lim:
                        stack.append(Const(unpack(buf, i)[0]))
                        i += size
                        continue
                elif c in _COUNTED:
                    size, unpack, convert = _COUNTED[c]
                    if i + size <= lim:
                        n = unpack(buf, i)[0]
                        j = i + size + n
                        if n >= 0 and j <= lim:
                            try:
                                stack.append(Const(convert(buf[i + size:j])))
                                i = j
                                continue
                            except ValueError:
                                pass
                v, i = self._slow_arg(c, i, pos)   # text forms, and anything truncated or invalid
                stack.append(Const(v))
            elif c == 0x28:                                 # MARK
                marks.append(stack)
                stack = []
            elif c == 0x52:                                 # REDUCE
                if len(stack) < 2:
                    raise Malformed("stack underflow", pos)
                args = stack.pop()
                stack.append(self._invoke(stack.pop(), args, "REDUCE", pos, pending))
            elif c == 0x74 or c == 0x6C or c == 0x64 or c == 0x91:   # TUPLE, LIST, DICT, FROZENSET
                if not marks:
                    raise Malformed("MARK missing", pos)
                items = stack
                stack = marks.pop()
                stack.append(_seq("tuple" if c == 0x74 else "list" if c == 0x6C else "dict" if c == 0x64
                                  else "frozenset", items))
            elif c == 0x85:                                 # TUPLE1
                if not stack:
                    raise Malformed("stack underflow", pos)
                stack.append(Seq("tuple", [stack.pop()], 1))
            elif c == 0x4E:                                 # NONE
                stack.append(_NONE)
            elif c == 0x89:                                 # NEWFALSE
                stack.append(_FALSE)
            elif c == 0x88:                                 # NEWTRUE
                stack.append(_TRUE)
            elif c == 0x62:                                 # BUILD
                if not stack:
                    raise Malformed("stack underflow", pos)
                state = stack.pop()
                if not stack:
                    raise Malformed("BUILD without an object", pos)
                obj = stack[-1]
                if isinstance(obj, Call):
                    obj.state = state
                    func = obj.func
                    if isinstance(func, Global):
                        if func.verdict == "unknown":
                            func.invoked = True   # __setstate__ of an unreviewed class runs
                        if func.full == _JOBLIB_WRAPPER:
                            if i >= frame_end:     # joblib ends the frame before the raw array bytes
                                frame_end = _NO_FRAME
                            self.pos, self.opcodes = i, nops
                            self._skip_joblib_array(state, pos)
                            i, nops = self.pos, self.opcodes
                            stop, lim = self._limit()
                            check_at = min(max_ops, nops + _CHECK_EVERY)
                elif isinstance(obj, Global):
                    self._emit(pending, "BASTION-SC-004", Severity.high, f"BUILD modifies the global object "
                               f"{obj.full}", offset=self.base + pos, description="Setting attributes on an imported "
                               "module or class while loading changes code that runs later (monkey-patching).",
                               global_name=obj.full)
            elif c == 0x87 or c == 0x86:                    # TUPLE3, TUPLE2
                n = 3 if c == 0x87 else 2
                if len(stack) < n:
                    raise Malformed("stack underflow", pos)
                items = stack[-n:]
                del stack[-n:]
                stack.append(Seq("tuple", items, n))
            elif c == 0x29:                                 # EMPTY_TUPLE
                stack.append(Seq("tuple"))
            elif c == 0x7D:                                 # EMPTY_DICT
                stack.append(Seq("dict"))
            elif c == 0x5D:                                 # EMPTY_LIST
                stack.append(Seq("list"))
            elif c == 0x8F:                                 # EMPTY_SET
                stack.append(Seq("set"))
            elif c == 0x75 or c == 0x65 or c == 0x90:       # SETITEMS, APPENDS, ADDITEMS
                if not marks:
                    raise Malformed("MARK missing", pos)
                items = stack
                stack = marks.pop()
                if stack and isinstance(stack[-1], Seq):
                    stack[-1].extend(items)
            elif c == 0x61 or c == 0x73:                    # APPEND, SETITEM
                n = 1 if c == 0x61 else 2
                if len(stack) < n:
                    raise Malformed("stack underflow", pos)
                items = stack[-n:]
                del stack[-n:]
                if stack and isinstance(stack[-1], Seq):
                    stack[-1].extend(items)
            elif c == 0x93:                                 # STACK_GLOBAL
                if len(stack) < 2:
                    raise Malformed("stack underflow", pos)
                attr = stack.pop()
                module = stack.pop()
                stack.append(self._resolve(module.value if isinstance(module, Const) else None,
                                           attr.value if isinstance(attr, Const) else None, True, pos,
                                           pending, sink))
            elif c == 0x63 or c == 0x69:                    # GLOBAL, INST
                arg, i = self._slow_arg(c, i, pos)
                module, _, attr = str(arg).partition(" ")
                if c == 0x63:
                    stack.append(self._resolve(module, attr, False, pos, pending, sink))
                else:
                    if not marks:
                        raise Malformed("MARK missing", pos)
                    items = stack
                    stack = marks.pop()
                    g = self._resolve(module, attr, False, pos, pending, sink)
                    stack.append(self._invoke(g, _seq("tuple", items), "INST", pos, pending))
            elif c == 0x81 or c == 0x92:                    # NEWOBJ, NEWOBJ_EX
                n = 2 if c == 0x81 else 3
                if len(stack) < n:
                    raise Malformed("stack underflow", pos)
                if n == 3:
                    stack.pop()  # kwargs
                args = stack.pop()
                stack.append(self._invoke(stack.pop(), args, "NEWOBJ" if n == 2 else "NEWOBJ_EX", pos, pending))
            elif c == 0x6F:                                 # OBJ
                if not marks:
                    raise Malformed("MARK missing", pos)
                items = stack
                stack = marks.pop()
                if not items:
                    raise Malformed("OBJ without a class", pos)
                stack.append(self._invoke(items[0], _seq("tuple", items[1:]), "OBJ", pos, pending))
            elif c == 0x51 or c == 0x50:                    # BINPERSID, PERSID
                if c == 0x51:
                    if not stack:
                        raise Malformed("stack underflow", pos)
                    stack.pop()
                else:
                    _, i = self._slow_arg(c, i, pos)
                stack.append(UNKNOWN)
            elif c == 0x2E:                                 # STOP
                self._check_bounds(stack, i)
                break
            elif c == 0x95:                                 # FRAME
                n, i = arg_of(c, i, pos, lim)
                if frame_end != _NO_FRAME:
                    self._emit(pending, "BASTION-SC-007", Severity.high, "Pickle FRAME starts before the previous "
                               "frame ends", offset=self.base + pos, description="pickle.py refuses this; "
                               "unpicklers that do not check it read the bytes differently, so what a scanner "
                               "walks is not what a loader runs.")
                frame_end = i + n
                if frame_end > len(buf):
                    why = (f"pickle FRAME at offset {self.base + pos} declares {n} bytes, more than the "
                           f"{len(buf) - i} bytes left (loaders differ on it)")
                    notes.append(why)    # reported if the pickle reaches STOP (else it is just truncated)
            elif c == 0x80:                                 # PROTO
                _, i = arg_of(c, i, pos, lim)
            elif c == 0x98:                                 # READONLY_BUFFER
                pass
            elif c == 0x97:                                 # NEXT_BUFFER
                stack.append(UNKNOWN)
            elif c == 0x30:                                 # POP
                if stack:
                    stack.pop()
                elif marks:
                    stack = marks.pop()      # POP of a MARK, as pickle.py does
                else:
                    raise Malformed("stack underflow", pos)
            elif c == 0x31:                                 # POP_MARK
                if not marks:
                    raise Malformed("MARK missing", pos)
                stack = marks.pop()
            elif c == 0x32:                                 # DUP
                if not stack:
                    raise Malformed("stack underflow", pos)
                stack.append(stack[-1])
            elif c == 0x67 or c == 0x70:                    # GET, PUT (text argument)
                arg, i = self._slow_arg(c, i, pos)
                idx = int(arg)
                if c == 0x67:
                    if idx not in memo:
                        raise Malformed(f"memo key {idx} read before it was written", pos)
                    stack.append(memo[idx])
                else:
                    if not stack:
                        raise Malformed("memo store from an empty stack", pos)
                    if idx < 0:
                        raise Malformed("negative memo index", pos)
                    if idx not in memo and len(memo) >= max_memo:
                        raise LimitExceeded("max_memo", f"more than {max_memo} memo entries", self.base + pos)
                    memo[idx] = stack[-1]
            elif c == 0x82 or c == 0x83 or c == 0x84:       # EXT1, EXT2, EXT4
                arg, i = arg_of(c, i, pos, lim)
                name = _OPS[c].name
                self._emit(pending, "BASTION-SC-006", Severity.high, f"{name} loads a global from the copyreg "
                           "extension registry", offset=self.base + pos, description=f"Extension code {arg} names a "
                           "global that is not visible in the file; scanners cannot tell what it imports.")
                stack.append(UNKNOWN)
            else:
                raise Malformed(f"unknown opcode {bytes([c])!r}", pos)

        self.pos, self.opcodes = i, nops
        for args_, kw in pending or ():
            self.ctx.add(*args_, **kw)
        for why in notes:
            self.ctx.not_understood(why)
        if trailing:
            self.globals.extend(sink)

    # -- helpers -----------------------------------------------------------------------------
    def _frame_crossed(self, pos: int, end: int, pending: list[Any] | None) -> None:
        self._emit(pending, "BASTION-SC-007", Severity.high, f"Pickle opcode at {self.base + pos} crosses the end "
                   f"of its FRAME (at {self.base + end})", offset=self.base + pos, description="Unpicklers disagree "
                   "on such data: some (older CPython C unpicklers) read the bytes inside the long argument as "
                   "opcodes and run what they hide, while an opcode walker sees one harmless value.")

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
                walker.walk_stream(payload)
            except Malformed:
                pass    # not a pickle (e.g. marshal): the loader call itself is already critical

    def _skip_joblib_array(self, state: Any, pos: int) -> None:
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
        from bastion.supply.dtypes import dtype_info

        try:
            itemsize, hasobject = dtype_info(descr)
        except (TypeError, ValueError) as exc:
            raise Malformed(f"joblib array with invalid dtype {descr!r}", pos) from exc
        st = dtype.state.items if isinstance(dtype.state, Seq) else []
        elsize = st[5].value if len(st) > 5 and isinstance(st[5], Const) else None
        if descr.lstrip("<>|=").startswith("V") and isinstance(elsize, int) and elsize != itemsize:
            # numpy's dtype.__setstate__ takes a void type's item size from the state, so joblib would read
            # a different number of array bytes than the descriptor says: the rest of the stream is ambiguous
            self.ctx.add("BASTION-SC-050", Severity.high, f"joblib array dtype {descr!r} is given item size {elsize} "
                         "by its pickled state", offset=self.base + pos, description="The loader reads the array "
                         "with the state's size, so the pickle opcodes after it are not where the descriptor puts "
                         "them; a way to hide opcodes from scanners.")
            raise Malformed("joblib array dtype state disagrees with its descriptor", pos)
        if hasobject:
            self.ctx.add("BASTION-SC-070", Severity.medium, "joblib array of Python objects (nested pickle)",
                         offset=self.base + pos)
            self.walk_one()   # the nested pickle follows in the same stream
            return
        count = 1
        for d in dims:
            count *= d
        if count < 0:
            raise Malformed("joblib array with a negative dimension", pos)
        i = self.pos
        if fields.get("numpy_array_alignment_bytes") is not None:
            pad = self.buf[i:i + 1]
            i += len(pad) + (pad[0] if pad else 0)
        i += count * itemsize
        self.skipped += i - self.pos    # raw array bytes are not pickle: not counted in max_pickle_bytes
        self.pos = i
        if self.trace is not None:
            self.trace.append((i - self.origin, "<raw array>"))


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
    walker = PickleWalker(ctx, torchscript=torchscript)
    start = fh.tell()
    walker.base = base_offset + start
    mapped: mmap.mmap | None = None
    buf: bytes | mmap.mmap
    if isinstance(fh, io.BytesIO):
        buf, origin = fh.getvalue(), start          # shares the BytesIO's buffer, no copy
    else:
        buf, origin = fh.read(_IN_MEMORY + 1), 0
        if len(buf) > _IN_MEMORY:                   # large stream: map it rather than read it
            try:
                mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
                buf, origin = mapped, start
            except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
                fh.seek(start)
                buf = fh.read(ctx.config.max_pickle_bytes + 1)
    try:
        walker.walk_stream(buf, origin, multi=multi)
    finally:
        walker.report_globals()
        walker.buf = b""
        walker._fh = None
        if mapped is not None:
            mapped.close()
    return walker.pickles
