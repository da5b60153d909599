"""Model-directory manifests: walk a directory, hash every file, describe it as JSON.

The manifest format (``bastion-manifest/1``) is defined here and documented in
``docs/signing-and-registry.md``. In short:

* every regular file gets its size and a SHA-256 based digest, read streamed (never whole in memory);
* a file of at most ``chunk_size`` bytes gets ``"sha256:<hex>"``: the plain SHA-256 of its bytes,
  the same value ``sha256sum`` prints;
* a larger file is split into consecutive chunks of exactly ``chunk_size`` bytes (the last one may be
  shorter); each chunk is hashed with SHA-256 on its own (chunks are hashed in parallel threads), the
  hex digests are listed in order under ``"chunks"``, and the file digest is
  ``"sha256-chunked:<hex>"`` where ``<hex>`` is the SHA-256 of the concatenated 32-byte raw chunk
  digests. The digest depends only on the bytes and on ``chunk_size``, which the manifest records,
  never on the number of threads, so it is deterministic;
* symbolic links are never followed: they are recorded with their target string; a link whose target
  leaves the directory is refused when signing (the signature could not cover what it points to);
* the ``content_digest`` is the SHA-256 of the canonical JSON (sorted keys, no spaces) of the
  ``files`` list: one identity for the directory's content, used by the registry.

The chunked scheme is a one-level hash list in the spirit of Merkle (1987), "A digital signature based
on a conventional encryption function"; ``hashlib`` releases the GIL on large updates, so threads hash
chunks concurrently.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import posixpath
import stat
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MANIFEST_NAME = "bastion-manifest.json"
SIGNATURE_NAME = "bastion-manifest.json.sig"
MANIFEST_FORMAT = "bastion-manifest/1"
#: Files that are never part of a manifest (they hold the manifest and its signature).
ALWAYS_EXCLUDED: tuple[str, ...] = (MANIFEST_NAME, SIGNATURE_NAME)
#: Ignore rules applied unless ``use_default_ignores=False`` (CLI: ``--no-default-ignores``).
DEFAULT_IGNORES: tuple[str, ...] = (
    ".git", ".hg", ".svn", "__pycache__", ".DS_Store", ".ipynb_checkpoints", ".cache/huggingface",
)
DEFAULT_CHUNK_SIZE = 16 * 1024 * 1024
MIN_CHUNK_SIZE = 64 * 1024
_READ_SIZE = 1024 * 1024
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO swapped in after the walk must not block us


class FileChangedError(OSError):
    """A file's size changed while it was being hashed."""


@dataclass(frozen=True)
class Entry:
    """One manifest entry: a regular file (with digest) or a symbolic link (with target)."""

    path: str
    type: str  # "file" | "symlink"
    size: int | None = None
    digest: str | None = None
    chunks: tuple[str, ...] | None = None
    target: str | None = None

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"path": self.path, "type": self.type}
        if self.type == "file":
            doc["size"] = self.size
            doc["digest"] = self.digest
            if self.chunks is not None:
                doc["chunks"] = list(self.chunks)
        else:
            doc["target"] = self.target
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Entry:
        kind = doc["type"]
        if kind == "file":
            size = doc["size"]
            if not isinstance(size, int) or size < 0 or not isinstance(doc["digest"], str):
                raise ValueError(f"bad file entry for {doc.get('path')!r}")
            chunks = doc.get("chunks")
            return cls(str(doc["path"]), "file", size, doc["digest"],
                       tuple(str(c) for c in chunks) if chunks is not None else None)
        if kind == "symlink":
            return cls(str(doc["path"]), "symlink", target=str(doc["target"]))
        raise ValueError(f"unknown entry type {kind!r}")


@dataclass
class WalkResult:
    """What a walk of a model directory found, before hashing."""

    files: list[tuple[str, int]] = field(default_factory=list)  # (relative path, size)
    symlinks: list[tuple[str, str]] = field(default_factory=list)  # (relative path, target)
    ignored: list[str] = field(default_factory=list)  # paths skipped by an ignore rule
    special: list[str] = field(default_factory=list)  # FIFOs, sockets, devices
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def is_ignored(rel_path: str, name: str, rules: Sequence[str]) -> bool:
    """Whether ``rel_path`` (posix, relative to the root) matches an ignore rule.

    A rule without ``/`` is matched (fnmatch, case-sensitive) against the entry's own name at any
    depth (``.git``, ``*.tmp``); a rule with ``/`` is matched against the whole relative path
    (``logs/*.txt``). A matching directory is skipped with everything under it.
    """
    for rule in rules:
        rule = rule.strip("/")
        if "/" in rule:
            if fnmatch.fnmatchcase(rel_path, rule):
                return True
        elif fnmatch.fnmatchcase(name, rule):
            return True
    return False


