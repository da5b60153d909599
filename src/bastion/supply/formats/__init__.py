"""Format detection by content (magic bytes and structure, never the file name) and dispatch."""

from __future__ import annotations

import io
import logging
from typing import BinaryIO

from bastion.core.severity import Severity
from bastion.supply.context import LimitExceeded, Malformed, ScanContext

log = logging.getLogger(__name__)

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
NPY_MAGIC = b"\x93NUMPY"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
SEVENZ_MAGIC = b"7z\xbc\xaf\x27\x1c"
_COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bz2", b"\xfd7zXZ\x00": "xz", b"\x5d\x00\x00": "lzma"}
UNKNOWN_FORMAT = "unknown format: not a model format bastion reads (a tool that reads it may still load it)"
_PICKLE_OR_ONNX = {0x28, 0x32, 0x42}     # MARK, DUP, BINBYTES: a protocol 0/1 pickle could start so
_ONNX_FIRST = {0x08, 0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42}


def detect(head: bytes, size: int) -> str:
    """Name the format of data starting with ``head`` (first bytes) of total length ``size``."""
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if head.startswith(NPY_MAGIC):
        return "npy"
    if head.startswith(HDF5_MAGIC):
        return "hdf5"
    if head.startswith(SEVENZ_MAGIC):
        return "7z"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    for magic, kind in _COMPRESSED.items():
        if head.startswith(magic):
            return kind
    if len(head) >= 2 and head[0] == 0x78 and head[1] in (0x01, 0x5E, 0x9C, 0xDA):
        return "zlib"
    if len(head) >= 9 and head[8:9] == b"{":
        n = int.from_bytes(head[:8], "little")
        return "safetensors" if 2 <= n <= size - 8 else "safetensors?"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
        return "pickle"
    if head.lstrip()[:1] == b"{":
        return "json"
    if head[:1] and head[0] in _ONNX_FIRST:
        return "maybe-onnx"          # protobuf ModelProto, or a protocol 0/1 pickle ('(' etc. differ)
    return "maybe-pickle"


