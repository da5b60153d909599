"""Extract the runnable code blocks of the project's Markdown files and run them as a reader would.

A file's blocks run in order, in one fresh working directory, like one terminal session next to one
Python prompt: ``bash``/``sh`` blocks run with ``set -eo pipefail`` and hand their environment
variables and working directory on to the next block; ``python`` blocks share one namespace.
Other languages (yaml, json, text, xml, ...) are shown, not run.

A block that must not run says so, with a reason, on the line right before its fence::

    <!-- no-test: needs a GPU -->

A slow block says how long it takes the same way; it runs only with ``BASTION_DOCS_SLOW=1`` (the
test reports the blocks it left out) and the blocks after it must not need it::

    <!-- slow: about 4 min on 2 cores -->

A marker without a reason (a slow one without a duration), or a marker that is not followed by a
runnable block, is an error: a block is never skipped silently. Used by ``tests/test_docs_blocks.py``; runnable as a script to try
one file by hand: ``python tests/docs_blocks.py docs/api.md``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: A block using more CPU seconds than this must say how long it takes (in the block, the lines above
#: it, or a slow marker). CPU time, not wall time: it does not depend on how loaded the machine is.
SLOW_CPU_S = 30.0
DURATION = re.compile(r"\b\d+(?:\.\d+)?\s*(?:s|sec|seconds?|min|minutes?)\b")

RUN_LANGS = {"python": "python", "py": "python", "bash": "bash", "sh": "bash", "shell": "bash"}
_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^\n`]*)$")
_MARKER = re.compile(r"^\s*<!--\s*(?P<kind>no-test|slow)\s*:?\s*(?P<reason>.*?)\s*-->\s*$")
SLOW_ENV = "BASTION_DOCS_SLOW"


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it starts, its language, its code, and why it is not run."""

    path: str
    line: int  # line of the opening fence (1-based)
    lang: str  # "python", "bash", or the info string of a block that is not run
    code: str
    skip_reason: str | None = None
    before: str = ""  # the few lines of prose right before the block (where a slow one says how slow)

    slow: str | None = None  # the duration a slow block states; it runs only with BASTION_DOCS_SLOW=1

    @property
    def runnable(self) -> bool:
        if self.lang not in ("python", "bash") or self.skip_reason is not None:
            return False
        return self.slow is None or os.environ.get(SLOW_ENV) == "1"

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


class MarkerError(ValueError):
    """A ``no-test`` marker without a reason, or not right before a runnable block."""


def parse(path: Path, label: str | None = None) -> list[Block]:
    """Every fenced block of ``path`` in order; raises :class:`MarkerError` for a misplaced marker."""
    label = label or path.name
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    pending: tuple[int, str, str] | None = None  # (line, kind, reason) of a marker waiting for its block
    i = 0
    while i < len(lines):
        line = lines[i]
        marker = _MARKER.match(line)
        if marker:
            if not marker["reason"]:
                raise MarkerError(f"{label}:{i + 1}: a {marker['kind']} marker needs a reason: "
                                  f"<!-- {marker['kind']}: why -->")
            if marker["kind"] == "slow" and not DURATION.search(marker["reason"]):
                raise MarkerError(f"{label}:{i + 1}: a slow marker says how long the block takes: "
                                  "<!-- slow: about 3 min on 2 cores -->")
            pending = (i + 1, marker["kind"], marker["reason"])
            i += 1
            continue
        fence = _FENCE.match(line)
        if not fence:
            if line.strip() and pending:
                raise MarkerError(f"{label}:{pending[0]}: a no-test marker must be the line right before a "
                                  "code block")
            i += 1
            continue
        info = fence["info"].strip().split()
        lang = RUN_LANGS.get(info[0].lower(), info[0].lower()) if info else ""
        close = re.compile(rf"^ {{0,3}}{re.escape(fence['fence'][0])}{{{len(fence['fence'])},}}\s*$")
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not close.match(lines[j]):
            body.append(lines[j])
            j += 1
        reason = pending[2] if pending and pending[1] == "no-test" else None
        slow = pending[2] if pending and pending[1] == "slow" else None
        if pending and lang not in ("python", "bash"):
            raise MarkerError(f"{label}:{pending[0]}: a no-test marker before a '{lang or 'plain'}' block, "
                              "which is never run: remove the marker")
        prose = "\n".join(x for x in lines[max(0, i - 4):i] if not _MARKER.match(x))
        blocks.append(Block(label, i + 1, lang, "\n".join(body) + "\n", reason, prose, slow))
        pending = None
        i = j + 1
    if pending:
        raise MarkerError(f"{label}:{pending[0]}: a no-test marker at the end of the file, before no block")
    return blocks


