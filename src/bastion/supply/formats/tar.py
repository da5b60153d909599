"""Tar archives (legacy PyTorch tar format, generic tarballs), members analysed by content."""

from __future__ import annotations

import io
import posixpath
import tarfile
from typing import BinaryIO

from bastion.core.severity import Severity
from bastion.supply.context import LimitExceeded, ScanContext


def scan_tar(ctx: ScanContext, fh: BinaryIO, size: int) -> None:
    from bastion.supply.formats import scan_stream

    try:
        tf = tarfile.open(fileobj=fh, mode="r:")
    except tarfile.TarError as exc:
        ctx.add("BASTION-SC-010", Severity.high, f"Broken tar archive: {exc}")
        return
    n = 0
    with tf:
        while True:
            ctx.check_time()
            try:
                m = tf.next()
            except tarfile.TarError as exc:
                ctx.add("BASTION-SC-010", Severity.high, f"Broken tar archive: {exc}")
                return
            if m is None:
                break
            n += 1
            if n > ctx.config.max_members:
                raise LimitExceeded("max_members", f"archive has more than {ctx.config.max_members} members")
            norm = posixpath.normpath(m.name)
            if m.name.startswith("/") or norm.startswith(".."):
                ctx.add("BASTION-SC-011", Severity.high, f"Member path {m.name!r} escapes the archive",
                        offset=m.offset)
            if m.issym() or m.islnk():
                ctx.add("BASTION-SC-011", Severity.high,
                        f"Member {m.name!r} is a {'symbolic' if m.issym() else 'hard'} link to {m.linkname!r}",
                        offset=m.offset)
                continue
            if not m.isfile():
                continue
            if m.size > ctx.config.max_member_bytes:
                ctx.add("BASTION-SC-008", Severity.high, f"Member {m.name!r} larger than max_member_bytes",
                        offset=m.offset, limit="max_member_bytes")
                continue
            if m.name == "storages" or m.name.endswith("/storages"):
                continue       # legacy torch tar: raw tensor bytes
            data, error = _read(tf, fh, m)
            ctx.count_unpacked(len(data))
            sub = ctx.child(m.name)
            if error:
                sub.add("BASTION-SC-010", Severity.high, f"Member {m.name!r} is truncated: {error}",
                        offset=m.offset, description="The archive ends inside this member; the bytes that are "
                        "there were analysed.")
            if data:
                scan_stream(sub, io.BytesIO(data), len(data))
            if error:
                return


def _read(tf: tarfile.TarFile, fh: BinaryIO, m: tarfile.TarInfo) -> tuple[bytes, str | None]:
    """The member's bytes, and an error when the archive ends before the member does (the bytes up to
    the cut are returned: a pickle there still runs when loaded)."""
    if m.issparse():
        f = tf.extractfile(m)
        try:
            return (f.read() if f else b""), None
        except (tarfile.TarError, OSError, EOFError) as exc:
            return b"", str(exc) or type(exc).__name__
    fh.seek(m.offset_data)
    data = fh.read(m.size)
    if len(data) < m.size:
        return data, f"{m.size - len(data)} of its {m.size} bytes are missing"
    return data, None