def scan_stream(ctx: ScanContext, fh: BinaryIO, size: int) -> None:
    """Analyse the data in ``fh`` (seekable, positioned at 0) whatever its format.

    A reader that fails in an unexpected way does not lose the findings already made: the data is
    recorded as not analysed (:meth:`ScanContext.not_understood`) and the scan of the enclosing
    archive goes on. Malformed data and exceeded limits propagate (callers report them).
    """
    ctx.check_time()
    head = fh.read(4096)
    fh.seek(0)
    kind = detect(head, size)
    ctx.formats.append(kind)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("%s: detected %s", ctx.where, kind)
    try:
        _dispatch(ctx, fh, size, kind, head)
        if kind != "zip" and size > 22:
            _check_polyglot_zip(ctx, fh, size)
    except (LimitExceeded, Malformed, RecursionError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - a reader bug or a library error on crafted data
        log.debug("%s: %s reader failed", ctx.where, kind, exc_info=True)
        ctx.not_understood(f"reader failure ({kind}): {type(exc).__name__}: {exc}")


def _dispatch(ctx: ScanContext, fh: BinaryIO, size: int, kind: str, head: bytes) -> None:
    if kind == "zip":
        from bastion.supply.formats.zip import scan_zip
        scan_zip(ctx, fh, size)
    elif kind == "npy":
        from bastion.supply.formats.numpy import scan_npy
        scan_npy(ctx, fh, size)
    elif kind == "hdf5":
        from bastion.supply.formats.keras import scan_hdf5
        scan_hdf5(ctx, fh, size)
    elif kind == "7z":
        from bastion.supply.formats.sevenzip import scan_7z
        scan_7z(ctx, fh, size)
    elif kind == "tar":
        from bastion.supply.formats.tar import scan_tar
        scan_tar(ctx, fh, size)
    elif kind in ("gzip", "bz2", "xz", "lzma", "zlib"):
        from bastion.supply.formats.compressed import scan_compressed
        scan_compressed(ctx, fh, kind)
    elif kind == "safetensors":
        from bastion.supply.formats.safetensors import scan_safetensors
        scan_safetensors(ctx, fh, size)
    elif kind == "json":
        from bastion.supply.formats.keras import scan_json
        scan_json(ctx, fh, size)
    elif kind == "pickle":
        scan_pickle(ctx, fh, size)
    else:
        # a first byte that is also a protocol 0/1 pickle opcode (MARK, DUP, BINBYTES): pickle first
        onnx_first = kind == "maybe-onnx" and head[0] not in _PICKLE_OR_ONNX
        if onnx_first and _onnx(ctx, fh, size):
            return
        ctx.formats[-1] = "pickle?"
        if scan_pickle(ctx, fh, size, trial=True):
            return
        if kind == "maybe-onnx" and not onnx_first:
            ctx.formats[-1] = kind
            if _onnx(ctx, fh, size):
                return
        if kind == "safetensors?":
            ctx.formats[-1] = "unknown"
            ctx.not_understood(f"safetensors header length {int.from_bytes(head[:8], 'little')} is impossible "
                               f"for a {size}-byte file")
        elif is_text(head):
            ctx.formats[-1] = "text"
        else:
            ctx.formats[-1] = "unknown"
            ctx.not_understood(UNKNOWN_FORMAT)


def _onnx(ctx: ScanContext, fh: BinaryIO, size: int) -> bool:
    from bastion.supply.formats.onnx import looks_like_onnx, scan_onnx

    fh.seek(0)
    if not looks_like_onnx(ctx, fh, size):
        return False
    ctx.formats[-1] = "onnx"
    scan_onnx(ctx, fh, size)
    return True


def is_text(head: bytes) -> bool:
    """True for UTF-8 text without NUL bytes (a cut multi-byte character at the end is allowed)."""
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(head) - 3 and exc.reason == "unexpected end of data"
    return True


def scan_bytes(ctx: ScanContext, data: bytes) -> None:
    scan_stream(ctx, io.BytesIO(data), len(data))


def scan_pickle(ctx: ScanContext, fh: BinaryIO, size: int, *, trial: bool = False) -> bool:
    """Walk a pickle stream; returns False when, in ``trial`` mode (no PROTO opcode), the data is not a
    pickle: a parse failure with no code-execution primitive seen before it (pickle runs opcodes
    before STOP, so a primitive before the failure still counts)."""
    from bastion.supply.pickle_scan import scan_pickle_stream

    mark = len(ctx.findings)
    not_analysed = len(ctx.not_analysed)
    try:
        scan_pickle_stream(ctx, fh, multi=True)
        if trial:
            ctx.formats[-1] = "pickle"
    except Malformed as exc:
        found = ctx.findings[mark:]
        if trial and not any(f.severity is Severity.critical for f in found):
            del ctx.findings[mark:]
            del ctx.not_analysed[not_analysed:]
            return False
        ctx.add("BASTION-SC-007", Severity.medium, f"Malformed pickle: {exc}", offset=exc.offset)
    return True


def _check_polyglot_zip(ctx: ScanContext, fh: BinaryIO, size: int) -> None:
    """A file that is also a zip archive (EOCD at its end) is read differently by different loaders."""
    fh.seek(max(0, size - 65557))
    tail = fh.read()
    if b"PK\x05\x06" not in tail:
        return
    import zipfile

    fh.seek(0)
    if not zipfile.is_zipfile(fh):
        return
    ctx.add("BASTION-SC-010", Severity.high, "File is also a zip archive (polyglot)",
            description="The file parses both as its own format and as a zip archive; loaders that check the "
            "archive first see other content than this format's readers.")
    fh.seek(0)
    from bastion.supply.formats.zip import scan_zip
    scan_zip(ctx, fh, size)


__all__ = ["detect", "scan_stream", "scan_bytes", "scan_pickle", "LimitExceeded"]
