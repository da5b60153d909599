"""``bastion inspect``: decide, without executing anything, whether loading a model file can run code.

Entry point: :func:`scan_paths`. Files are recognised by content (see :mod:`bastion.supply.formats`);
pickles are analysed by a symbolic walk of their opcodes (:mod:`bastion.supply.pickle_scan`) against an
allow-list (:mod:`bastion.supply.allowlist`). Each file is scanned under time and memory bounds
(:class:`InspectConfig`): a file that breaks a bound gets a finding, an unreadable file an error, and
the scan of the other files goes on.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

from bastion import __version__
from bastion.core.severity import Severity
from bastion.supply.config import InspectConfig
from bastion.supply.context import LimitExceeded, Malformed, ScanContext
from bastion.supply.formats import UNKNOWN_FORMAT, scan_stream
from bastion.supply.rules import CHECK_NAME, ScanFinding, make_finding, safe_text

if TYPE_CHECKING:
    from bastion.core.results import CheckResult, ScanResult

log = logging.getLogger(__name__)

__all__ = ["FileScan", "InspectConfig", "InspectResult", "ScanError", "scan_paths", "scan_file", "inspect_check"]


@dataclass(frozen=True)
class ScanError:
    """A file that could not be scanned (``kind="error"``: unreadable, vanished) or that was read but
    not (fully) analysed (``kind="not-analysed"``: unknown format, a reader failure, a limit hit).
    Either way the file is never reported clean."""

    path: str
    message: str
    kind: str = "error"

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", safe_text(self.path))
        object.__setattr__(self, "message", safe_text(self.message))

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message, "kind": self.kind}


@dataclass
class FileScan:
    """What :func:`scan_file` found in one file."""

    findings: list[ScanFinding]
    formats: list[str]
    not_analysed: list[str]      # reasons; empty when the whole file was analysed
    data_files: list[str] = field(default_factory=list)   # real paths this file reads as raw data

    @property
    def model(self) -> bool:
        """True when a format other than plain text was recognised (the file is a model file)."""
        return any(f not in _NOT_MODEL for f in self.formats)


_NOT_MODEL = frozenset({"text", "json", "unknown"})


@dataclass
class InspectResult:
    """Outcome of :func:`scan_paths`: findings, per-file errors, and what was scanned."""

    findings: list[ScanFinding] = field(default_factory=list)
    errors: list[ScanError] = field(default_factory=list)
    files_scanned: int = 0
    models_scanned: int = 0      # files in which a model format (not just text) was recognised
    formats: dict[str, list[str]] = field(default_factory=dict)   # file -> formats detected (nested too)
    seconds: float = 0.0

    def worst(self) -> Severity | None:
        """The highest severity among the findings, or None when there is none."""
        return max((f.severity for f in self.findings), key=lambda s: s.rank, default=None)

    def failed(self, fail_on: Severity = Severity.high) -> bool:
        """True when a finding is at or above ``fail_on``."""
        worst = self.worst()
        return worst is not None and worst.rank >= fail_on.rank

    @property
    def nothing_scanned(self) -> bool:
        """True when no model file was found (empty directory, only text files, missing paths)."""
        return self.models_scanned == 0

    @property
    def complete(self) -> bool:
        """Every file was read and analysed, and at least one model file was found."""
        return not self.errors and not self.nothing_scanned

    def exit_code(self, fail_on: Severity = Severity.high) -> int:
        """CLI convention: 1 finding at/above ``fail_on``; else 2 if a file could not be scanned or
        analysed, or nothing was scanned; else 0."""
        if self.failed(fail_on):
            return 1
        return 0 if self.complete else 2

    def reason(self) -> str | None:
        """Why the result is incomplete (None when complete)."""
        if self.complete:
            return None
        parts = [f"{e.path}: {'not analysed: ' if e.kind == 'not-analysed' else ''}{e.message}"
                 for e in self.errors[:5]]
        if len(self.errors) > 5:
            parts.append(f"... {len(self.errors) - 5} more")
        if self.nothing_scanned:
            parts.insert(0, f"nothing scanned: no model file found ({self.files_scanned} file(s) read)")
        return "; ".join(parts)

    def to_check_result(self, fail_on: Severity = Severity.high) -> CheckResult:
        """The scan as a typed check (the findings become :class:`~bastion.core.results.Finding`s)."""
        from bastion.core.results import CheckResult

        res = CheckResult(
            name=CHECK_NAME, kind="supply-chain",
            status="complete" if self.complete else "incomplete", reason=self.reason(),
            seconds=round(self.seconds, 4),
            metrics={"files_scanned": self.files_scanned, "models_scanned": self.models_scanned,
                     "errors": sum(e.kind == "error" for e in self.errors),
                     "not_analysed": sum(e.kind == "not-analysed" for e in self.errors),
                     "findings": len(self.findings),
                     "worst": self.worst().value if self.worst() else None,
                     "failed": self.failed(fail_on),
                     "formats": self.formats, "error_files": [e.to_dict() for e in self.errors]},
            findings=[f.to_finding() for f in sorted(self.findings, key=lambda f: (-f.severity.rank,
                                                                                   f.location or "", f.offset or 0))],
        )
        res.measure("files_scanned", self.files_scanned, "count")
        res.measure("files_not_scanned", sum(e.kind == "error" for e in self.errors), "count")
        res.measure("files_not_analysed", sum(e.kind == "not-analysed" for e in self.errors), "count")
        res.measure("findings", len(self.findings), "count")
        return res

    def to_scan_result(self, paths: Sequence[str | os.PathLike[str]] = (),
                       fail_on: Severity = Severity.high) -> ScanResult:
        import datetime as dt

        from bastion.core.results import ScanResult

        check = self.to_check_result(fail_on)
        return ScanResult(tool={"name": "bastion", "version": __version__, "command": "inspect"},
                          finished_at=dt.datetime.now(dt.timezone.utc).isoformat(),
                          verdict="fail" if self.failed(fail_on) else "pass", fail_on=fail_on,
                          status="complete" if self.complete else "incomplete",
                          status_reason=check.reason, target={"paths": [safe_text(str(p)) for p in paths]},
                          checks=[check], summary=_summary(self, fail_on))


def _summary(res: InspectResult, fail_on: Severity) -> str:
    worst = res.worst()
    verdict = "FAIL" if res.failed(fail_on) else "pass" if res.complete else "INCOMPLETE"
    nothing = "nothing scanned (no model file found); " if res.nothing_scanned else ""
    return (f"{nothing}{res.files_scanned} file(s) scanned, {len(res.findings)} finding(s)"
            f"{f' (worst: {worst.value})' if worst else ''}, {len(res.errors)} file(s) not scanned or not "
            f"analysed; {verdict} at --fail-on {fail_on.value}")


def _walk(root: Path, cfg: InspectConfig, res: InspectResult) -> Iterator[tuple[Path, Path]]:
    """Yield (file, scan root) pairs; links are reported, then their targets scanned."""
    if not root.is_dir():
        yield root, root.parent
        return
    for dirpath, dirnames, filenames in os.walk(root, followlinks=cfg.follow_symlinks,
                                                onerror=lambda e: res.errors.append(
                                                    ScanError(str(e.filename), f"cannot list: {e.strerror}"))):
        dirnames.sort()
        for d in dirnames:
            p = Path(dirpath) / d
            if p.is_symlink() and not cfg.follow_symlinks:
                res.findings.append(make_finding(
                    "BASTION-SC-060", Severity.medium, f"Symbolic link to a directory: {d} -> {os.readlink(p)}",
                    location=str(p), description="Not followed (set limits.follow_symlinks to follow it)."))
        for name in sorted(filenames):
            yield Path(dirpath) / name, root


def _link_findings(path: Path, root: Path) -> list[ScanFinding]:
    out: list[ScanFinding] = []
    try:
        lst = os.lstat(path)
    except OSError:
        return out
    if stat.S_ISLNK(lst.st_mode):
        real = os.path.realpath(path)
        real_root = os.path.realpath(root)
        outside = os.path.commonpath([real, real_root]) != real_root
        out.append(make_finding(
            "BASTION-SC-060", Severity.medium if outside else Severity.info,
            f"Symbolic link {'leaving the scanned directory' if outside else 'inside the directory'}: "
            f"{path.name} -> {os.readlink(path)}", location=str(path),
            description="Loaders follow links: the file actually read is the link's target, which was scanned.",
            target=real))
    elif stat.S_ISREG(lst.st_mode) and lst.st_nlink > 1:
        out.append(make_finding(
            "BASTION-SC-060", Severity.low, f"Hard link: {path.name} has {lst.st_nlink} names",
            location=str(path), description="Another name of this file may live outside the model directory."))
    return out


def scan_file(path: str | os.PathLike[str], config: InspectConfig | None = None) -> FileScan:
    """Scan one file. Raises OSError only when the file cannot be opened; whatever happens while it
    is parsed, the findings made so far are kept and a failure is reported as "not analysed"."""
    cfg = config or InspectConfig()
    p = Path(path)
    ctx = ScanContext(cfg, p)

    with open(p, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        try:
            scan_stream(ctx, fh, size)
        except LimitExceeded as exc:
            ctx.add("BASTION-SC-008", Severity.high, f"Not fully analysed: {exc}", offset=exc.offset,
                    description="The file exceeds a configured scan limit (memo or opcode bombs, zip bombs, "
                    "deep nesting, very slow parses); what loading it would do is unknown.", limit=exc.limit)
            ctx.not_understood(f"limit {exc.limit} exceeded: {exc}")
        except Malformed as exc:
            ctx.add("BASTION-SC-007", Severity.medium, f"Malformed {ctx.formats[-1] if ctx.formats else 'file'}: "
                    f"{exc}", offset=exc.offset)
        except RecursionError:
            ctx.add("BASTION-SC-008", Severity.high, "Not fully analysed: nesting too deep for the parser",
                    limit="recursion")
            ctx.not_understood("nesting too deep for the parser")
        except MemoryError:
            ctx.not_understood("out of memory while parsing")
        except Exception as exc:  # noqa: BLE001 - a reader bug must not drop the findings already made
            log.debug("reader failure in %s", p, exc_info=True)
            ctx.not_understood(f"reader failure: {type(exc).__name__}: {exc}")
    ctx.summarise_suppressed()
    return FileScan(ctx.findings, ctx.formats, ctx.not_analysed, ctx.data_files)


def scan_paths(paths: Sequence[str | os.PathLike[str]], *, config: InspectConfig | None = None) -> InspectResult:
    """Scan files and directories (walked recursively) and return every finding and error.

    Never imports, unpickles or executes the content it scans.
    """
    cfg = config or InspectConfig()
    res = InspectResult()
    data_files: set[str] = set()
    t0 = time.perf_counter()
    for raw in paths:
        root = Path(raw)
        if not root.exists() and not root.is_symlink():
            res.errors.append(ScanError(str(root), "no such file or directory"))
            continue
        items = list(_walk(root, cfg, res))
        for path, scan_root in items:
            res.findings.extend(_link_findings(path, scan_root) if path != root else [])
            if path.is_symlink() and path != root and not path.exists():
                continue   # dangling link: reported above
            res.files_scanned += 1
            try:
                if not stat.S_ISREG(os.stat(path).st_mode):
                    res.errors.append(ScanError(str(path), "not a regular file (device, FIFO or socket)"))
                    continue
                scanned = scan_file(path, cfg)
            except OSError as exc:
                res.errors.append(ScanError(str(path), f"cannot read: {exc.strerror or exc}"))
                continue
            res.findings.extend(scanned.findings)
            res.formats[safe_text(str(path))] = scanned.formats
            res.models_scanned += scanned.model
            data_files.update(scanned.data_files)
            for why in scanned.not_analysed[:5]:
                res.errors.append(ScanError(str(path), why, kind="not-analysed"))
            if len(scanned.not_analysed) > 5:
                res.errors.append(ScanError(str(path), f"{len(scanned.not_analysed) - 5} more part(s) not "
                                            "analysed", kind="not-analysed"))
            if log.isEnabledFor(logging.INFO):
                log.info("%s: %s, %d finding(s)", path, "/".join(scanned.formats) or "?", len(scanned.findings))
    if data_files:     # ONNX external data: raw tensor bytes read by the runtime, never parsed as a format
        res.errors = [e for e in res.errors if not (e.message == UNKNOWN_FORMAT and
                                                    os.path.realpath(e.path) in data_files)]
    res.seconds = time.perf_counter() - t0
    return res


def inspect_check(paths: Sequence[str | os.PathLike[str]], *, config: InspectConfig | None = None,
                  fail_on: Severity = Severity.high) -> CheckResult:
    """Run inspect as a check of ``bastion scan``: the same findings as a :class:`CheckResult`."""
    return scan_paths(paths, config=config).to_check_result(fail_on)
