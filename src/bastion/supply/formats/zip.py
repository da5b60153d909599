"""Zip archives (PyTorch, TorchScript, Keras .keras, NumPy .npz, plain zip), read member by member.

Structure per PKWARE APPNOTE 6.3.x: each central-directory entry is checked against its local
file header (name, flags, method), the end record's entry count against the directory, and
member data is inflated by this module under size and ratio bounds, with the CRC-32 compared
by us (so a CRC mismatch is a finding, not a crash that skips the file).
"""

from __future__ import annotations

import bz2
import io
import lzma
import posixpath
import stat
import struct
import zipfile
import zlib
from typing import BinaryIO

from bastion.core.severity import Severity
from bastion.supply.context import LimitExceeded, Malformed, ScanContext

_LOCAL = struct.Struct("<4sHHHHHIIIHH")
_EOCD = struct.Struct("<4sHHHHIIH")
_PEEK = 4096


def _read_local(fh: BinaryIO, info: zipfile.ZipInfo) -> tuple[int, str, int, int]:
    """Return (data offset, local name, local flags, local method) of a member."""
    if info.header_offset < 0:
        raise Malformed(f"local header offset {info.header_offset} is before the start of the file", 0)
    fh.seek(info.header_offset)
    raw = fh.read(_LOCAL.size)
    if len(raw) < _LOCAL.size:
        raise Malformed("local header truncated", info.header_offset)
    sig, _ver, flags, method, _t, _d, _crc, _cs, _us, nlen, elen = _LOCAL.unpack(raw)
    if sig != b"PK\x03\x04":
        raise Malformed("central directory points at no local header", info.header_offset)
    name = fh.read(nlen).decode("utf-8" if flags & 0x800 else "cp437", "replace")
    return info.header_offset + _LOCAL.size + nlen + elen, name, flags, method


def read_member(ctx: ScanContext, fh: BinaryIO, info: zipfile.ZipInfo, data_offset: int, limit: int) -> bytes:
    """Inflate up to ``limit`` bytes of a member (stored, deflate, bzip2)."""
    if info.file_size > ctx.config.max_member_bytes:
        raise LimitExceeded("max_member_bytes", f"member {info.filename} is {info.file_size} bytes")
    fh.seek(data_offset)
    comp = fh.read(min(info.compress_size, ctx.config.max_member_bytes + 1))
    method = info.compress_type
    if method == zipfile.ZIP_STORED:
        data = comp[:limit]
    elif method == zipfile.ZIP_DEFLATED:
        d = zlib.decompressobj(-15)
        data = d.decompress(comp, limit)
    elif method == zipfile.ZIP_BZIP2:
        d2 = bz2.BZ2Decompressor()
        data = d2.decompress(comp, max_length=limit)
    elif method == zipfile.ZIP_LZMA:
        with zipfile.ZipFile(fh) as zf:   # zip's LZMA framing: let zipfile parse it
            with zf.open(info) as m:
                data = m.read(limit)
    else:
        raise Malformed(f"unsupported compression method {method}", data_offset)
    ctx.count_unpacked(len(data))
    return data


