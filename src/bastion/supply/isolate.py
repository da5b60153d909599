"""Run a parser over untrusted bytes in a forked worker process, under a memory and a time limit.

Used for readers backed by C libraries whose parse of a crafted file can take unbounded memory or
time, or crash (the HDF5 library behind h5py). One worker per (task, configuration) is forked the
first time a file needs it and then serves one file per request, so the parsing library is imported
once, in the worker only (the scanner itself never loads it). The worker's address space is limited
to its size after start-up plus ``max_parser_memory``; the parent waits for each answer no longer
than the file's deadline. A worker that runs out of memory, crashes or overruns the deadline is
killed, the file is reported (``BASTION-SC-008``, not analysed) and the next file gets a fresh worker.

The worker records findings in its own :class:`ScanContext` and sends them back as JSON (never
pickle: a worker compromised by the file must not be able to run code in the scanner). Where
``os.fork`` is missing (Windows), the task runs in-process.
"""

from __future__ import annotations

import atexit
import io
import json
import os
import resource
import select
import signal
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from bastion.core.severity import Severity
from bastion.supply.config import InspectConfig
from bastion.supply.context import LimitExceeded, ScanContext

Task = Callable[[ScanContext, BinaryIO, int], None]
_LEN = struct.Struct("<Q")
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


def _read_exact(fd: int, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = os.read(fd, min(n - len(out), 1 << 20))
        if not chunk:
            raise EOFError
        out += chunk
    return bytes(out)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _send(fd: int, header: dict[str, Any], payload: bytes = b"") -> None:
    head = json.dumps(header).encode()
    _write_all(fd, _LEN.pack(len(head)) + head + _LEN.pack(len(payload)) + payload)


def _serve(task: Task, config: InspectConfig, setup: Callable[[], None] | None, rfd: int, wfd: int) -> None:
    """The worker's loop: one request (context fields, file path or bytes) in, one JSON answer out."""
    if setup is not None:
        try:
            setup()
        except Exception:  # noqa: BLE001 - the task reports the missing library itself
            pass
    vm = _vm_bytes()
    if vm:
        limit = vm + config.max_parser_memory
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    while True:
        try:
            head = json.loads(_read_exact(rfd, _LEN.unpack(_read_exact(rfd, _LEN.size))[0]))
            payload = _read_exact(rfd, _LEN.unpack(_read_exact(rfd, _LEN.size))[0])
        except (EOFError, OSError, ValueError):
            return
        try:
            out = _run(task, config, head, payload)
            data = json.dumps(out, default=str).encode()
        except MemoryError:
            data = b'{"memory": true}'
        _write_all(wfd, _LEN.pack(len(data)) + data)


def _run(task: Task, config: InspectConfig, head: dict[str, Any], payload: bytes) -> dict[str, Any]:
    rec = ScanContext(config, Path(head["path"]), member=head["member"], depth=head["depth"],
                      deadline=head["deadline"])
    rec.formats.append(head["format"])
    out: dict[str, Any] = {}
    try:
        if head["read_path"]:
            with open(head["path"], "rb") as fh:
                task(rec, fh, head["size"])
        else:
            task(rec, io.BytesIO(payload), len(payload))
    except LimitExceeded as exc:
        out["limit"] = [exc.limit, str(exc), exc.offset]
    except MemoryError:
        out["memory"] = True
    except Exception as exc:  # noqa: BLE001 - reported by the parent as a reader failure
        out["error"] = f"{type(exc).__name__}: {exc}"
    out["findings"] = [[f.rule_id, f.severity.value, f.title, f.offset, f.description,
                        {k: v for k, v in f.metrics.items() if k != "member"}] for f in rec.findings]
    out["not_analysed"] = rec.not_analysed
    out["format"] = rec.formats[0]
    return out


class _Worker:
    """A forked worker process and the two pipes to it."""

    def __init__(self, task: Task, config: InspectConfig, setup: Callable[[], None] | None) -> None:
        req_r, req_w = os.pipe()        # requests: parent -> worker
        ans_r, ans_w = os.pipe()        # answers: worker -> parent
        pid = os.fork()
        if pid == 0:   # pragma: no cover - runs in the worker (coverage of forked children is not collected)
            try:
                os.close(req_w)
                os.close(ans_r)
                _serve(task, config, setup, req_r, ans_w)
            finally:
                os._exit(0)
        os.close(req_r)
        os.close(ans_w)
        self.pid, self.wfd, self.rfd = pid, req_w, ans_r
        self.config = config

    def ask(self, head: dict[str, Any], payload: bytes, deadline: float) -> dict[str, Any] | None:
        """Send one request; the answer, None when the worker died, or "timeout"."""
        try:
            _send(self.wfd, head, payload)
        except OSError:
            return None
        buf = bytearray()
        need = _LEN.size
        while len(buf) < need:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.rfd], [], [], left)[0]:
                return {"timeout": True}
            chunk = os.read(self.rfd, 1 << 20)
            if not chunk:
                return None
            buf += chunk
            if need == _LEN.size and len(buf) >= _LEN.size:
                need = _LEN.size + _LEN.unpack_from(buf)[0]
                if need > _MAX_REPLY:
                    return None
        try:
            answer = json.loads(bytes(buf[_LEN.size:need]))
        except ValueError:
            return None
        return answer if isinstance(answer, dict) else None

    def stop(self) -> int:
        """Kill the worker; its wait status."""
        for fd in (self.wfd, self.rfd):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            return os.waitpid(self.pid, 0)[1]
        except ChildProcessError:
            return 0


