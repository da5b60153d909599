"""A 7z reader on the standard library: the plain archives most tools write (LZMA2, LZMA, stored, with
the BCJ x86 or Delta filters; header encoded or not), read without py7zr.

Structures per the 7z format description (7-Zip ``DOC/7zFormat.txt``): the start header points to the
"next header", which may itself be packed (``kEncodedHeader``); ``MainStreamsInfo`` gives the packed
streams, the *folders* (solid blocks: a chain of coders) and how each folder's output splits into the
members' data (``SubStreamsInfo``); ``FilesInfo`` gives names, empty streams and attributes. Anything
else (encryption, other codecs, complex coder graphs, external or additional streams, archive
properties, a header that does not parse or whose CRC does not match, dictionaries over 256 MiB) raises
:class:`Unsupported`, and the caller hands the archive to py7zr, which reports what it finds. Folders
encrypted with 7-Zip's AES coder are listed as ``encrypted`` (their data is never read), and an
encrypted header raises :class:`HeaderEncrypted`, a corrupt start or next header :class:`Broken`. The reader
never writes to disk; :func:`folder_data` yields a folder's output in chunks, so the caller enforces
its limits while the data is decompressed.
"""

from __future__ import annotations

import lzma
import stat
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

_MAX_DICT = 256 * 1024**2      # larger declared dictionaries go to py7zr (as before this reader)
_MAX_HEADER = 64 * 1024**2     # bytes of (decoded) header read
_CHUNK = 1 << 16
_ATTR_DIR, _ATTR_REPARSE, _ATTR_UNIX = 0x10, 0x400, 0x8000

# property ids (7zFormat.txt)
_END, _HEADER, _ARCHIVE_PROPS, _ADDITIONAL, _MAIN, _FILES, _PACK, _UNPACK, _SUBSTREAMS = range(9)
_SIZE, _CRC, _FOLDER, _CODERS_UNPACK_SIZE, _NUM_UNPACK_STREAM = 0x09, 0x0A, 0x0B, 0x0C, 0x0D
_EMPTY_STREAM, _EMPTY_FILE, _ANTI, _NAME, _ATTRIBUTES, _ENCODED_HEADER, _DUMMY = 0x0E, 0x0F, 0x10, 0x11, 0x15, 0x17, 0x19
_SKIPPABLE = {0x12, 0x13, 0x14, 0x18, _DUMMY}    # times, start position, padding
_AES_ID = b"\x06\xf1\x07\x01"                       # 7zAES: SHA-256 key derivation + AES-256-CBC
_AES: dict[str, Any] = {"id": "7zAES"}
_AES_CHAIN = [_AES]                                  # the filters of an encrypted folder (never decoded)


class Unsupported(Exception):
    """The archive uses something this reader does not read (py7zr reads it instead)."""


class Broken(Exception):
    """The start or next header is corrupt (CRC mismatch, outside the file): no 7z reader lists it."""


class HeaderEncrypted(Exception):
    """The member list itself is encrypted (AES): nothing can be listed without the password."""


@dataclass
class Folder:
    """A solid block: one packed stream through a chain of coders (``filters`` for :mod:`lzma`, or
    None when stored), its unpacked size and CRC, and how many members' data it holds."""

    filters: list[dict[str, Any]] | None
    pack_offset: int
    pack_size: int
    unpack_size: int
    crc: int | None = None
    encrypted: bool = False
    sizes: list[int] = field(default_factory=list)          # member data sizes, in order
    crcs: list[int | None] = field(default_factory=list)


@dataclass
class Member:
    name: str
    has_stream: bool
    is_directory: bool
    is_symlink: bool
    size: int = 0
    crc: int | None = None
    folder: int | None = None


@dataclass
class Archive:
    members: list[Member]
    folders: list[Folder]