def scan_zip(ctx: ScanContext, fh: BinaryIO, size: int) -> None:
    try:
        zf = zipfile.ZipFile(fh)
    except (zipfile.BadZipFile, ValueError, EOFError, NotImplementedError, OSError) as exc:
        ctx.add("BASTION-SC-010", Severity.high, f"Broken zip archive: {exc}",
                description="The zip central directory cannot be read; loaders with other zip readers may "
                "still read it, so its content is unknown.")
        ctx.not_understood(f"zip central directory cannot be read: {exc}")
        return
    infos = zf.infolist()
    if len(infos) > ctx.config.max_members:
        raise LimitExceeded("max_members", f"archive has {len(infos)} members")
    _check_eocd(ctx, fh, size, len(infos))
    names = [i.filename for i in infos]
    torch_prefixes = {n[: -len("data.pkl")] for n in names if n == "data.pkl" or n.endswith("/data.pkl")}
    torchscript = any("/code/" in n or n.endswith("constants.pkl") for n in names)
    keras = "config.json" in names and ("metadata.json" in names or "model.weights.h5" in names)
    if torch_prefixes:
        ctx.formats[-1] = "torchscript" if torchscript else "pytorch-zip"
    elif keras:
        ctx.formats[-1] = "keras"
    elif names and all(n.endswith(".npy") for n in names):
        ctx.formats[-1] = "npz"

    seen: dict[str, int] = {}
    offsets: dict[int, str] = {}
    for info in infos:
        ctx.check_time()
        name = info.filename
        if name in seen:
            ctx.add("BASTION-SC-010", Severity.high, f"Duplicate member name {name!r}",
                    offset=info.header_offset, description="Two entries share a name: readers disagree on "
                    "which one is loaded, so a scanner may see the benign one.")
        seen[name] = info.header_offset
        if info.header_offset in offsets:
            ctx.add("BASTION-SC-010", Severity.high, f"Members {offsets[info.header_offset]!r} and {name!r} overlap",
                    offset=info.header_offset, description="Central-directory entries share local data "
                    "(overlapping entries are a zip-bomb and confusion technique).")
        offsets[info.header_offset] = name
        _check_name(ctx, info)
        try:
            data_offset, local_name, local_flags, local_method = _read_local(fh, info)
        except Malformed as exc:
            ctx.add("BASTION-SC-010", Severity.high, f"Member {name!r}: {exc}", offset=exc.offset)
            continue
        if local_name != name:
            ctx.add("BASTION-SC-010", Severity.high,
                    f"Member name differs between headers: central {name!r}, local {local_name!r}",
                    offset=info.header_offset, description="Stream readers use the local name and "
                    "directory readers the central one: each sees a different archive.")
        if (local_flags & ~0x8) != (info.flag_bits & ~0x8) or local_method != info.compress_type:
            ctx.add("BASTION-SC-010", Severity.high, f"Member {name!r}: local and central headers disagree "
                    f"(flags {local_flags:#x}/{info.flag_bits:#x}, method {local_method}/{info.compress_type})",
                    offset=info.header_offset)
        encrypted = bool(info.flag_bits & 0x1)
        if encrypted:
            ctx.add("BASTION-SC-010", Severity.high, f"Member {name!r} is flagged as encrypted (flag bit 0)",
                    offset=info.header_offset, description="Some loaders ignore the flag and read the data "
                    "anyway; bastion analyses the member when its data inflates to its checksum without a "
                    "password, and reports it as not analysed otherwise.")
        if not name:
            ctx.add("BASTION-SC-010", Severity.high, "Member with an empty name", offset=info.header_offset,
                    description="Readers disagree on such an entry (zipfile's is_dir() fails on it).")
        elif name.endswith("/"):      # a directory (ZipInfo.is_dir, which fails on an empty name)
            continue
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > 1024**2 and ratio > ctx.config.max_ratio:
            ctx.add("BASTION-SC-008", Severity.high, f"Member {name!r} expands {ratio:.0f}x (zip bomb)",
                    offset=info.header_offset, ratio=round(ratio, 1), limit="max_ratio")
            continue
        is_storage = any(name.startswith(p + "data/") for p in torch_prefixes) or name.endswith(
            "/.data/serialization_id") or name == ".data/serialization_id"
        if is_storage:
            continue   # raw tensor bytes: never unpickled, never read in full
        _scan_member(ctx, fh, info, data_offset, torchscript and name.endswith(".pkl"), encrypted)


