"""safetensors header validation (spec: huggingface/safetensors README, "Format").

Layout: 8-byte little-endian header size N, N bytes of UTF-8 JSON, then the byte buffer. Each
tensor has dtype, shape and data_offsets [begin, end) relative to the buffer; the spec requires
offsets that tile the buffer exactly (no gaps, no overlap), sizes matching shape x dtype width,
and no duplicate keys. Anything else is reported: loaders differ on malformed headers.
"""

from __future__ import annotations

import json
from typing import Any, BinaryIO

from bastion.core.severity import Severity
from bastion.supply.context import ScanContext

DTYPE_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "I16": 16, "U16": 16,
              "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "F64": 64, "I64": 64, "U64": 64,
              "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "C64": 64}


_MAX_ELEMENTS = 1 << 64


def _short(shape: list[int]) -> str:
    """A shape for a message: at most 8 dimensions, each at most 20 digits."""
    dims = ", ".join(_short_int(d) for d in shape[:8])
    return f"[{dims}{', ...' if len(shape) > 8 else ''}] ({len(shape)} dims)" if len(shape) > 8 else f"[{dims}]"


def _short_int(v: int) -> str:
    return str(v) if -10**20 < v < 10**20 else f"{'-' if v < 0 else ''}~2^{abs(v).bit_length() - 1}"


def _no_dupes(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError(f"duplicate keys {sorted({k for k in keys if keys.count(k) > 1})}")
    return dict(pairs)


def validate_header(header: bytes, buffer_len: int) -> list[str]:
    """Return the list of problems of a safetensors header (empty if valid)."""
    try:
        doc = json.loads(header.decode("utf-8"), object_pairs_hook=_no_dupes)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return [f"header is not valid JSON: {exc}"]
    if not isinstance(doc, dict):
        return ["header is not a JSON object"]
    problems: list[str] = []
    meta = doc.pop("__metadata__", None)
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        problems.append("__metadata__ must map strings to strings")
    spans: list[tuple[int, int, str]] = []
    for name, t in doc.items():
        if not isinstance(t, dict) or set(t) != {"dtype", "shape", "data_offsets"}:
            problems.append(f"tensor {name!r}: entry must have exactly dtype, shape, data_offsets")
            continue
        dtype, shape, offs = t["dtype"], t["shape"], t["data_offsets"]
        if dtype not in DTYPE_BITS:
            problems.append(f"tensor {name!r}: unknown dtype {dtype!r}")
            continue
        if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                for d in shape)):
            problems.append(f"tensor {name!r}: shape must be a list of non-negative integers")
            continue
        if not (isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) and not isinstance(o, bool)
                                                                  for o in offs)):
            problems.append(f"tensor {name!r}: data_offsets must be two integers")
            continue
        begin, end = offs
        n = 1
        for d in shape:
            n *= d
            if n >= _MAX_ELEMENTS:   # the reference reader computes sizes in 64 bits and refuses overflow
                break
        shown = _short(shape)
        if begin < 0 or end < begin or end >= _MAX_ELEMENTS:
            problems.append(f"tensor {name!r}: invalid offsets [{_short_int(begin)}, {_short_int(end)}]")
            continue
        if n >= _MAX_ELEMENTS:
            problems.append(f"tensor {name!r}: shape {shown} has more elements than a 64-bit size can count")
            spans.append((begin, end, name))
            continue
        nbytes = (n * DTYPE_BITS[dtype] + 7) // 8
        if end - begin != nbytes:
            problems.append(f"tensor {name!r}: {end - begin} bytes for shape {shown} x {dtype} ({nbytes} bytes)")
        if end > buffer_len:
            problems.append(f"tensor {name!r}: ends at {end}, past the {buffer_len}-byte buffer")
        spans.append((begin, end, name))
    spans.sort()
    cursor = 0
    for begin, end, name in spans:
        if begin < cursor:
            problems.append(f"tensor {name!r} overlaps the previous tensor")
        elif begin > cursor:
            problems.append(f"gap of {begin - cursor} bytes before tensor {name!r}")
        cursor = max(cursor, end)
    if cursor < buffer_len:
        problems.append(f"{buffer_len - cursor} trailing bytes after the last tensor")
    return problems


def scan_safetensors(ctx: ScanContext, fh: BinaryIO, size: int) -> None:
    n = int.from_bytes(fh.read(8), "little")
    if n > ctx.config.max_header_bytes:
        ctx.add("BASTION-SC-040", Severity.high, f"safetensors header of {n} bytes exceeds max_header_bytes",
                offset=0)
        return
    header = fh.read(n)
    for problem in validate_header(header, size - 8 - n)[:20]:
        ctx.add("BASTION-SC-040", Severity.high, f"Invalid safetensors header: {problem}", offset=8)
