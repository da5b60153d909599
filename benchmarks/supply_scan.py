"""Benchmark: bastion inspect vs modelscan, picklescan and fickling on one corpus, in one run.

Run in the benchmark venv (reference tools are never bastion dependencies)::

    python3 -m venv --system-site-packages benchmarks/.env
    benchmarks/.env/bin/pip install modelscan picklescan fickling
    benchmarks/.env/bin/python benchmarks/supply_scan.py [--out benchmarks/results/supply-scan.md]

Measures detection and false positives on the generated corpus (tests/supply/corpus.py), the wall time
to scan a directory of 1,000 model files, and the wall time to scan a 1 GB PyTorch checkpoint (made
in a temporary directory and deleted; its tensor storage is never pickle).

Decision rules: bastion flags a file when a finding is >= high (its default --fail-on); modelscan when
it reports any issue; picklescan when it reports an infected file or a dangerous global; fickling when
its verdict is not LIKELY_SAFE (``fickling.is_likely_safe``). Errors are counted apart.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "supply"))

import corpus  # noqa: E402

logging.disable(logging.CRITICAL)


def _files(p: Path) -> list[Path]:
    return [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file() or q.is_symlink())


# ------------------------------------------------------------------ tool adapters: path -> (flagged, error)
def run_bastion(p: Path) -> tuple[bool, bool]:
    from bastion.supply import scan_paths

    res = scan_paths([p])
    return res.failed(), bool(res.errors)


def run_modelscan(p: Path) -> tuple[bool, bool]:
    from modelscan.modelscan import ModelScan

    r = ModelScan().scan(p)
    return bool(r.get("issues")), bool(r.get("errors"))


def run_picklescan(p: Path) -> tuple[bool, bool]:
    from picklescan.scanner import scan_directory_path, scan_file_path

    r = scan_directory_path(str(p)) if p.is_dir() else scan_file_path(str(p))
    return bool(r.infected_files or r.issues_count), bool(r.scan_err)


def run_fickling(p: Path) -> tuple[bool, bool]:
    import fickling
    from fickling.analysis import Severity

    flagged = err = False
    for f in _files(p):
        try:
            r = fickling.scan_file(str(f), graceful=True)
            flagged |= r.severity != Severity.LIKELY_SAFE
            err |= bool(r.errors)
        except Exception:
            err = True
    return flagged, err


TOOLS: dict[str, Callable[[Path], tuple[bool, bool]]] = {
    "bastion": run_bastion, "modelscan": run_modelscan, "picklescan": run_picklescan, "fickling": run_fickling}


def _safe(fn: Callable[[Path], tuple[bool, bool]], p: Path) -> tuple[bool, bool]:
    try:
        return fn(p)
    except Exception:
        return False, True


def _timed(fn: Callable[[Path], tuple[bool, bool]], p: Path, repeat: int = 2) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        _safe(fn, p)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "supply-scan.md")
    ap.add_argument("--n-files", type=int, default=1000)
    ap.add_argument("--big-gb", type=float, default=1.0)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bastion-supply-bench-"))
    try:
        mal = corpus.build_malicious(work / "mal")
        ben = corpus.build_benign(work / "ben")
        rows = {t: {"det": 0, "det_err": 0, "fp": 0, "fp_err": 0, "missed": []} for t in TOOLS}
        for items, root, key in ((mal, work / "mal", "det"), (ben, work / "ben", "fp")):
            for item in items:
                for tool, fn in TOOLS.items():
                    flagged, err = _safe(fn, root / item.name)
                    rows[tool][key] += flagged
                    rows[tool][f"{key}_err"] += err
                    if key == "det" and not flagged:
                        rows[tool]["missed"].append(item.name)

        # 1,000 model files: copies of the benign model files (text/JSON files left out)
        models = [work / "ben" / i.name for i in ben if (work / "ben" / i.name).is_file()
                  and not i.name.endswith((".md", ".json"))]
        many = work / "many"
        many.mkdir()
        for k in range(args.n_files):
            src = models[k % len(models)]
            shutil.copyfile(src, many / f"{k:04d}_{src.name}")
        times_many = {t: _timed(fn, many) for t, fn in TOOLS.items()}

        import torch

        big = work / "big.pt"
        n = int(args.big_gb * 1024**3 // 4)
        torch.save({"weight": torch.zeros(n, dtype=torch.float32), "step": 1}, big)
        del torch
        size_gb = big.stat().st_size / 1024**3
        times_big = {t: _timed(fn, big) for t, fn in TOOLS.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    versions = {"bastion": version("bastion"), "modelscan": version("modelscan"),
                "picklescan": version("picklescan"), "fickling": version("fickling")}
    lines = [
        "# Supply-chain scanner benchmark (`benchmarks/supply_scan.py`)",
        "",
        f"Machine: {platform.machine()} CPU, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.system()}. Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        "",
        f"Corpus (generated by `tests/supply/corpus.py`): {len(mal)} malicious items, {len(ben)} benign items "
        "(benign files made by torch, scikit-learn/joblib, numpy, onnx; safetensors written per spec).",
        "Decision rules: bastion = a finding >= high; modelscan = any issue; picklescan = infected file or "
        "dangerous global; fickling = verdict other than LIKELY_SAFE. Errors are counted separately.",
        "",
        "| tool | malicious detected | errors on malicious | benign flagged (FP) | errors on benign | "
        f"{args.n_files} files (s) | {size_gb:.2f} GB checkpoint (s) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for t, r in rows.items():
        lines.append(f"| {t} | {r['det']}/{len(mal)} | {r['det_err']} | {r['fp']}/{len(ben)} | {r['fp_err']} | "
                     f"{times_many[t]:.2f} | {times_big[t]:.3f} |")
    fastest_many = min(v for k, v in times_many.items() if k != "bastion")
    fastest_big = min(v for k, v in times_big.items() if k != "bastion")
    lines += ["", f"Time ratios (bastion / fastest other tool): {args.n_files} files "
              f"{times_many['bastion'] / fastest_many:.2f}x, 1 GB checkpoint {times_big['bastion'] / fastest_big:.2f}x "
              "(best of 2 runs each).", "", "Malicious items missed per tool:", ""]
    for t, r in rows.items():
        lines.append(f"- **{t}** ({len(r['missed'])}): " + (", ".join(f"`{m}`" for m in r["missed"]) or "none"))
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