class _Buf:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise Unsupported("header ends early")
        self.pos += 1
        return self.data[self.pos - 1]

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise Unsupported("header ends early")
        self.pos += n
        return self.data[self.pos - n:self.pos]

    def number(self) -> int:
        """7z NUMBER: the leading 1 bits of the first byte count the extra little-endian bytes."""
        first = self.byte()
        mask, value = 0x80, 0
        for i in range(8):
            if not first & mask:
                return value | ((first & (mask - 1)) << (8 * i))
            value |= self.byte() << (8 * i)
            mask >>= 1
        return value

    def small(self, limit: int = 1 << 24) -> int:
        n = self.number()
        if n > limit:
            raise Unsupported(f"count {n} too large")
        return n

    def bits(self, n: int) -> list[bool]:
        data = self.take((n + 7) // 8)
        return [bool(data[i // 8] & (0x80 >> (i % 8))) for i in range(n)]

    def defined(self, n: int) -> list[bool]:
        return [True] * n if self.byte() else self.bits(n)

    def digests(self, n: int) -> list[int | None]:
        return [struct.unpack("<I", self.take(4))[0] if d else None for d in self.defined(n)]

    def expect(self, prop: int) -> None:
        if self.byte() != prop:
            raise Unsupported(f"property {prop:#x} expected")


def read_archive(fh: BinaryIO, size: int) -> Archive:
    """Parse the archive's headers (the start header's CRC is checked by the caller)."""
    fh.seek(0)
    head = fh.read(32)
    if len(head) < 32 or zlib.crc32(head[12:32]) != int.from_bytes(head[8:12], "little"):
        raise Broken("start header CRC mismatch")
    next_off, next_size, next_crc = struct.unpack_from("<QQI", head, 12)
    if 32 + next_off + next_size > size:
        raise Broken("next header outside the file")
    if next_size > _MAX_HEADER:
        raise Unsupported("next header larger than 64 MiB")
    fh.seek(32 + next_off)
    data = fh.read(next_size)
    if len(data) != next_size or zlib.crc32(data) != next_crc:
        raise Broken("next header CRC mismatch")
    buf = _Buf(data)
    kind = buf.byte()
    if kind == _ENCODED_HEADER:
        folders = _streams_info(buf, size)
        if len(folders) != 1 or folders[0].unpack_size > _MAX_HEADER:
            raise Unsupported("encoded header of more than one folder")
        if folders[0].encrypted:
            raise HeaderEncrypted("7z archive header is encrypted")
        data = b"".join(folder_data(fh, folders[0]))
        if folders[0].crc is not None and zlib.crc32(data) != folders[0].crc:
            raise Unsupported("encoded header CRC mismatch")
        buf = _Buf(data)
        kind = buf.byte()
    if kind != _HEADER:
        raise Unsupported(f"header kind {kind:#x}")
    return _header(buf, size)


def _header(buf: _Buf, size: int) -> Archive:
    prop = buf.byte()
    folders: list[Folder] = []
    if prop in (_ARCHIVE_PROPS, _ADDITIONAL):
        raise Unsupported("archive properties or additional streams")
    if prop == _MAIN:
        folders = _streams_info(buf, size)
        prop = buf.byte()
    members: list[Member] = []
    if prop == _FILES:
        members = _files_info(buf)
        prop = buf.byte()
    if prop != _END:
        raise Unsupported(f"header property {prop:#x}")
    streams = [(i, k) for i, f in enumerate(folders) for k in range(len(f.sizes))]
    with_data = [m for m in members if m.has_stream]
    if len(with_data) != len(streams):
        raise Unsupported("members and data streams disagree")
    for m, (i, k) in zip(with_data, streams):
        m.folder, m.size, m.crc = i, folders[i].sizes[k], folders[i].crcs[k]
    return Archive(members, folders)


def _streams_info(buf: _Buf, size: int) -> list[Folder]:
    prop = buf.byte()
    pack_pos, pack_sizes = 0, []
    if prop == _PACK:
        pack_pos = buf.number()
        n_pack = buf.small()
        prop = buf.byte()
        if prop == _SIZE:
            pack_sizes = [buf.number() for _ in range(n_pack)]
            prop = buf.byte()
        if prop == _CRC:
            buf.digests(n_pack)
            prop = buf.byte()
        if prop != _END or len(pack_sizes) != n_pack:
            raise Unsupported("pack info")
        prop = buf.byte()
    folders: list[Folder] = []
    if prop == _UNPACK:
        folders = _coders_info(buf, pack_pos, pack_sizes, size)
        prop = buf.byte()
    for f in folders:
        f.sizes, f.crcs = [f.unpack_size], [f.crc]
    if prop == _SUBSTREAMS:
        _substreams(buf, folders)
        prop = buf.byte()
    if prop != _END:
        raise Unsupported("streams info")
    return folders


def _coders_info(buf: _Buf, pack_pos: int, pack_sizes: list[int], size: int) -> list[Folder]:
    buf.expect(_FOLDER)
    n = buf.small()
    if n != len(pack_sizes) or buf.byte() != 0:
        raise Unsupported("folders and packed streams disagree, or external folders")
    folders, outputs, n_outputs, offset = [], [], [], 32 + pack_pos
    for packed in pack_sizes:
        if offset + packed > size:
            raise Unsupported("packed stream outside the file")
        filters, out, n_out = _coders(buf)
        n_outputs.append(n_out)
        folders.append(Folder(filters, offset, packed, 0, encrypted=filters == _AES_CHAIN))
        outputs.append(out)
        offset += packed
    buf.expect(_CODERS_UNPACK_SIZE)
    for f, out, n_out in zip(folders, outputs, n_outputs):   # one size per coder output
        f.unpack_size = [buf.number() for _ in range(n_out)][out]
        if f.filters is None and f.unpack_size != f.pack_size:
            raise Unsupported("stored folder sizes differ")
    prop = buf.byte()
    if prop == _CRC:
        for f, crc in zip(folders, buf.digests(n)):
            f.crc = crc
        prop = buf.byte()
    if prop != _END:
        raise Unsupported("coders info")
    return folders


def _coders(buf: _Buf) -> tuple[list[dict[str, Any]] | None, int, int]:
    """A folder's coders as an :mod:`lzma` filter chain in encoding order (None: stored) and the index of
    the coder whose output is the folder's, and the number of coders; only chains of simple coders (one
    input, one output)."""
    n = buf.small(4)
    if not 1 <= n <= 4:
        raise Unsupported("coder count")
    coders: list[dict[str, Any] | None] = []
    for _ in range(n):
        flags = buf.byte()
        if flags & 0xD0:     # complex coder, alternative methods (or reserved bit)
            raise Unsupported("complex coder")
        codec = buf.take(flags & 0x0F)
        props = buf.take(buf.small(1 << 16)) if flags & 0x20 else b""
        coders.append(None if codec == b"\x00" else _AES if codec == _AES_ID else _filter(codec, props))
    feeds: dict[int, int] = {}     # bind pairs: coder ``out``'s output is coder ``into``'s input
    for _ in range(n - 1):
        into, out = buf.small(n), buf.small(n)
        feeds[out] = into
    starts = set(range(n)) - set(feeds.values())     # the coder reading the packed stream
    if len(starts) != 1:
        raise Unsupported("coder graph")
    order = list(starts)
    while order[-1] in feeds and len(order) <= n:
        order.append(feeds[order[-1]])
    if sorted(order) != list(range(n)):
        raise Unsupported("coder graph")
    if _AES in coders:
        return _AES_CHAIN, order[-1], n
    if None in coders:
        if n != 1:
            raise Unsupported("stored inside a chain")
        return None, 0, 1
    chain = [coders[i] for i in reversed(order)]      # encoding order: the compressor last
    lz = (lzma.FILTER_LZMA1, lzma.FILTER_LZMA2)
    if chain[-1]["id"] not in lz or any(f["id"] in lz for f in chain[:-1]):   # type: ignore[index]
        raise Unsupported("filter chain")
    return chain, order[-1], n     # type: ignore[return-value]


def _filter(codec: bytes, props: bytes) -> dict[str, Any]:
    if codec == b"\x21" and len(props) == 1 and props[0] <= 40:
        d = (2 | (props[0] & 1)) << (props[0] // 2 + 11)
        return {"id": lzma.FILTER_LZMA2, "dict_size": _dict(min(d, 0xFFFFFFFF))}
    if codec == b"\x03\x01\x01" and len(props) == 5 and props[0] < 9 * 5 * 5:
        lc, rest = props[0] % 9, props[0] // 9
        return {"id": lzma.FILTER_LZMA1, "lc": lc, "lp": rest % 5, "pb": rest // 5,
                "dict_size": _dict(max(4096, int.from_bytes(props[1:5], "little")))}
    if codec == b"\x03\x03\x01\x03" and not props:
        return {"id": lzma.FILTER_X86}
    if codec == b"\x03" and len(props) == 1:
        return {"id": lzma.FILTER_DELTA, "dist": props[0] + 1}
    raise Unsupported(f"codec {codec.hex()}")


def _dict(n: int) -> int:
    if n > _MAX_DICT:
        raise Unsupported("dictionary too large")
    return n


def _substreams(buf: _Buf, folders: list[Folder]) -> None:
    prop = buf.byte()
    counts = [1] * len(folders)
    if prop == _NUM_UNPACK_STREAM:
        counts = [buf.small() for _ in folders]
        prop = buf.byte()
    for f, n in zip(folders, counts):
        f.sizes = [buf.number() for _ in range(n - 1)] if prop == _SIZE else []
        if n:
            last = f.unpack_size - sum(f.sizes)
            if last < 0:
                raise Unsupported("member sizes exceed the folder")
            f.sizes.append(last)
        f.crcs = [None] * n
    if prop == _SIZE:
        prop = buf.byte()
    unknown = [(f, k) for f, n in zip(folders, counts) for k in range(n) if not (n == 1 and f.crc is not None)]
    for f, n in zip(folders, counts):
        if n == 1 and f.crc is not None:
            f.crcs = [f.crc]
    if prop == _CRC:
        for (f, k), crc in zip(unknown, buf.digests(len(unknown))):
            f.crcs[k] = crc
        prop = buf.byte()
    if prop != _END:
        raise Unsupported("substreams info")


def _files_info(buf: _Buf) -> list[Member]:
    n = buf.small()
    empty_stream, empty_file, names, attrs = [False] * n, [], [], [None] * n
    while True:
        prop = buf.byte()
        if prop == _END:
            break
        data = _Buf(buf.take(buf.small(_MAX_HEADER)))
        if prop == _EMPTY_STREAM:
            empty_stream = data.bits(n)
        elif prop == _EMPTY_FILE:
            empty_file = data.bits(sum(empty_stream))
        elif prop == _NAME:
            if data.byte() != 0:
                raise Unsupported("external names")
            try:
                names = data.take(len(data.data) - 1).decode("utf-16-le").split("\x00")
            except UnicodeDecodeError:
                raise Unsupported("names are not UTF-16") from None
            if len(names) != n + 1 or names[-1]:
                raise Unsupported("name count")
        elif prop == _ATTRIBUTES:
            defined = data.defined(n)
            if data.byte() != 0:
                raise Unsupported("external attributes")
            attrs = [struct.unpack("<I", data.take(4))[0] if d else None for d in defined]
        elif prop not in _SKIPPABLE:
            raise Unsupported(f"file property {prop:#x}")
    if len(names) != n + 1:
        raise Unsupported("member names missing")
    members, k = [], 0
    for i in range(n):
        a = attrs[i] or 0
        is_file = True
        if empty_stream[i]:
            is_file = k < len(empty_file) and empty_file[k]
            k += 1
        mode = a >> 16 if a & _ATTR_UNIX else 0
        members.append(Member(names[i], not empty_stream[i], not is_file or bool(a & _ATTR_DIR),
                              stat.S_ISLNK(mode) or bool(a & _ATTR_REPARSE)))
    return members


def folder_data(fh: BinaryIO, folder: Folder) -> Iterator[bytes]:
    """The folder's unpacked data in chunks (exactly ``unpack_size`` bytes in all); raises
    :class:`lzma.LZMAError` or :class:`EOFError` on corrupt or truncated data."""
    if folder.encrypted:
        raise Unsupported("encrypted folder")
    fh.seek(folder.pack_offset)
    left_in, left_out = folder.pack_size, folder.unpack_size
    dec = None if folder.filters is None else lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=folder.filters)
    while left_out > 0:
        chunk = b""
        if dec is None or dec.needs_input:
            chunk = fh.read(min(left_in, _CHUNK)) if left_in > 0 else b""
            left_in -= len(chunk)
            if not chunk:
                raise EOFError("7z packed stream ends before its unpacked size")
        if dec is None:
            out = chunk[:left_out]
        elif dec.eof:
            raise EOFError("7z coder stream ends before its unpacked size")
        else:
            out = dec.decompress(chunk, max_length=min(left_out, _CHUNK))
            if not out and not chunk:
                raise EOFError("7z coder stream stalled before its unpacked size")
        left_out -= len(out)
        if out:
            yield out
