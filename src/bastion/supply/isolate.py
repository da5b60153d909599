"""Run a parser over untrusted bytes in a forked child process, under a memory and a time limit.

Used for readers backed by C libraries whose parse of a crafted file can take unbounded memory or
time, or crash (the HDF5 library behind h5py). The child records findings in its own
:class:`ScanContext` and sends them back as JSON (never pickle: a child compromised by the file must
not be able to run code in the scanner), and the parent replays them into the real context. Where
``os.fork`` is missing (Windows), the parser runs in-process.
"""

from __future__ import annotations

import json
import os
import resource
import select
import signal
import time
from collections.abc import Callable
from typing import Any

from bastion.core.results import Severity
from bastion.supply.context import LimitExceeded, ScanContext

_MAX_REPLY = 64 * 1024**2


def _vm_bytes() -> int:
    """This process's virtual memory size (Linux ``/proc/self/status``), or 0 when unknown."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _child(ctx: ScanContext, fn: Callable[[ScanContext], None], w: int) -> None:
    """In the child: limit the address space, run ``fn`` on a fresh context, write the result as JSON."""
    out: dict[str, Any]
    try:
        vm = _vm_bytes()
        if vm:
            limit = vm + ctx.config.max_parser_memory
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        rec = ScanContext(ctx.config, ctx.path, member=ctx.member, depth=ctx.depth, deadline=ctx.deadline)
        rec.formats.append(ctx.formats[-1] if ctx.formats else "?")
        try:
            fn(rec)
            out = {}
        except LimitExceeded as exc:
            out = {"limit": [exc.limit, str(exc), exc.offset]}
        except MemoryError:
            out = {"memory": True}
        except Exception as exc:  # noqa: BLE001 - reported by the parent as a reader failure
            out = {"error": f"{type(exc).__name__}: {exc}"}
        out["findings"] = [[f.rule_id, f.severity.value, f.title, f.offset, f.description,
                            {k: v for k, v in f.metrics.items() if k != "member"}] for f in rec.findings]
        out["not_analysed"] = rec.not_analysed
        out["format"] = rec.formats[0]
        data = json.dumps(out, default=str).encode()
    except MemoryError:
        data = b'{"memory": true}'
    view = memoryview(data)
    while view:
        view = view[os.write(w, view):]


def run_isolated(ctx: ScanContext, fn: Callable[[ScanContext], None], what: str) -> None:
    """Run ``fn(ctx)`` in a child process bounded by ``max_parser_memory`` and the file's deadline; its
    findings land in ``ctx``. A child that runs out of memory, crashes or overruns the deadline is
    reported (``BASTION-SC-008``) and the data marked not analysed."""
    if not hasattr(os, "fork"):
        fn(ctx)
        return
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:   # pragma: no cover - runs in the child (coverage of forked children is not collected)
        try:
            os.close(r)
            _child(ctx, fn, w)
        finally:
            os._exit(0)
    os.close(w)
    chunks: list[bytes] = []
    received = 0
    timed_out = False
    try:
        while True:
            left = ctx.deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                timed_out = True
                break
            chunk = os.read(r, 1 << 20)
            if not chunk:
                break
            received += len(chunk)
            if received > _MAX_REPLY:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
        if timed_out or received > _MAX_REPLY:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    if timed_out:
        raise LimitExceeded("max_file_seconds", f"{what} parse took longer than {ctx.config.max_file_seconds:g} s")
    try:
        out = json.loads(b"".join(chunks)) if received <= _MAX_REPLY else {}
    except ValueError:
        out = {}
    if not isinstance(out, dict) or not out.get("format") and not out.get("memory"):
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        why = f"{what} parser crashed" + (f" (signal {sig})" if sig else "")
        ctx.add("BASTION-SC-008", Severity.high, f"Not fully analysed: {why}", limit="parser_crash",
                description="The parsing library failed on this file in a way that stopped its process; "
                "loaders using the same library may crash or misbehave too.")
        ctx.not_understood(why)
        return
    _replay(ctx, out, what)


def _replay(ctx: ScanContext, out: dict[str, Any], what: str) -> None:
    for rule_id, severity, title, offset, description, metrics in out.get("findings", []):
        ctx.add(rule_id, Severity(severity), title, offset=offset, description=description, **metrics)
    for why in out.get("not_analysed", []):
        ctx.not_analysed.append(why)
    if out.get("format") and ctx.formats:
        ctx.formats[-1] = out["format"]
    if out.get("memory"):
        ctx.add("BASTION-SC-008", Severity.high, f"Not fully analysed: the {what} parser needed more than "
                f"max_parser_memory ({ctx.config.max_parser_memory} bytes)", limit="max_parser_memory",
                description="Parsing this file takes more memory than the limit: a crafted file (a memory "
                "bomb for the parsing library) or a very large one.")
        ctx.not_understood(f"{what} parser exceeded max_parser_memory")
    if out.get("limit"):
        limit, message, offset = out["limit"]
        raise LimitExceeded(limit, message, offset)
    if out.get("error"):
        ctx.not_understood(f"reader failure ({what}): {out['error']}")
