"""Compressed streams (gzip, bz2, xz, lzma, zlib: joblib's compressors): inflated under bounds."""

from __future__ import annotations

import bz2
import io
import lzma
import zlib
from typing import BinaryIO

from bastion.core.severity import Severity
from bastion.supply.context import LimitExceeded, ScanContext

_STEP = 64 * 1024           # compressed bytes fed per step
_RATIO_FLOOR = 1024**2      # output below this size is never called a bomb


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
    """Inflate the stream under ``max_member_bytes`` and ``max_ratio`` -- output is requested in steps no
    larger than the ratio allows for the input consumed so far, so a bomb never inflates past the bound
    in memory -- then analyse the content."""
    from bastion.supply.formats import scan_stream

    d = _decompressor(kind)
    out = bytearray()
    limit = ctx.config.max_member_bytes
    consumed = 0
    pending = b""
    try:
        while True:
            ctx.check_time()
            if not pending and getattr(d, "needs_input", True):
                pending = fh.read(_STEP)
                consumed += len(pending)
                if not pending:
                    break
            allowed = min(limit + 1, max(_RATIO_FLOOR, int(consumed * ctx.config.max_ratio)) + 1) - len(out)
            if allowed <= 0:
                raise _bound(ctx, kind, limit, len(out))
            if kind in ("gzip", "zlib"):
                out += d.decompress(pending, allowed)
                pending = d.unconsumed_tail
            else:
                out += d.decompress(pending, max_length=allowed)
                pending = b""
            if d.eof:
                break
    except (zlib.error, OSError, EOFError, lzma.LZMAError) as exc:
        ctx.add("BASTION-SC-007", Severity.medium, f"Corrupt {kind} stream: {exc}", offset=consumed)
    else:
        if not d.eof:
            ctx.add("BASTION-SC-007", Severity.medium, f"Truncated {kind} stream: it ends before its end marker",
                    offset=consumed, description="The bytes decompressed up to the cut were analysed.")
    ctx.count_unpacked(len(out))
    if not out:
        return
    sub = ctx.child(f"{kind}-content")
    scan_stream(sub, io.BytesIO(bytes(out)), len(out))


def _bound(ctx: ScanContext, kind: str, limit: int, produced: int) -> LimitExceeded:
    if produced > limit:
        return LimitExceeded("max_member_bytes", f"{kind} stream inflates past {limit} bytes")
    return LimitExceeded("max_ratio", f"{kind} stream expands more than {ctx.config.max_ratio:g}x")
