"""Compressed streams (gzip, bz2, xz, lzma, zlib: joblib's compressors): inflated under bounds."""

from __future__ import annotations

import bz2
import io
import lzma
import zlib
from typing import BinaryIO

from bastion.core.results import Severity
from bastion.supply.context import LimitExceeded, ScanContext

_CHUNK = 1 << 20


def _decompressor(kind: str):  # noqa: ANN202 - a decompressor object
    if kind == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if kind == "zlib":
        return zlib.decompressobj()
    if kind == "bz2":
        return bz2.BZ2Decompressor()
    if kind == "xz":
        return lzma.LZMADecompressor(lzma.FORMAT_XZ)
    return lzma.LZMADecompressor(lzma.FORMAT_ALONE)


def scan_compressed(ctx: ScanContext, fh: BinaryIO, kind: str) -> None:
    from bastion.supply.formats import scan_stream

    d = _decompressor(kind)
    out = bytearray()
    limit = ctx.config.max_member_bytes
    consumed = 0
    try:
        while True:
            ctx.check_time()
            chunk = fh.read(_CHUNK)
            if not chunk:
                break
            consumed += len(chunk)
            out += d.decompress(chunk, limit + 1 - len(out)) if kind != "zlib" else d.decompress(
                chunk, limit + 1 - len(out))
            if len(out) > limit:
                raise LimitExceeded("max_member_bytes", f"{kind} stream inflates past {limit} bytes")
            if len(out) > 1024**2 and len(out) / max(consumed, 1) > ctx.config.max_ratio:
                raise LimitExceeded("max_ratio", f"{kind} stream expands more than {ctx.config.max_ratio:g}x")
            if getattr(d, "eof", False):
                break
    except (zlib.error, OSError, EOFError, lzma.LZMAError) as exc:
        ctx.add("BASTION-SC-007", Severity.medium, f"Corrupt {kind} stream: {exc}", offset=consumed)
    ctx.count_unpacked(len(out))
    if not out:
        return
    sub = ctx.child(f"{kind}-content")
    scan_stream(sub, io.BytesIO(bytes(out)), len(out))
