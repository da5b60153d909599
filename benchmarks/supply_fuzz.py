"""Fuzz run: thousands of mutated model files of every format through ``bastion inspect`` (issue 7).

Seeds are the generated test corpus (tests/supply/corpus.py: pickle protocols 0-5, PyTorch zip, legacy
and TorchScript, joblib and its compressors, npy/npz, safetensors, ONNX, Keras zip/HDF5/JSON, zip, tar,
7z) plus compressed tarballs and a huge-shape safetensors header (tests/supply/fuzzing.py); each mutated
file is scanned by ``scan_file`` in this process. Counted per run:

* crashes: an exception escaping ``scan_file`` (a traceback for the user, findings lost);
* reader failures: an exception a reader let through, caught by the safety net and reported as "not
  analysed" (no crash, but a bug to fix);
* not analysed / findings / slowest file, for the record.

Run::

    .venv/bin/python benchmarks/supply_fuzz.py --n 3000 --seed 0 [--out benchmarks/results/supply-fuzz.md]
"""

from __future__ import annotations

import argparse
import collections
import logging
import platform
import random
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "supply"))

import corpus  # noqa: E402
import fuzzing  # noqa: E402

logging.disable(logging.CRITICAL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000, help="mutated files")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-file-seconds", type=float, default=5.0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "supply-fuzz.md")
    args = ap.parse_args()

    from bastion import __version__
    from bastion.supply import InspectConfig
    from bastion.supply.formats import detect
    from bastion.supply.inspect import scan_file

    cfg = InspectConfig(max_file_seconds=args.max_file_seconds)
    work = Path(tempfile.mkdtemp(prefix="bastion-fuzz-"))
    crashes: collections.Counter[str] = collections.Counter()
    failures: collections.Counter[str] = collections.Counter()
    per_kind: collections.Counter[str] = collections.Counter()
    examples: dict[str, str] = {}
    not_analysed = findings = 0
    slowest = (0.0, "")
    try:
        corpus.build_malicious(work / "mal")
        corpus.build_benign(work / "ben")
        seeds = fuzzing.seed_files([work / "mal", work / "ben"])
        seeds.update(fuzzing.extra_seeds(corpus.RCE_P0))
        names = sorted(seeds)
        rng = random.Random(args.seed)
        path = work / "mutated"
        t0 = time.perf_counter()
        for k in range(args.n):
            name = names[k % len(names)]
            data = fuzzing.mutate(seeds[name], rng)
            per_kind[detect(seeds[name][:4096], len(seeds[name]))] += 1
            path.write_bytes(data)
            t = time.perf_counter()
            try:
                res = scan_file(path, cfg)
            except Exception as exc:  # noqa: BLE001 - what this run counts
                tb = traceback.extract_tb(exc.__traceback__)[-1]
                key = f"{type(exc).__name__} at {Path(tb.filename).name}:{tb.lineno}"
                crashes[key] += 1
                examples.setdefault(key, name)
                continue
            dt = time.perf_counter() - t
            if dt > slowest[0]:
                slowest = (dt, name)
            findings += len(res.findings)
            not_analysed += bool(res.not_analysed)
            for why in res.not_analysed:
                if "reader failure" in why:
                    key = why.split(":")[0] + ": " + why.split(":")[1].strip()
                    failures[key] += 1
                    examples.setdefault(key, name)
        seconds = time.perf_counter() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)

    lines = [
        "# Fuzz run of `bastion inspect` (`benchmarks/supply_fuzz.py`)", "",
        f"{args.n} mutated files from {len(names)} seeds (seed {args.seed}), max_file_seconds "
        f"{args.max_file_seconds:g}; bastion {__version__}, Python {platform.python_version()}, "
        f"{platform.machine()}; {seconds:.0f} s in all.", "",
        "Seeds by detected format: " + ", ".join(f"{k} {v}" for k, v in sorted(per_kind.items())) + ".", "",
        "| outcome | files |", "| --- | --- |",
        f"| unhandled exception (crash, findings lost) | **{sum(crashes.values())}** |",
        f"| reader failure caught by the safety net | **{sum(failures.values())}** |",
        f"| reported not analysed (any reason) | {not_analysed} |",
        f"| findings in all | {findings} |",
        f"| slowest file | {slowest[0]:.2f} s ({slowest[1]}) |", "",
    ]
    for title, counter in (("Crashes", crashes), ("Reader failures", failures)):
        if counter:
            lines += [f"{title}:", ""] + [f"- {n} x {k} (seed {examples[k]})" for k, n in counter.most_common()]
            lines.append("")
    text = "\n".join(lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    sys.exit(1 if crashes else 0)


if __name__ == "__main__":
    main()
