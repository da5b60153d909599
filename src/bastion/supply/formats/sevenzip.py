"""7z archives: recursed with py7zr when it is installed; otherwise reported as not analysed."""

from __future__ import annotations

import io
import zlib
from typing import BinaryIO

from bastion.core.results import Severity
from bastion.supply.context import LimitExceeded, ScanContext


def scan_7z(ctx: ScanContext, fh: BinaryIO, size: int) -> None:
    head = fh.read(32)
    if len(head) < 32 or zlib.crc32(head[12:32]) != int.from_bytes(head[8:12], "little"):
        ctx.add("BASTION-SC-010", Severity.high, "7z start header CRC mismatch", offset=8)
    try:
        import py7zr
    except ImportError:
        ctx.add("BASTION-SC-050", Severity.medium, "7z archive not analysed (py7zr is not installed)",
                description="Install py7zr to let bastion inspect the members of 7z archives.")
        return
    from bastion.supply.formats import scan_stream

    fh.seek(0)
    try:
        with py7zr.SevenZipFile(fh, mode="r") as z:
            infos = z.list()
            if len(infos) > ctx.config.max_members:
                raise LimitExceeded("max_members", f"archive has {len(infos)} members")
            total = sum(i.uncompressed or 0 for i in infos)
            if total > ctx.config.max_total_unpacked:
                raise LimitExceeded("max_total_unpacked", f"7z archive unpacks to {total} bytes")
            for name, bio in (z.readall() or {}).items():
                data = bio.read()
                ctx.count_unpacked(len(data))
                scan_stream(ctx.child(name), io.BytesIO(data), len(data))
    except LimitExceeded:
        raise
    except Exception as exc:  # py7zr raises many types on malformed archives
        ctx.add("BASTION-SC-010", Severity.high, f"Broken 7z archive: {type(exc).__name__}: {exc}")