_WORKERS: dict[Task, _Worker] = {}   # one live worker per task (a process cache, not run state)


@atexit.register
def _stop_all() -> None:
    while _WORKERS:
        _WORKERS.popitem()[1].stop()


def run_isolated(ctx: ScanContext, fh: BinaryIO, size: int, task: Task, what: str, *,
                 setup: Callable[[], None] | None = None) -> None:
    """Run ``task(ctx, fh, size)`` in the worker for ``task`` (forked on first use; ``setup`` runs there
    once, e.g. to import the parsing library), bounded by ``max_parser_memory`` and the file's deadline;
    its findings land in ``ctx``."""
    if not hasattr(os, "fork"):
        task(ctx, fh, size)
        return
    worker = _WORKERS.get(task)
    if worker is not None and worker.config is not ctx.config:    # another scan's limits and policy
        _WORKERS.pop(task).stop()
        worker = None
    if worker is None:
        worker = _WORKERS[task] = _Worker(task, ctx.config, setup)
    read_path = ctx.member is None and not isinstance(fh, io.BytesIO)
    if not read_path:
        fh.seek(0)
    payload = b"" if read_path else (fh.getvalue() if isinstance(fh, io.BytesIO) else fh.read())
    head = {"path": os.fsdecode(ctx.path), "member": ctx.member, "depth": ctx.depth, "deadline": ctx.deadline,
            "format": ctx.formats[-1] if ctx.formats else "?", "read_path": read_path, "size": size}
    answer = worker.ask(head, payload, ctx.deadline)
    if answer is None or answer.get("timeout") or answer.get("memory"):
        status = _WORKERS.pop(task).stop()         # its state is unknown: the next file gets a fresh one
        if answer is not None and answer.get("timeout"):
            raise LimitExceeded("max_file_seconds", f"{what} parse took longer than "
                                f"{ctx.config.max_file_seconds:g} s")
        if answer is None:
            sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) and os.WTERMSIG(status) != signal.SIGKILL else None
            why = f"{what} parser crashed" + (f" (signal {sig})" if sig else "")
            ctx.add("BASTION-SC-008", Severity.high, f"Not fully analysed: {why}", limit="parser_crash",
                    description="The parsing library failed on this file in a way that stopped its process; "
                    "loaders using the same library may crash or misbehave too.")
            ctx.not_understood(why)
            return
    _replay(ctx, answer, what)


def _replay(ctx: ScanContext, out: dict[str, Any], what: str) -> None:
    for rule_id, severity, title, offset, description, metrics in out.get("findings", []):
        ctx.add(rule_id, Severity(severity), title, offset=offset, description=description, **metrics)
    ctx.not_analysed.extend(out.get("not_analysed", []))
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