def _scan_member(ctx: ScanContext, fh: BinaryIO, info: zipfile.ZipInfo, data_offset: int, torchscript: bool,
                 encrypted: bool = False) -> None:
    from bastion.supply.formats import detect, scan_stream

    sub = ctx.child(info.filename)
    if encrypted:
        try:
            data = read_member(sub, fh, info, data_offset, ctx.config.max_member_bytes)
            readable = len(data) == info.file_size and zlib.crc32(data) == info.CRC
        except (Malformed, zlib.error, OSError, EOFError, ValueError, NotImplementedError, lzma.LZMAError,
                zipfile.BadZipFile):
            readable = False
        if not readable:
            sub.not_understood(f"member {info.filename!r} is encrypted")
            return
    try:
        head = read_member(sub, fh, info, data_offset, _PEEK)
        kind = detect(head, info.file_size)
        if kind == "maybe-pickle" and not info.filename.endswith(".pkl") and info.file_size > 64 * 1024**2:
            return   # large opaque blob, not a pickle by its first opcode: nothing executable
        # never more than the directory declares (plus one byte to see a liar): bounded memory per member
        data = head if info.file_size <= _PEEK else read_member(sub, fh, info, data_offset,
                                                                min(ctx.config.max_member_bytes,
                                                                    info.file_size + 1))
        if len(data) != info.file_size:
            sub.add("BASTION-SC-010", Severity.high, f"Member {info.filename!r} inflates to {len(data)} bytes, "
                    f"directory says {info.file_size}", offset=info.header_offset)
        elif zlib.crc32(data) != info.CRC:
            sub.add("BASTION-SC-010", Severity.high, f"CRC-32 mismatch in member {info.filename!r}",
                    offset=info.header_offset, description="The data does not match its checksum: it was "
                    "altered after the archive was written, or crafted to break scanners that stop on CRC errors.")
        if torchscript:
            from bastion.supply.pickle_scan import scan_pickle_stream

            sub.formats.append("pickle")
            try:
                scan_pickle_stream(sub, io.BytesIO(data), torchscript=True)
            except Malformed as exc:
                sub.add("BASTION-SC-007", Severity.medium, f"Malformed pickle: {exc}", offset=exc.offset)
            return
        scan_stream(sub, io.BytesIO(data), len(data))
    except Malformed as exc:
        sub.add("BASTION-SC-010", Severity.high, f"Member {info.filename!r} cannot be read: {exc}",
                offset=info.header_offset)
    except (zlib.error, OSError, EOFError, ValueError, NotImplementedError, lzma.LZMAError,
            zipfile.BadZipFile) as exc:
        sub.add("BASTION-SC-010", Severity.high, f"Member {info.filename!r} cannot be inflated: {exc}",
                offset=info.header_offset, description="Loaders with other zip readers may still read it, "
                "so its content is unknown.")
        sub.not_understood(f"member {info.filename!r} cannot be inflated: {exc}")


def _check_name(ctx: ScanContext, info: zipfile.ZipInfo) -> None:
    name = info.filename
    norm = posixpath.normpath(name.replace("\\", "/"))
    if name.startswith(("/", "\\")) or norm.startswith("..") or (len(name) > 1 and name[1] == ":"):
        ctx.add("BASTION-SC-011", Severity.high, f"Member path {name!r} escapes the archive",
                offset=info.header_offset)
    mode = info.external_attr >> 16
    if mode and stat.S_ISLNK(mode):
        ctx.add("BASTION-SC-011", Severity.high, f"Member {name!r} is a symbolic link",
                offset=info.header_offset, description="Extracting it creates a link that can point anywhere.")


def _check_eocd(ctx: ScanContext, fh: BinaryIO, size: int, n_entries: int) -> None:
    start = max(0, size - 65557)
    fh.seek(start)
    tail = fh.read()
    pos = tail.rfind(b"PK\x05\x06")
    if pos < 0 or pos + _EOCD.size > len(tail):
        return
    _sig, _disk, _cd_disk, n_disk, n_total, _cd_size, _cd_off, clen = _EOCD.unpack_from(tail, pos)
    if n_total != 0xFFFF and n_total != n_entries % 0x10000 or n_disk != n_total:
        ctx.add("BASTION-SC-010", Severity.high, f"End record counts {n_total} entries, central directory has "
                f"{n_entries}", offset=start + pos, description="Readers that trust the count see a different "
                "member list than readers that walk the directory.")
    trailing = len(tail) - (pos + _EOCD.size + clen)
    if trailing > 0:
        ctx.add("BASTION-SC-010", Severity.medium, f"{trailing} bytes after the zip end record",
                offset=start + pos + _EOCD.size + clen)