def strict_bash(code: str) -> str:
    """``code`` with every top-level ``a && b`` of a line turned into ``a`` then ``b`` on lines of their own.

    Under ``set -e`` bash ignores a failure anywhere in an ``&&`` list but its last command, so
    ``pip install x && run`` whose install fails would pass. Split, each command stops the block when
    it fails, as a reader expects. Lines with ``||`` (an expected failure handled on purpose), and
    blocks with a here-document, are left as written.
    """
    if "<<" in code:
        return code
    out: list[str] = []
    for line in code.replace("\\\n", " ").splitlines():
        out.append("\n".join(_split_top_level(line, "&&")) if "||" not in line else line)
    return "\n".join(out) + "\n"


def _split_top_level(line: str, sep: str) -> list[str]:
    parts, depth, quote, start, i = [], 0, "", 0, 0
    while i < len(line):
        ch = line[i]
        if quote:
            if ch == "\\" and quote == '"':
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'\"`":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            break
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif depth == 0 and line.startswith(sep, i):
            parts.append(line[start:i])
            start = i + len(sep)
            i += len(sep)
            continue
        i += 1
    parts.append(line[start:])
    return [p.strip() for p in parts] if len(parts) > 1 else [line]


# --------------------------------------------------------------------------- the driver (a child process)

_DRIVER = r'''
import json, os, resource, subprocess, sys, time, traceback
def cpu():
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
blocks, state_dir = json.loads(sys.stdin.read()), sys.argv[1]
ns = {"__name__": "__main__"}
env_file, cwd_file = os.path.join(state_dir, "env"), os.path.join(state_dir, "cwd")
for n, b in enumerate(blocks):
    t0, c0 = time.perf_counter(), cpu()
    print(f"\n>>> block {b['where']} ({b['lang']})", flush=True)
    if b["lang"] == "python":
        try:
            exec(compile(b["code"], b["where"], "exec"), ns)
        except BaseException:
            traceback.print_exc()
            sys.stdout.flush()
            print(f"\n@@@FAILED {n}", flush=True)
            sys.exit(1)
    else:
        script = ("set -eo pipefail\n" + b["code"] + "\n" +
                  f"env -0 > {env_file!r}\npwd > {cwd_file!r}\n")
        rc = subprocess.run(["bash", "-c", script], stdin=subprocess.DEVNULL).returncode
        if rc != 0:
            print(f"\n@@@FAILED {n} (exit code {rc})", flush=True)
            sys.exit(1)
        with open(env_file, "rb") as fh:
            new = dict(item.split(b"=", 1) for item in fh.read().split(b"\0") if b"=" in item)
        for key in set(os.environb) - set(new):
            del os.environb[key]
        for key, value in new.items():
            if key not in (b"_", b"SHLVL", b"PWD", b"OLDPWD"):
                os.environb[key] = value
        os.chdir(open(cwd_file).read().strip())
    sys.stdout.flush()
    print(f"@@@DONE {n} {time.perf_counter() - t0:.2f} {cpu() - c0:.2f}", flush=True)
'''


@dataclass
class RunOutcome:
    ok: bool
    output: str
    seconds: dict[str, float]  # block.where -> wall-clock seconds
    cpu_seconds: dict[str, float]  # block.where -> CPU seconds (the driver and its children)
    failed: Block | None = None


