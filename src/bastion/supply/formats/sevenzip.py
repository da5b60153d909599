"""7z archives: start header checked by bastion, members listed and extracted to memory.

Structure per the 7z format description (7-Zip ``DOC/7zFormat.txt``): a 32-byte signature header
(magic, version, CRC-32 of the next 20 bytes, then offset, size and CRC-32 of the "next header"
that lists the members). Packed data is grouped in *folders* (solid blocks); a folder is
decompressed as one stream, so the compression ratio is judged per folder.

Plain archives (LZMA2, LZMA or stored, BCJ x86 or Delta filters, no encryption) are read by
:mod:`bastion.supply.formats.sevenzip_reader` on the standard library's :mod:`lzma`; any other archive
goes to ``py7zr`` (optional, imported lazily, only then; >= 1.1.3 for ``max_extract_size``). Either
way every member is extracted into memory under the scanner's limits (member size, total unpacked,
ratio, member count, depth, time) and analysed by content like a zip member. Without py7zr such an
archive gets a medium "not analysed" finding. Nothing is written to disk.
"""

from __future__ import annotations

import io
import logging
import lzma
import re
import stat
import struct
import zipfile
import zlib
from pathlib import PurePosixPath
from typing import Any, BinaryIO

from bastion.core.severity import Severity
from bastion.supply.context import LimitExceeded, Malformed, ScanContext

log = logging.getLogger(__name__)

_START = struct.Struct("<QQI")   # next header offset, size, CRC-32 (after the 12 first bytes)
_DRIVE = re.compile(r"^[A-Za-z]:")
_BOMB_FLOOR = 1024**2            # a folder below this many unpacked bytes is never called a bomb