def path_ignored(rel_path: str, rules: Sequence[str]) -> bool:
    """Whether ``rel_path`` or one of its parent directories matches an ignore rule."""
    parts = rel_path.split("/")
    return any(is_ignored("/".join(parts[: i + 1]), parts[i], rules) for i in range(len(parts)))


def link_escapes(rel_path: str, target: str) -> bool:
    """Whether a symlink at ``rel_path`` with ``target`` points outside the directory."""
    if posixpath.isabs(target) or os.path.isabs(target):
        return True
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel_path), target.replace(os.sep, "/")))
    return resolved == ".." or resolved.startswith("../")


def walk_directory(root: str | os.PathLike[str], rules: Sequence[str]) -> WalkResult:
    """List the files and links under ``root`` (sorted, never following links)."""
    root = Path(root)
    out = WalkResult()

    def visit(dir_path: Path, prefix: str) -> None:
        try:
            with os.scandir(dir_path) as it:
                items = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            out.unreadable.append((prefix.rstrip("/") or ".", exc.strerror or str(exc)))
            return
        for item in items:
            rel = prefix + item.name
            if not prefix and item.name in ALWAYS_EXCLUDED:
                continue
            if is_ignored(rel, item.name, rules):
                out.ignored.append(rel)
                continue
            try:
                st = item.stat(follow_symlinks=False)
            except OSError as exc:
                out.unreadable.append((rel, exc.strerror or str(exc)))
                continue
            if stat.S_ISLNK(st.st_mode):
                out.symlinks.append((rel, os.readlink(item.path)))
            elif stat.S_ISDIR(st.st_mode):
                visit(Path(item.path), rel + "/")
            elif stat.S_ISREG(st.st_mode):
                out.files.append((rel, st.st_size))
            else:
                out.special.append(rel)

    visit(root, "")
    return out


def _hash_range(path: Path, offset: int, length: int | None) -> bytes:
    """SHA-256 of ``length`` bytes at ``offset`` (``None``: to the end, which must be ``offset``=0)."""
    h = hashlib.sha256()
    buf = bytearray(_READ_SIZE)
    view = memoryview(buf)
    fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW | _O_BINARY | _O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FileChangedError("no longer a regular file")
    with os.fdopen(fd, "rb", buffering=0) as fh:
        if offset:
            fh.seek(offset)
        remaining = length
        while remaining is None or remaining > 0:
            want = _READ_SIZE if remaining is None else min(_READ_SIZE, remaining)
            n = fh.readinto(view[:want])
            if not n:
                break
            h.update(view[:n])
            if remaining is not None:
                remaining -= n
        if remaining:
            raise FileChangedError("file shrank while being hashed")
    return h.digest()


def default_workers() -> int:
    return max(1, min(32, os.cpu_count() or 1))


@dataclass
class HashOutcome:
    entries: dict[str, Entry]
    errors: dict[str, str]
    bytes_hashed: int