def run_blocks(blocks: list[Block], workdir: Path, env: dict[str, str], timeout: float) -> RunOutcome:
    """Run the runnable ``blocks`` in order in ``workdir`` (one child process); never raises for a failure."""
    todo = [b for b in blocks if b.runnable]
    state = workdir / ".docs-blocks-state"
    state.mkdir(parents=True, exist_ok=True)
    payload = json.dumps([{"where": b.where, "lang": b.lang,
                           "code": strict_bash(b.code) if b.lang == "bash" else b.code} for b in todo])
    try:
        proc = subprocess.run([sys.executable, "-c", _DRIVER, str(state)], input=payload, cwd=workdir, env=env,
                              capture_output=True, text=True, timeout=timeout)
        out, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out = _text(exc.stdout) + _text(exc.stderr) + f"\n(timed out after {timeout:.0f} s)"
        rc = -1
    done = list(re.finditer(r"^@@@DONE (\d+) ([\d.]+) ([\d.]+)$", out, re.M))
    seconds = {todo[int(m[1])].where: float(m[2]) for m in done}
    cpu_seconds = {todo[int(m[1])].where: float(m[3]) for m in done}
    failed = re.search(r"^@@@FAILED (\d+)", out, re.M)
    bad = todo[int(failed[1])] if failed else next((b for b in todo if b.where not in seconds), None)
    return RunOutcome(rc == 0 and bad is None, out, seconds, cpu_seconds, bad if rc != 0 or bad else None)


def docs_env(tmp: Path, cache_dir: Path) -> dict[str, str]:
    """A reader's shell: bastion on PATH, the session's demo-model cache, nothing of the user's registry."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BASTION_REGISTRY_URL", "BASTION_KEY_PASSPHRASE", "PYTEST_"))}
    env.update({
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        "BASTION_CACHE_DIR": str(cache_dir), "XDG_DATA_HOME": str(tmp / "xdg-data"),
        "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
        "COLUMNS": "120",
    })
    return env


def run_doc(path: Path, tmp: Path, cache_dir: Path, timeout: float = 600) -> tuple[list[Block], RunOutcome]:
    """Run ``path``'s blocks and fail the test with the failing block's place and output."""
    blocks = parse(path, str(path.relative_to(ROOT)))
    work = tmp / "work"
    work.mkdir()
    (work / "examples").symlink_to(ROOT / "examples")  # what the docs name, as in a checkout
    outcome = run_blocks(blocks, work, docs_env(tmp, cache_dir), timeout=timeout)
    if not outcome.ok:
        where = outcome.failed.where if outcome.failed else "?"
        pytest.fail(f"the code block at {where} failed as written:\n{outcome.output[-6000:]}", pytrace=False)
    slow = [f"{b.where} used {outcome.cpu_seconds[b.where]:.0f} CPU s" for b in blocks
            if outcome.cpu_seconds.get(b.where, 0) > SLOW_CPU_S
            and not DURATION.search(b.before + b.code + (b.slow or ""))]
    assert not slow, f"slow examples must say how long they take: {slow}"
    left_out = [f"{b.where} ({b.slow})" for b in blocks if b.slow and not b.runnable]
    if left_out:
        warnings.warn(f"slow doc blocks not run (set {SLOW_ENV}=1 to run them): {', '.join(left_out)}",
                      stacklevel=2)
    return blocks, outcome


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data


if __name__ == "__main__":  # python tests/docs_blocks.py FILE.md: run one file's blocks by hand
    import tempfile

    target = Path(sys.argv[1])
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        res = run_blocks(parse(target), Path(tmp), dict(os.environ), timeout=900)
        print(res.output)
        print(json.dumps({k: (v, res.cpu_seconds[k]) for k, v in res.seconds.items()}, indent=1), f"total {time.perf_counter() - t:.1f} s",
              "OK" if res.ok else f"FAILED at {res.failed.where if res.failed else '?'}")