def scan_7z(ctx: ScanContext, fh: BinaryIO, size: int) -> None:
    """Check the signature header, then list and scan every member (py7zr)."""
    head = fh.read(32)
    if len(head) < 32 or zlib.crc32(head[12:32]) != int.from_bytes(head[8:12], "little"):
        ctx.add("BASTION-SC-010", Severity.high, "7z start header CRC mismatch", offset=8)
    else:
        next_off, next_size, _crc = _START.unpack_from(head, 12)
        end = 32 + next_off + next_size
        if end < size:
            ctx.add("BASTION-SC-010", Severity.medium, f"{size - end} bytes after the 7z header end",
                    offset=end, description="Data after the archive's end is invisible to 7z readers and "
                    "seen by tools that read the file otherwise.")
    from bastion.supply.formats import sevenzip_reader

    try:
        archive = sevenzip_reader.read_archive(fh, size)
    except sevenzip_reader.HeaderEncrypted:
        _header_encrypted(ctx)
        return
    except sevenzip_reader.Broken as exc:
        _broken(ctx, str(exc))
        return
    except (MemoryError, RecursionError):
        raise
    except Exception:  # noqa: BLE001 - Unsupported, or data this reader cannot decode: py7zr decides
        archive = None
    if archive is not None:
        _scan_plain(ctx, fh, archive)
        return
    try:
        import py7zr
    except ImportError:
        ctx.add("BASTION-SC-050", Severity.medium, "7z archive not analysed (py7zr is not installed)",
                description="Install py7zr (pip install 'bastion[formats]') to let bastion inspect the members "
                "of 7z archives.")
        ctx.not_understood("7z archive: py7zr is not installed (pip install 'bastion[formats]')")
        return
    fh.seek(0)
    try:
        archive = _open(py7zr, fh, ctx)
    except py7zr.PasswordRequired:
        _header_encrypted(ctx)
        return
    except (LimitExceeded, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - py7zr raises many types (Bad7zFile, struct.error...)
        _broken(ctx, f"{type(exc).__name__}: {exc}")
        return
    with archive:
        _scan_archive(ctx, py7zr, archive)


def _broken(ctx: ScanContext, why: str) -> None:
    ctx.add("BASTION-SC-010", Severity.high, f"Broken 7z archive: {why}", description="The 7z header cannot "
            "be read; other 7z readers may still read it, so its content is unknown.")
    ctx.not_understood(f"7z header cannot be read: {why}")


def _header_encrypted(ctx: ScanContext) -> None:
    ctx.add("BASTION-SC-010", Severity.high, "7z archive header is encrypted (password): members unknown",
            description="Neither the member list nor the content can be analysed without the password; a "
            "loader given the password reads what no scanner saw.", encrypted="header")
    ctx.not_understood("7z archive header is encrypted")


def _content_encrypted(ctx: ScanContext) -> None:
    ctx.add("BASTION-SC-010", Severity.high, "7z archive content is encrypted (password)",
            description="Encrypted members cannot be analysed; a loader given the password reads what no "
            "scanner saw. Members stored unencrypted are still analysed.", encrypted="content")
    ctx.not_understood("7z archive content is encrypted")


def _open(py7zr: Any, fh: BinaryIO, ctx: ScanContext) -> Any:
    budget = max(1, ctx.config.max_total_unpacked - ctx.unpacked[0])
    try:
        return py7zr.SevenZipFile(fh, mode="r", max_extract_size=budget)
    except TypeError:   # py7zr < 1.1.3: no extraction cap in the library; ours still applies per member
        fh.seek(0)
        return py7zr.SevenZipFile(fh, mode="r")


def _plan(ctx: ScanContext, entries: list[tuple[str, bool, bool, int]],
          blocks: list[tuple[list[str], int, int]]) -> set[str]:
    """Checks shared by both readers on the member list ``(name, is directory, is link, size)`` and the
    solid blocks ``(names, unpacked, packed)``: names, duplicates, member size, bombs. Returns the names
    not to extract."""
    from bastion.supply.formats.zip import _check_name

    if len(entries) > ctx.config.max_members:
        raise LimitExceeded("max_members", f"archive has {len(entries)} members")
    seen: set[str] = set()
    skip: set[str] = set()
    for name, is_directory, is_symlink, uncompressed in entries:
        if name in seen and not is_directory:
            ctx.add("BASTION-SC-010", Severity.high, f"Duplicate member name {name!r}",
                    description="Two entries share a name: readers disagree on which one is loaded.")
        seen.add(name)
        _check_name(ctx, _as_zipinfo(name, is_symlink))
        if _refused(name):
            skip.add(name)      # reported by _check_name; py7zr would abort the whole extraction on it
        if not is_directory and uncompressed > ctx.config.max_member_bytes:
            ctx.add("BASTION-SC-008", Severity.high, f"Member {name!r} larger than max_member_bytes "
                    f"({uncompressed} bytes)", limit="max_member_bytes")
            skip.add(name)
    for names, unpacked, packed in blocks:
        ratio = unpacked / max(packed, 1)
        if unpacked > _BOMB_FLOOR and ratio > ctx.config.max_ratio:
            ctx.add("BASTION-SC-008", Severity.high, f"7z block holding {', '.join(map(repr, names[:3]))}"
                    f"{' ...' if len(names) > 3 else ''} expands {ratio:.0f}x (zip bomb)",
                    ratio=round(ratio, 1), limit="max_ratio", members=len(names))
            skip.update(names)
    return skip


def _scan_plain(ctx: ScanContext, fh: BinaryIO, archive: Any) -> None:
    """Extract and scan the members of an archive read by :mod:`sevenzip_reader`, one solid block at a
    time: a member with a bad CRC is scanned and flagged; a block that fails to decode is reported with
    the members it still held, and the other blocks are scanned."""
    members = archive.members
    if len(members) > ctx.config.max_members:
        raise LimitExceeded("max_members", f"archive has {len(members)} members")
    if any(f.encrypted for f in archive.folders):
        _content_encrypted(ctx)
    skip = _plan(ctx, [(m.name, m.is_directory and not m.has_stream, m.is_symlink, m.size) for m in members],
                 [([m.name for m in members if m.folder == i], f.unpack_size, f.pack_size)
                  for i, f in enumerate(archive.folders)])
    for i, folder in enumerate(archive.folders):
        inside = [m for m in members if m.folder == i]
        if not folder.encrypted and any(m.name not in skip for m in inside):
            _scan_block(ctx, fh, folder, inside, skip)


def _scan_block(ctx: ScanContext, fh: BinaryIO, folder: Any, inside: list[Any], skip: set[str]) -> None:
    from bastion.supply.formats.sevenzip_reader import folder_data

    chunks = folder_data(fh, folder)
    buf = memoryview(b"")
    scanned = 0
    try:
        for m in inside:            # the members' data follow each other in the block
            writer = None if m.name in skip else _BoundedWriter(ctx, m.name)
            crc, left = 0, m.size
            while left:
                if not buf:
                    buf = memoryview(next(chunks))
                piece, buf = buf[:left], buf[left:]
                left -= len(piece)
                crc = zlib.crc32(piece, crc)
                if writer is None:
                    ctx.check_time()
                    ctx.count_unpacked(len(piece))
                else:
                    writer.write(piece)
            if writer is not None:
                scanned += 1
                _scan_member(ctx, m.name, bytes(writer.buf), bad_crc=m.crc is not None and crc != m.crc)
    except (lzma.LZMAError, EOFError, StopIteration) as exc:
        left = sum(m.name not in skip for m in inside) - scanned
        why = f"7z extraction failed ({type(exc).__name__}: {exc})"
        ctx.add("BASTION-SC-010", Severity.high, f"{why}; {left} member(s) not analysed",
                description="7z readers stop at this error or skip the data, so part of the content is unknown.")
        ctx.not_understood(f"{why}; {left} member(s) not analysed")


def _scan_member(ctx: ScanContext, name: str, data: bytes, *, bad_crc: bool = False) -> None:
    """Scan one extracted member by content (a bad CRC is flagged, and the data still scanned)."""
    from bastion.supply.formats import scan_stream

    sub = ctx.child(name)
    if bad_crc:
        sub.add("BASTION-SC-010", Severity.high, f"CRC-32 mismatch in member {name!r}",
                description="The data does not match its checksum: it was altered after the archive was "
                "written, or crafted to break scanners that stop on CRC errors.")
    try:
        scan_stream(sub, io.BytesIO(data), len(data))
    except Malformed as exc:
        sub.add("BASTION-SC-010", Severity.high, f"Member {name!r} cannot be read: {exc}", offset=exc.offset)


def _scan_archive(ctx: ScanContext, py7zr: Any, archive: Any) -> None:
    infos = archive.list()
    if len(infos) > ctx.config.max_members:
        raise LimitExceeded("max_members", f"archive has {len(infos)} members")
    if archive.needs_password():
        _content_encrypted(ctx)
    skip = _plan(ctx, [(i.filename, i.is_directory, i.is_symlink, i.uncompressed or 0) for i in infos],
                 _folders(infos))
    targets = [i.filename for i in infos if not i.is_directory and i.filename not in skip]
    if not targets:
        return
    factory = _MemberFactory(ctx, len(targets))
    try:
        archive.extract(targets=targets, factory=factory)
        factory.finish()
    except py7zr.exceptions.CrcError as exc:
        factory.finish_after_crc_error(exc.filename)
    except py7zr.PasswordRequired:
        factory.finish(stopped="encrypted")
    except py7zr.exceptions.DecompressionBombError as exc:
        raise LimitExceeded("max_total_unpacked", f"7z archive: {exc}") from None
    except (LimitExceeded, MemoryError, RecursionError):
        raise
    except Exception as exc:  # noqa: BLE001 - corrupt packed streams: lzma/zstd/bz2 errors, Bad7zFile
        factory.finish(stopped=f"{type(exc).__name__}: {exc}")


def _refused(name: str) -> bool:
    """Names py7zr refuses to extract (a ``..`` component, a drive letter), backslashes read as separators."""
    return ".." in PurePosixPath(name.replace("\\", "/")).parts or bool(_DRIVE.match(name))


def _as_zipinfo(name: str, is_symlink: bool) -> zipfile.ZipInfo:
    """A ZipInfo carrying a 7z member's name and link bit, for the zip scanner's name checks."""
    zi = zipfile.ZipInfo(name)
    zi.header_offset = None  # type: ignore[assignment]
    if is_symlink:
        zi.external_attr = (stat.S_IFLNK | 0o777) << 16
    return zi


def _folders(infos: list[Any]) -> list[tuple[list[str], int, int]]:
    """Group members by folder (solid block): py7zr's list gives a folder's packed size on its first
    member and ``None`` on the others; directories and empty streams have 0 and no folder."""
    out: list[tuple[list[str], int, int]] = []
    for info in infos:
        if info.is_directory:
            continue
        if info.compressed:
            out.append(([info.filename], info.uncompressed or 0, info.compressed))
        elif info.compressed is None and out:
            names, unpacked, packed = out[-1]
            names.append(info.filename)
            out[-1] = (names, unpacked + (info.uncompressed or 0), packed)
    return out


class _MemberFactory:
    """py7zr ``WriterFactory``: one bounded in-memory buffer per member. A member is scanned when py7zr
    starts the next one (its CRC was checked by then), or by :meth:`finish` for the last one."""

    def __init__(self, ctx: ScanContext, n_targets: int) -> None:
        self.ctx, self.n_targets = ctx, n_targets
        self.pending: _BoundedWriter | None = None
        self.done = 0

    def create(self, filename: str) -> _BoundedWriter:
        self._flush()
        self.pending = _BoundedWriter(self.ctx, filename)
        return self.pending

    def _flush(self, *, bad_crc: bool = False) -> None:
        w, self.pending = self.pending, None
        if w is None:
            return
        self.done += 1
        data = bytes(w.buf)
        w.buf = bytearray()
        _scan_member(self.ctx, w.name, data, bad_crc=bad_crc)

    def finish(self, *, stopped: str | None = None) -> None:
        """Scan the last member; after an extraction error, drop the member py7zr failed in (its data is
        incomplete) and report how many were left unread."""
        if stopped is None:
            self._flush()
            return
        self.pending = None
        if stopped == "encrypted":
            return      # reported once for the archive; unencrypted members before it were scanned
        self._report_left(f"7z extraction failed ({stopped})")

    def finish_after_crc_error(self, filename: str | None) -> None:
        """py7zr checked a CRC after decompressing: the member it names is complete, so it is still scanned
        (as zip members with a bad CRC are); the members after it are reported as not analysed."""
        if self.pending is not None and filename == self.pending.name:
            self._flush(bad_crc=True)
        else:   # a skipped member's or a whole block's CRC: the pending member passed its own check
            self._flush()
            what = f"member {filename!r}" if filename else "a 7z block"
            self.ctx.add("BASTION-SC-010", Severity.high, f"CRC-32 mismatch in {what}",
                         description="The data does not match its checksum: it was altered after the archive "
                         "was written, or crafted to break scanners that stop on CRC errors.")
        self._report_left("7z extraction stopped at a CRC error")

    def _report_left(self, why: str) -> None:
        left = self.n_targets - self.done
        if left > 0:
            self.ctx.add("BASTION-SC-010", Severity.high, f"{why}; {left} member(s) not analysed",
                         description="7z readers stop at this error or skip the data, so part of the content "
                         "is unknown.")
            self.ctx.not_understood(f"{why}; {left} member(s) not analysed")


class _BoundedWriter:
    """In-memory member buffer (the py7zr ``Py7zIO`` interface) that enforces the scan limits as py7zr
    writes decompressed chunks: max_member_bytes, max_total_unpacked (shared) and the time limit."""

    def __init__(self, ctx: ScanContext, name: str) -> None:
        self.ctx, self.name, self.buf, self.pos = ctx, name, bytearray(), 0

    def write(self, s: bytes | bytearray) -> int:
        self.ctx.check_time()
        if len(self.buf) + len(s) > self.ctx.config.max_member_bytes:
            raise LimitExceeded("max_member_bytes", f"7z member {self.name} inflates past "
                                f"{self.ctx.config.max_member_bytes} bytes")
        self.ctx.count_unpacked(len(s))
        self.buf += s
        return len(s)

    def read(self, size: int | None = None) -> bytes:
        end = len(self.buf) if size is None or size < 0 else self.pos + size
        out = bytes(self.buf[self.pos:end])
        self.pos += len(out)
        return out

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = {0: 0, 1: self.pos, 2: len(self.buf)}[whence] + offset
        return self.pos

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None

    def size(self) -> int:
        return len(self.buf)
