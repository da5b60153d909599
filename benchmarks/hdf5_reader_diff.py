"""Benchmark: bastion's own HDF5 reader against the h5py path on mutated HDF5 files.

For each mutated file (the HDF5 files of the test corpus and ``corpus.hdf5_variants``, mutated by
``tests/supply/fuzzing.mutate``) the Keras HDF5 scan runs twice: with bastion's reader
(``bastion.supply.formats.keras._scan_hdf5_builtin``) and with h5py in its bounded worker (the path the
reader hands declined files to). A file the reader reads must give exactly h5py's findings (only
``metrics.hdf5_reader`` differs; "cannot be opened" compared without the reason). Needs h5py::

    python benchmarks/hdf5_reader_diff.py --n 10000 --seed 11 [--keep DIR]

Prints how many files the reader read, declined, and how many disagree (kept in ``--keep`` for study);
the test suite runs a bounded version (``tests/supply/test_hdf5_reader.py``).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "supply"))

import corpus
import fuzzing
from bastion.supply import InspectConfig
from bastion.supply.context import LimitExceeded, ScanContext
from bastion.supply.formats import HDF5_MAGIC, keras
from bastion.supply.isolate import run_isolated

logging.disable(logging.CRITICAL)
_CFG = InspectConfig(max_file_seconds=2)


def _rows(ctx: ScanContext) -> tuple[list[tuple[object, ...]], str, list[str]]:
    def row(f: object) -> tuple[object, ...]:
        if f.title.startswith("HDF5 file cannot be opened"):           # type: ignore[attr-defined]
            return ("cannot be opened",)
        return (f.rule_id, f.severity.value, f.title, f.offset, f.description,   # type: ignore[attr-defined]
                json.dumps({k: v for k, v in f.metrics.items() if k != "hdf5_reader"},  # type: ignore[attr-defined]
                           sort_keys=True, default=str))

    return sorted(map(row, ctx.findings)), ctx.formats[-1], ctx.not_analysed


def compare(path: Path) -> str:
    """"declined", "limit" (a time limit on either side), "same" or "differ"."""
    size = path.stat().st_size
    ours = ScanContext(_CFG, path, formats=["hdf5"])
    try:
        with open(path, "rb") as fh:
            if not keras._scan_hdf5_builtin(ours, fh, size):
                return "declined"
    except LimitExceeded:
        return "limit"
    theirs = ScanContext(_CFG, path, formats=["hdf5"])
    try:
        with open(path, "rb") as fh:
            run_isolated(theirs, fh, size, keras._scan_hdf5_h5py, "HDF5", setup=keras._import_h5py)
    except LimitExceeded:
        return "limit"
    return "same" if _rows(ours) == _rows(theirs) else "differ"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000, help="mutated files")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--keep", type=Path, default=None, help="copy the files that differ here")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bastion-h5diff-"))
    try:
        corpus.build_malicious(work / "mal")
        corpus.build_benign(work / "ben")
        (work / "var").mkdir()
        corpus.hdf5_variants(work / "var")
        seeds = {k: v for k, v in fuzzing.seed_files([work / "mal", work / "ben", work / "var"]).items()
                 if v.startswith(HDF5_MAGIC)}
        names = sorted(seeds)
        rng = random.Random(args.seed)
        counts = {"same": 0, "differ": 0, "declined": 0, "limit": 0}
        t0 = time.perf_counter()
        for i in range(args.n):
            path = work / f"m{i}.h5"
            path.write_bytes(fuzzing.mutate(seeds[names[i % len(names)]], rng))
            outcome = compare(path)
            counts[outcome] += 1
            if outcome == "differ":
                print(f"differ: mutant {i} of {names[i % len(names)]}")
                if args.keep:
                    args.keep.mkdir(parents=True, exist_ok=True)
                    shutil.copy(path, args.keep / path.name)
            path.unlink()
        read = counts["same"] + counts["differ"]
        print(f"{args.n} mutants of {len(seeds)} HDF5 seeds (seed {args.seed}), {time.perf_counter() - t0:.0f} s: "
              f"read by bastion's reader {read}, of which differ from h5py {counts['differ']}; "
              f"declined (left to h5py) {counts['declined']}; time limit {counts['limit']}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
