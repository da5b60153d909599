"""Hashing throughput: bastion's parallel chunked SHA-256 vs plain single-threaded hashlib.

Makes a ~1 GB file of random bytes in a temporary directory (deleted afterwards), warms the page
cache with one read, then times, in alternating order over several rounds:

* ``hashlib``: one streamed ``hashlib.sha256`` over the file (1 MiB reads), one thread;
* ``bastion w=1``: :func:`bastion.supply.manifest.hash_files` with one worker (chunked scheme);
* ``bastion w=N``: the same with one worker per CPU core (the default of ``bastion sign``);
* ``sha256sum``: the coreutils binary, for reference, if it is on PATH.

Usage: ``python benchmarks/hash_speed.py [--size-mb 1024] [--rounds 3] [--chunk-mb 16]``
Prints a Markdown table (median seconds and MB/s per method).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def plain_hashlib(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def main() -> None:
    from bastion.supply.manifest import default_workers, hash_files

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--chunk-mb", type=int, default=16)
    ap.add_argument("--dir", default=None, help="where to make the file (default: system temp dir)")
    args = ap.parse_args()

    size = args.size_mb * 1024 * 1024
    chunk = args.chunk_mb * 1024 * 1024
    workers = default_workers()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bastion-hash-bench-") as tmp:
        path = Path(tmp) / "big.bin"
        block = os.urandom(64 << 20)
        with open(path, "wb") as fh:
            for i in range(size // len(block)):
                fh.write(block[:8] + i.to_bytes(8, "little") + block[16:])  # distinct blocks
        plain_hashlib(path)  # warm the page cache: every method then reads from memory

        methods: dict[str, Callable[[], str]] = {
            "hashlib (1 thread, streamed)": lambda: plain_hashlib(path),
            "bastion chunked, 1 worker": lambda: str(hash_files(tmp, [("big.bin", size)], chunk_size=chunk,
                                                                workers=1).entries["big.bin"].digest),
            f"bastion chunked, {workers} workers": lambda: str(hash_files(tmp, [("big.bin", size)],
                                                                          chunk_size=chunk,
                                                                          workers=workers).entries["big.bin"].digest),
        }
        if shutil.which("sha256sum"):
            methods["sha256sum (coreutils)"] = lambda: subprocess.run(
                ["sha256sum", str(path)], check=True, capture_output=True, text=True).stdout.split()[0]
        times: dict[str, list[float]] = {m: [] for m in methods}
        digests: dict[str, set[str]] = {m: set() for m in methods}
        for r in range(args.rounds):
            order = list(methods) if r % 2 == 0 else list(reversed(methods))
            for name in order:
                t0 = time.perf_counter()
                digests[name].add(methods[name]())
                times[name].append(time.perf_counter() - t0)

    base = statistics.median(times["hashlib (1 thread, streamed)"])
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
          f"OpenSSL {__import__('ssl').OPENSSL_VERSION}; file {args.size_mb} MiB (page cache warm), "
          f"chunk {args.chunk_mb} MiB, {args.rounds} rounds, load average before: {os.getloadavg()[0]:.2f}")
    print()
    print("| method | median s | MB/s | speed-up vs hashlib |")
    print("| --- | ---: | ---: | ---: |")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med:.2f} | {size / 1e6 / med:.0f} | {base / med:.2f}x |")
    chunked = digests["bastion chunked, 1 worker"] | digests[f"bastion chunked, {workers} workers"]
    print()
    print(f"chunked digest identical for 1 and {workers} workers over all rounds: {len(chunked) == 1}")


if __name__ == "__main__":
    main()
