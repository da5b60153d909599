"""NumPy ``.npy`` files (format spec: numpy/lib/format.py, NEP 1). Object arrays hold a pickle."""

from __future__ import annotations

import ast
import struct
from typing import BinaryIO

from bastion.core.severity import Severity
from bastion.supply.context import Malformed, ScanContext


def scan_npy(ctx: ScanContext, fh: BinaryIO, size: int) -> None:
    head = fh.read(10)
    if len(head) < 10:
        raise Malformed("npy header truncated", 0)
    major = head[6]
    if major == 1:
        hlen, start = struct.unpack("<H", head[8:10])[0], 10
    elif major in (2, 3):
        rest = fh.read(2)
        hlen, start = struct.unpack("<I", head[8:10] + rest)[0], 12
    else:
        raise Malformed(f"unknown npy version {major}", 6)
    if hlen > ctx.config.max_header_bytes:
        raise Malformed(f"npy header of {hlen} bytes", 8)
    fh.seek(start)
    raw = fh.read(hlen)
    try:
        header = ast.literal_eval(raw.decode("latin-1"))   # literals only: never evaluates code
        descr, shape = header["descr"], tuple(header["shape"])
    except (ValueError, SyntaxError, KeyError, TypeError, MemoryError, RecursionError) as exc:
        ctx.add("BASTION-SC-007", Severity.medium, f"Invalid npy header: {exc}", offset=start)
        return
    data_off = start + hlen
    if "O" in repr(descr):
        ctx.add("BASTION-SC-070", Severity.medium, "NumPy object array: loading unpickles its content",
                offset=data_off, description="np.load refuses it unless allow_pickle=True, which runs the "
                "pickle below; its globals are analysed.")
        from bastion.supply.formats import scan_pickle

        fh.seek(data_off)
        import io

        sub = ctx.child(f"object-array@{data_off}")
        sub.formats.append("pickle")
        data = fh.read(min(size - data_off, ctx.config.max_pickle_bytes))
        scan_pickle(sub, io.BytesIO(data), len(data))
        return
    from bastion.supply.dtypes import dtype_info

    try:
        itemsize = dtype_info(descr if isinstance(descr, str) else [tuple(f) for f in descr])[0]
    except (TypeError, ValueError) as exc:
        ctx.add("BASTION-SC-007", Severity.medium, f"npy dtype {descr!r} is invalid: {exc}", offset=start)
        return
    count = 1
    for d in shape:
        count *= int(d)
    expected = data_off + count * itemsize
    if size < expected:
        ctx.add("BASTION-SC-007", Severity.medium, f"npy data truncated: {size} bytes, header needs {expected}",
                offset=size)
    elif size > expected:
        ctx.add("BASTION-SC-007", Severity.medium, f"{size - expected} bytes after the npy array data",
                offset=expected)