def hash_files(
    root: str | os.PathLike[str],
    files: Iterable[tuple[str, int]],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> HashOutcome:
    """Hash ``files`` (relative path, expected size) under ``root`` with the manifest scheme.

    Whole small files and chunks of large files are spread over a thread pool; the result does not
    depend on the number of workers. A file that cannot be read (or whose size changes while it is
    read) lands in ``errors`` instead of aborting the others. ``progress(advance_bytes, total_bytes)``
    is called from the calling thread as pieces complete.
    """
    if chunk_size < MIN_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be at least {MIN_CHUNK_SIZE} bytes, got {chunk_size}")
    root = Path(root)
    files = list(files)
    tasks: list[tuple[str, int, int, int | None]] = []  # (rel, chunk index, offset, length)
    nchunks: dict[str, int] = {}
    for rel, size in files:
        if size <= chunk_size:
            nchunks[rel] = 1
            tasks.append((rel, 0, 0, None))
        else:
            n = -(-size // chunk_size)
            nchunks[rel] = n
            for i in range(n):
                tasks.append((rel, i, i * chunk_size, min(chunk_size, size - i * chunk_size)))
    sizes = dict(files)

    def run(task: tuple[str, int, int, int | None]) -> tuple[str, int, bytes | None, str | None, int]:
        rel, idx, off, length = task
        try:
            digest = _hash_range(root / rel, off, length)
            if length is None:  # whole file: make sure it is still the size the walk saw
                now = os.stat(root / rel, follow_symlinks=False).st_size
                if now != sizes[rel]:
                    raise FileChangedError(f"size changed from {sizes[rel]} to {now} while hashing")
            return rel, idx, digest, None, length if length is not None else sizes[rel]
        except OSError as exc:
            return rel, idx, None, exc.strerror or str(exc), 0

    n_workers = workers or default_workers()
    parts: dict[str, list[bytes | None]] = {rel: [None] * nchunks[rel] for rel, _ in files}
    errors: dict[str, str] = {}
    total = 0
    grand_total = sum(size for _, size in files)

    def collect(res: tuple[str, int, bytes | None, str | None, int]) -> None:
        nonlocal total
        n = _collect(res, parts, errors)
        total += n
        if progress is not None:
            progress(n, grand_total)

    if n_workers == 1 or len(tasks) <= 1:
        for task in tasks:
            collect(run(task))
    else:
        pool = ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="bastion-hash")
        try:
            for future in [pool.submit(run, task) for task in tasks]:
                collect(future.result())
        except BaseException:  # Ctrl-C: drop the queued chunks instead of hashing them all first
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
    entries: dict[str, Entry] = {}
    for rel, size in files:
        if rel in errors:
            continue
        digests = parts[rel]
        if len(digests) == 1:
            entries[rel] = Entry(rel, "file", size, "sha256:" + digests[0].hex())  # type: ignore[union-attr]
        else:
            raw = b"".join(d for d in digests if d is not None)
            entries[rel] = Entry(rel, "file", size, "sha256-chunked:" + hashlib.sha256(raw).hexdigest(),
                                 tuple(d.hex() for d in digests if d is not None))
    return HashOutcome(entries, errors, total)


def _collect(res: tuple[str, int, bytes | None, str | None, int],
             parts: dict[str, list[bytes | None]], errors: dict[str, str]) -> int:
    rel, idx, digest, err, n = res
    if err is not None:
        errors.setdefault(rel, err)
    else:
        parts[rel][idx] = digest
    return n


def content_digest(entries: Iterable[dict[str, Any]]) -> str:
    """SHA-256 of the canonical JSON of the ``files`` list: the directory's content identity."""
    canonical = json.dumps(sorted(entries, key=lambda e: e["path"]), sort_keys=True,
                           separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(canonical.encode("ascii")).hexdigest()


def effective_rules(ignore: Sequence[str] | None, use_default_ignores: bool) -> list[str]:
    """The ignore rules in force: defaults (unless disabled) followed by the user's, deduplicated."""
    rules = list(DEFAULT_IGNORES) if use_default_ignores else []
    for rule in ignore or ():
        if rule and rule not in rules:
            rules.append(rule)
    return rules


@dataclass
class BuiltManifest:
    """A manifest document plus what the walk and the hashing ran into."""

    document: dict[str, Any]
    walk: WalkResult
    errors: dict[str, str]
    bytes_hashed: int

    @property
    def content_digest(self) -> str:
        return str(self.document["content_digest"])


def build_manifest(
    root: str | os.PathLike[str],
    rules: Sequence[str],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BuiltManifest:
    """Walk ``root`` and hash everything: the manifest document (without a timestamp)."""
    from bastion import __version__

    walk = walk_directory(root, rules)
    outcome = hash_files(root, walk.files, chunk_size=chunk_size, workers=workers, progress=progress)
    entries = [outcome.entries[rel] for rel, _ in walk.files if rel in outcome.entries]
    entries += [Entry(rel, "symlink", target=target) for rel, target in walk.symlinks]
    files = sorted((e.to_dict() for e in entries), key=lambda d: d["path"])
    doc: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "tool": f"bastion {__version__}",
        "hashing": {"algorithm": "sha256", "chunk_size": chunk_size, "scheme": "sha256-chunked/v1"},
        "ignore": list(rules),
        "excluded": list(ALWAYS_EXCLUDED),
        "content_digest": content_digest(files),
        "files": files,
    }
    logger.info("hashed %d files (%d bytes) under %s", len(walk.files), outcome.bytes_hashed, root)
    return BuiltManifest(doc, walk, outcome.errors, outcome.bytes_hashed)
