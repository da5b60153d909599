"""Mutation fuzzing of ``bastion inspect``: seed files of every supported format and byte-level mutators.

Used by ``tests/supply/test_inspect_fuzz.py`` (hypothesis, bounded in time) and by
``benchmarks/supply_fuzz.py`` (thousands of mutated files). Mutators follow the classic
AFL-style set (bit flips, interesting values, block deletion/duplication/insertion, truncation)
plus structure-aware ones for the container fields that readers trust (zip versions and offsets,
tar sizes, safetensors header lengths, pickle FRAME lengths).
"""

from __future__ import annotations

import gzip
import io
import random
import struct
import tarfile
from pathlib import Path

_INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 2**60, 2**63 - 1, 2**64 - 1]


def _put_int(data: bytearray, pos: int, value: int, width: int) -> None:
    if pos + width <= len(data):
        data[pos:pos + width] = (value % (1 << (8 * width))).to_bytes(width, "little")


def _zip_fields(data: bytes) -> list[tuple[int, int]]:
    """(offset, width) of version, flag, method, size and offset fields of zip headers."""
    out: list[tuple[int, int]] = []
    for sig, fields in ((b"PK\x03\x04", [(4, 2), (6, 2), (8, 2), (14, 4), (18, 4), (22, 4), (26, 2), (28, 2)]),
                        (b"PK\x01\x02", [(4, 2), (6, 2), (8, 2), (10, 2), (20, 4), (24, 4), (28, 2), (30, 2),
                                         (42, 4)]),
                        (b"PK\x05\x06", [(8, 2), (10, 2), (12, 4), (16, 4), (20, 2)])):
        pos = data.find(sig)
        while pos >= 0:
            out += [(pos + o, w) for o, w in fields]
            pos = data.find(sig, pos + 1)
    return out


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to four random mutations of ``data``."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(9)
        n = len(buf)
        if n == 0:
            buf += bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
            continue
        pos = rng.randrange(n)
        if op == 0:                                   # truncate
            del buf[rng.randrange(n):]
        elif op == 1:                                 # bit flip
            buf[pos] ^= 1 << rng.randrange(8)
        elif op == 2:                                 # random byte
            buf[pos] = rng.randrange(256)
        elif op == 3:                                 # interesting integer, random width
            _put_int(buf, pos, rng.choice(_INTERESTING), rng.choice((1, 2, 4, 8)))
        elif op == 4:                                 # delete a block
            del buf[pos:pos + rng.randint(1, 64)]
        elif op == 5:                                 # duplicate a block
            blk = bytes(buf[pos:pos + rng.randint(1, 64)])
            at = rng.randrange(len(buf) + 1)
            buf[at:at] = blk
        elif op == 6:                                 # insert random bytes
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == 7:                                 # zip header field (version, flags, sizes, offsets)
            fields = _zip_fields(bytes(buf))
            if fields:
                off, width = rng.choice(fields)
                _put_int(buf, off, rng.choice(_INTERESTING + [rng.randrange(1 << (8 * width))]), width)
            else:
                buf[pos] = rng.randrange(256)
        else:                                         # length prefix at the start (safetensors, npy, FRAME)
            width = rng.choice((2, 4, 8))
            _put_int(buf, rng.choice((0, 1, 2, 3, 8, 9)), rng.choice(_INTERESTING), width)
    return bytes(buf)


# ---------------------------------------------------------------- seeds beyond the test corpus

def tar_gz(members: list[tuple[str, bytes]]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def extra_seeds(rce: bytes) -> dict[str, bytes]:
    """Seeds the corpus lacks: compressed tarballs, a gzip'd pickle, a huge-shape safetensors header."""
    import json

    shape_header = json.dumps({"t": {"dtype": "F32", "shape": [10**18] * 200, "data_offsets": [0, 4]}}).encode()
    return {
        "rce_then_padding.tar.gz": tar_gz([("a/evil.pkl", rce), ("a/pad.bin", bytes(range(256)) * 64)]),
        "model.tar.gz": tar_gz([("m/config.json", b'{"a": 1}'), ("m/w.npy", b"\x93NUMPY\x01\x00v\x00"
                                 + b"{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }".ljust(117)
                                 + b"\n" + b"\x00" * 8)]),
        "pickle.gz": gzip.compress(rce),
        "shape.safetensors": struct.pack("<Q", len(shape_header)) + shape_header + b"\x00" * 4,
    }


def seed_files(dirs: list[Path]) -> dict[str, bytes]:
    """Every regular file under ``dirs`` (the generated corpus), by name."""
    out: dict[str, bytes] = {}
    for d in dirs:
        for p in sorted(d.rglob("*")):
            if p.is_file() and not p.is_symlink() and p.stat().st_size <= 4 * 1024**2:
                out[f"{d.name}/{p.relative_to(d)}"] = p.read_bytes()
    return out


def optional_formats_installed() -> bool:
    """py7zr and h5py (the ``formats`` extra) present: 7z and HDF5 seeds are in the corpus."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("py7zr", "h5py"))
