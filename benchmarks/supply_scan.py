"""Benchmark: bastion inspect vs modelscan, picklescan and fickling on one corpus, in one run.

Run in the benchmark venv (reference tools are never bastion dependencies)::

    python3 -m venv --system-site-packages benchmarks/.env
    benchmarks/.env/bin/pip install modelscan picklescan fickling
    benchmarks/.env/bin/python benchmarks/supply_scan.py [--out benchmarks/results/supply-scan.md] [--repeat 5]

Measures detection and false positives on the generated corpus (tests/supply/corpus.py), the time to
scan a directory of 1,000 model files and the time to scan a 1 GB PyTorch checkpoint (made in a
temporary directory and deleted; its tensor storage is never pickle).

Timing is done two ways, both with the same files and the same interpreter (this venv's python):

* in-process: each tool's Python API called in this one process (imports and allow-list set-up
  done once beforehand, as a long-running service would);
* CLI: a fresh process per scan (``python -m bastion inspect DIR``, ``picklescan -p DIR``,
  ``modelscan -p DIR``), so start-up and imports count. fickling's CLI takes one file per process
  and is left out of this one.

Each round runs every tool once, in an order rotated from round to round; the tables give the median
wall time (and min-max) and the median CPU time over ``--repeat`` rounds. The machine is shared with
other jobs, so wall times are noisy; CPU time (user+sys of the process or of the child) is the
steadier figure. For the 1 GB checkpoint the bytes each tool read through read() calls (``rchar`` of
/proc/self/io) tell whether it read the tensor storage.

Decision rules: bastion flags a file when a finding is >= high (its default --fail-on); modelscan when
it reports any issue; picklescan when it reports an infected file or a dangerous global; fickling when
its verdict is not LIKELY_SAFE (``fickling.is_likely_safe``). Errors are counted apart.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "supply"))

import corpus

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
        except Exception:  # noqa: BLE001 - a tool crash is counted as an error
            err = True
    return flagged, err


TOOLS: dict[str, Callable[[Path], tuple[bool, bool]]] = {
    "bastion": run_bastion, "modelscan": run_modelscan, "picklescan": run_picklescan, "fickling": run_fickling}


def _safe(fn: Callable[[Path], tuple[bool, bool]], p: Path) -> tuple[bool, bool]:
    try:
        return fn(p)
    except Exception:  # noqa: BLE001 - a tool crash is counted as an error
        return False, True


def _rchar() -> int:
    """Bytes this process has read through read() calls so far (Linux /proc/self/io), or -1."""
    try:
        with open("/proc/self/io") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("rchar:"))
    except (OSError, StopIteration, ValueError):
        return -1


def _in_process(fn: Callable[[Path], tuple[bool, bool]], p: Path) -> tuple[float, float]:
    """(wall, cpu) seconds of one call in this process."""
    t0, c0 = time.perf_counter(), time.process_time()
    _safe(fn, p)
    return time.perf_counter() - t0, time.process_time() - c0


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _cli(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """(wall, cpu) seconds of one fresh process (exit status ignored: findings exit non-zero)."""
    t0, c0 = time.perf_counter(), _children_cpu()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, env=env)
    return time.perf_counter() - t0, _children_cpu() - c0


# Another bastion source tree (e.g. an older commit) timed the in-process way inside its own process.
_BASELINE_SNIPPET = (
    "import logging, sys, time\n"
    "from pathlib import Path\n"
    "from bastion.supply import scan_paths\n"
    "logging.disable(logging.CRITICAL)\n"
    "p = Path(sys.argv[1]); scan_paths([p])\n"
    "t, c = time.perf_counter(), time.process_time(); scan_paths([p])\n"
    "print(time.perf_counter() - t, time.process_time() - c)\n")


def _compile_bytecode(baseline_src: Path | None) -> None:
    """Byte-compile bastion (and the baseline tree) as ``pip install`` does: the reference tools' modules
    were compiled when they were installed, and with PYTHONDONTWRITEBYTECODE set an editable bastion
    would otherwise be compiled from source in every timed process."""
    import compileall

    import bastion

    for pkg in (Path(bastion.__file__).parent, baseline_src / "bastion" if baseline_src else None):
        if pkg is not None:
            compileall.compile_dir(str(pkg), quiet=1)


def _baseline_in_process(src: Path, target: Path) -> tuple[float, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run([sys.executable, "-c", _BASELINE_SNIPPET, str(target)], env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[0]), float(out[1])


def _rounds(runs: dict[str, Callable[[], tuple[float, float]]], repeat: int) -> dict[str, list[tuple[float, float]]]:
    """Run every tool once per round, the order rotated each round; all (wall, cpu) samples."""
    names = list(runs)
    out: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    for r in range(repeat):
        for n in names[r % len(names):] + names[:r % len(names)]:
            out[n].append(runs[n]())
    return out


def _fmt(samples: list[tuple[float, float]], digits: int = 2) -> tuple[str, str]:
    walls = [w for w, _ in samples]
    cpus = [c for _, c in samples]
    return (f"{statistics.median(walls):.{digits}f} ({min(walls):.{digits}f}-{max(walls):.{digits}f})",
            f"{statistics.median(cpus):.{digits}f}")


def _median_wall(samples: list[tuple[float, float]]) -> float:
    return statistics.median(w for w, _ in samples)


def _median_cpu(samples: list[tuple[float, float]]) -> float:
    return statistics.median(c for _, c in samples)


def _coverage(many: Path) -> dict[str, str]:
    """What each tool actually looked at in the 1,000-file directory (one extra run each)."""
    from modelscan.modelscan import ModelScan
    from picklescan.scanner import scan_directory_path

    from bastion.supply import scan_paths

    b = scan_paths([many])
    m = ModelScan().scan(many)
    ps = scan_directory_path(str(many))
    sm = m.get("summary", {})
    return {
        "bastion": f"{b.files_scanned} files (content-detected formats, archive members included), "
                   f"{len(b.errors)} errors",
        "modelscan": f"{sm.get('scanned', {}).get('total_scanned', '?')} scanned, "
                     f"{sm.get('skipped', {}).get('total_skipped', '?')} skipped (files and archive members), "
                     f"{len(m.get('errors') or [])} errors",
        "picklescan": f"{ps.scanned_files} pickles scanned (files selected by extension; .npy, .safetensors, "
                      f".onnx, .keras skipped), scan errors: {'yes' if ps.scan_err else 'no'}",
        "fickling": "every file, one by one (its API takes a file)",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "supply-scan.md")
    ap.add_argument("--n-files", type=int, default=1000)
    ap.add_argument("--big-gb", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=5, help="timing rounds (median reported)")
    ap.add_argument("--baseline-src", type=Path, default=None,
                    help="a src/ directory of another bastion version to time alongside (before/after), e.g. "
                    "made by: git archive <commit> src/bastion | tar -x -C /tmp/old  ->  /tmp/old/src")
    ap.add_argument("--baseline-label", default="baseline")
    ap.add_argument("--mixed-only", type=int, default=0, metavar="N",
                    help="only time the CLIs on a directory of N mixed model files (benign and malicious corpus "
                    "files of every format, copied round-robin) and write that table to --out")
    ap.add_argument("--core-formats", action="store_true",
                    help="with --mixed-only: leave out 7z and HDF5 files (the formats extra: py7zr, h5py)")
    args = ap.parse_args()
    _compile_bytecode(args.baseline_src)
    if args.mixed_only:
        mixed_cli(args)
        return

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
        for fn in TOOLS.values():   # warm-up: imports, allow-lists, file cache
            _safe(fn, many)
        api_runs: dict[str, Callable[[], tuple[float, float]]] = {
            t: (lambda fn=fn: _in_process(fn, many)) for t, fn in TOOLS.items()}
        py = sys.executable
        bindir = Path(py).parent
        cli = {"bastion": [py, "-m", "bastion", "inspect", str(many)],
               "picklescan": [str(bindir / "picklescan"), "-p", str(many)],
               "modelscan": [str(bindir / "modelscan"), "-p", str(many)]}
        cli_runs: dict[str, Callable[[], tuple[float, float]]] = {
            t: (lambda argv=argv: _cli(argv)) for t, argv in cli.items()}
        base = f"bastion @ {args.baseline_label}"
        if args.baseline_src:
            src = args.baseline_src.resolve()
            api_runs[base] = lambda: _baseline_in_process(src, many)
            cli_runs[base] = lambda: _cli(cli["bastion"], {**os.environ, "PYTHONPATH": str(src)})
        many_api = _rounds(api_runs, args.repeat)
        many_cli = _rounds(cli_runs, args.repeat)
        coverage = _coverage(many)

        import torch

        big = work / "big.pt"
        n = int(args.big_gb * 1024**3 // 4)
        torch.save({"weight": torch.zeros(n, dtype=torch.float32), "step": 1}, big)
        del torch
        size_gb = big.stat().st_size / 1024**3
        big_read: dict[str, int] = {}
        big_verdict: dict[str, tuple[bool, bool]] = {}
        for t, fn in TOOLS.items():
            r0 = _rchar()
            big_verdict[t] = _safe(fn, big)
            big_read[t] = _rchar() - r0
        big_api = _rounds({t: (lambda fn=fn: _in_process(fn, big)) for t, fn in TOOLS.items()}, args.repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    versions = {"bastion": version("bastion"), "modelscan": version("modelscan"),
                "picklescan": version("picklescan"), "fickling": version("fickling")}
    cpu = os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "# Supply-chain scanner benchmark (`benchmarks/supply_scan.py`)",
        "",
        f"Machine: {platform.machine()} CPU, {cpu} cores shared with other jobs (load average at the end: "
        f"{load:.1f}), Python {platform.python_version()}, {platform.system()}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        "",
        (f"Corpus (generated by `tests/supply/corpus.py`): {len(mal)} malicious items, {len(ben)} benign items "
        "(benign files made by torch, scikit-learn/joblib, numpy, onnx; safetensors written per spec)."),
        ("Decision rules: bastion = a finding >= high; modelscan = any issue; picklescan = infected file or "
        "dangerous global; fickling = verdict other than LIKELY_SAFE. Errors are counted separately."),
        "",
        "## Detection",
        "",
        "| tool | malicious detected | errors on malicious | benign flagged (FP) | errors on benign |",
        "| --- | --- | --- | --- | --- |",
    ]
    for t, r in rows.items():
        lines.append(f"| {t} | {r['det']}/{len(mal)} | {r['det_err']} | {r['fp']}/{len(ben)} | {r['fp_err']} |")
    lines += [
        "",
        f"## {args.n_files} model files in one directory",
        "",
        (f"Copies of the {len(models)} benign model files (torch zip/legacy/TorchScript, sklearn pickles and "
        "joblib, npy/npz, safetensors, onnx, keras). Seconds; median of "
        f"{args.repeat} rounds (min-max), tools alternated."),
        "",
        "| tool | in-process wall | in-process CPU | CLI wall (fresh process) | CLI CPU | what it scanned |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for t in many_api:
        w, c = _fmt(many_api[t])
        cw, cc = _fmt(many_cli[t]) if t in many_cli else ("n/a", "n/a")
        what = coverage.get(t, f"the same, with the bastion source at {args.baseline_src}")
        lines.append(f"| {t} | {w} | {c} | {cw} | {cc} | {what} |")
    others = [t for t in TOOLS if t != "bastion"]
    fast_api = min(others, key=lambda t: _median_wall(many_api[t]))
    fast_cli = min((t for t in cli if t != "bastion"), key=lambda t: _median_wall(many_cli[t]))
    lines += [
        "",
        (f"Ratios bastion / fastest other tool (median wall; median CPU): in-process "
        f"{_median_wall(many_api['bastion']) / _median_wall(many_api[fast_api]):.2f} / "
        f"{_median_cpu(many_api['bastion']) / _median_cpu(many_api[fast_api]):.2f} (vs {fast_api}); CLI "
        f"{_median_wall(many_cli['bastion']) / _median_wall(many_cli[fast_cli]):.2f} / "
        f"{_median_cpu(many_cli['bastion']) / _median_cpu(many_cli[fast_cli]):.2f} (vs {fast_cli})."),
        "",
        f"## One {size_gb:.2f} GB PyTorch checkpoint",
        "",
        "In-process, seconds, median of rounds (min-max). *Bytes read* counts read() calls during one scan.",
        "",
        "| tool | wall | CPU | bytes read | flagged | error |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for t in TOOLS:
        w, c = _fmt(big_api[t], 3)
        lines.append(f"| {t} | {w} | {c} | {big_read[t] / 1024:,.0f} KiB | {big_verdict[t][0]} | "
                     f"{big_verdict[t][1]} |")
    lines += ["", "Malicious items missed per tool:", ""]
    for t, r in rows.items():
        lines.append(f"- **{t}** ({len(r['missed'])}): " + (", ".join(f"`{m}`" for m in r["missed"]) or "none"))
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


def mixed_cli(args: argparse.Namespace) -> None:
    """CLI wall and CPU time of bastion inspect (this tree, and --baseline-src), picklescan and modelscan on
    one directory of mixed model files: every format of the corpus, malicious files included."""
    work = Path(tempfile.mkdtemp(prefix="bastion-supply-mixed-"))
    try:
        files = [p for root, items in ((work / "mal", corpus.build_malicious(work / "mal")),
                                       (work / "ben", corpus.build_benign(work / "ben")))
                 for p in _files(root) if p.is_file() and not p.is_symlink()]
        if args.core_formats:
            files = [p for p in files if not p.read_bytes().startswith((b"7z\xbc\xaf\x27\x1c", b"\x89HDF\r\n\x1a\n"))]
        mixed = work / "mixed"
        mixed.mkdir()
        for k in range(args.mixed_only):
            src = files[k % len(files)]
            shutil.copyfile(src, mixed / f"{k:04d}_{src.name}")
        kinds = sorted({src.suffix or src.name for src in files})
        py = sys.executable
        bindir = Path(py).parent
        argv = {"bastion": [py, "-m", "bastion", "inspect", str(mixed)],
                "picklescan": [str(bindir / "picklescan"), "-p", str(mixed)],
                "modelscan": [str(bindir / "modelscan"), "-p", str(mixed)]}
        runs: dict[str, Callable[[], tuple[float, float]]] = {t: (lambda a=a: _cli(a)) for t, a in argv.items()}
        base = f"bastion @ {args.baseline_label}"
        if args.baseline_src:
            src_dir = args.baseline_src.resolve()
            runs[base] = lambda: _cli(argv["bastion"], {**os.environ, "PYTHONPATH": str(src_dir)})
        for run in runs.values():       # warm-up: file cache, .pyc files
            run()
        samples = _rounds(runs, args.repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    what = "core-format" if args.core_formats else "mixed"
    flag = f"--mixed-only {args.mixed_only}" + (" --core-formats" if args.core_formats else "")
    lines = [f"## CLI on {args.mixed_only} {what} model files (`{flag}`)", "",
             f"{len(files)} corpus files ({', '.join(kinds)}) copied round-robin into one directory; a fresh "
             f"process per scan (byte-code compiled beforehand, as pip does); seconds, median of {args.repeat} "
             f"alternated rounds (min-max); CPU = user+sys of the process and its children. Machine: "
             f"{os.cpu_count()} cores shared with other jobs (load average at the end: {load:.1f}). Versions: "
             f"picklescan {version('picklescan')}, modelscan {version('modelscan')}.", "",
             "| tool | CLI wall | CLI CPU | wall / picklescan | CPU / picklescan |", "| --- | --- | --- | --- | --- |"]
    ref_w, ref_c = _median_wall(samples["picklescan"]), _median_cpu(samples["picklescan"])
    for t, smp in samples.items():
        w, c = _fmt(smp)
        lines.append(f"| {t} | {w} | {c} | {_median_wall(smp) / ref_w:.2f} | {_median_cpu(smp) / ref_c:.2f} |")
    text = "\n".join(lines) + "\n"
    out = args.out.read_text() if args.out.exists() else ""
    head = f"## CLI on {args.mixed_only} {what} model files"
    if head in out:                     # replace the section from an earlier run
        start = out.index(head)
        nxt = out.find("\n## ", start + 1)
        out = out[:start] + text + ("\n" + out[nxt + 1:] if nxt >= 0 else "")
    else:
        out = out.rstrip("\n") + "\n\n" + text
    args.out.write_text(out)
    print(text)


if __name__ == "__main__":
    main()
