"""``bastion audit-data`` at scale (issue 12): a synthetic table of ``--rows`` records and 50 columns
(numeric, categorical, text, a random 16-digit id, a Luhn-valid timestamp, the label), split into
train (80%) and test (20%) CSV files, with injected problems whose records are known:

- exact duplicates (copies within train), near duplicates (text re-cased and re-spaced, one
  character changed in one text column, numbers moved by 1e-6 of their value), train/test leaks
  (exact and near copies of training records in test), conflicting labels (copies with another
  label), payment card numbers in a text column (three formats, five issuers);
- decoys that must not be flagged: random 16-digit ids (one in ten is Luhn-valid, some with a card
  issuer's prefix) and 16-digit epoch-microsecond timestamps made Luhn-valid.

The audit runs in a child process (``--audit-only``), so its peak memory (ru_maxrss) and CPU time
are its own. Recall is measured on the full record lists of the typed result, and every finding
is listed with the records it names outside the injected ones (false positives).

    python benchmarks/audit_data.py --rows 1000000 --out /tmp/auditbench      # generate + audit
    python benchmarks/audit_data.py --rows 1000000 --out /tmp/auditbench --deepchecks .benchenv/bin/python
    python benchmarks/audit_data.py --rows 1000000 --out /tmp/auditbench --no-bastion \
        --deepchecks .benchenv/bin/python --deepchecks-timeout 1800     # deepchecks alone, stopped after 30 min

deepchecks (0.19.1 needs NumPy < 2, pandas < 3 and scikit-learn < 1.6) lives in the benchmark virtualenv only.
Figures: RESULTS.md ("Data audit at a million rows") and results/audit-data.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

WORDS = np.array("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma "
                 "tau upsilon phi chi psi omega river stone cloud ember frost grove harbor island meadow".split())
N_NUM, N_CAT, N_TEXT = 33, 10, 4          # + uid + ts + label = 50 columns
INJECT = {"exact": 1000, "near": 1000, "leak": 500, "near_leak": 500, "conflict": 500, "cards": 300}


def luhn_fix(body: np.ndarray) -> np.ndarray:
    """Append the Luhn check digit to each row of digits ``body`` (m, L-1)."""
    rev = body[:, ::-1]
    d = rev.copy()
    d[:, 0::2] = d[:, 0::2] * 2
    d = np.where(d > 9, d - 9, d)
    check = (10 - d.sum(axis=1) % 10) % 10
    return np.concatenate([body, check[:, None]], axis=1)


def digits_str(d: np.ndarray) -> np.ndarray:
    return np.array(["".join(map(str, r)) for r in d], dtype=object)


def texts(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    w = WORDS[rng.integers(0, len(WORDS), (n, k))]
    out = w[:, 0].astype(object)
    for j in range(1, k):
        out = out + " " + w[:, j].astype(object)
    return out + " " + rng.integers(0, 10 ** 6, n).astype(str).astype(object)


def generate(rows: int, out: Path, seed: int = 0) -> dict:
    """Write train.csv and test.csv; return the injected records (global indices, train first)."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    rng = np.random.default_rng(seed)
    n = rows
    cols: dict[str, np.ndarray] = {}
    for j in range(N_NUM):
        x = rng.normal(j, 1 + j % 5, n) if j % 3 else rng.uniform(-100, 100, n)
        cols[f"num{j}"] = x
    for j in range(N_CAT):
        cols[f"cat{j}"] = np.array([f"c{j}_{v}" for v in range(3 + j * 3)], dtype=object)[rng.integers(0, 3 + j * 3, n)]
    for j in range(N_TEXT):
        cols[f"text{j}"] = texts(rng, n, 6 + j)
    uid = rng.integers(0, 10, (n, 16))
    uid[:, 0] = rng.integers(1, 10, n)
    cols["uid"] = digits_str(uid)                                                # decoy: random 16-digit ids
    ts = 1_600_000_000_000_000 + rng.integers(0, 10 ** 14, n)
    cols["ts"] = digits_str(luhn_fix(np.array([list(map(int, str(t)[:15])) for t in ts])))  # decoy: Luhn-valid
    # a label the features explain (so that label noise can be assessed): a score of num1 and cat0, cut at its
    # 50% and 85% quantiles
    score = cols["num1"] + 1.5 * (cols["cat0"] == "c0_0")
    cut = np.quantile(score, [0.5, 0.85])
    cols["label"] = np.array(["low", "mid", "high"], dtype=object)[np.digitize(score, cut)]

    n_train = int(0.8 * n)
    free_train = rng.permutation(n_train)
    take = iter(np.split(free_train, np.cumsum(list(INJECT.values())) * 2)[:-1])
    truth: dict[str, list[int]] = {}

    def copy(src: np.ndarray, dst: np.ndarray, near: bool = False, flip: bool = False) -> None:
        for c, v in cols.items():
            v[dst] = v[src]
        if near:
            for j in range(N_NUM):
                cols[f"num{j}"][dst] = cols[f"num{j}"][src] * (1 + 1e-6)
            for j in range(N_TEXT):
                cols[f"text{j}"][dst] = np.array([t.upper().replace(" ", "  ", 1) + "." for t in cols[f"text{j}"][src]],
                                                 dtype=object)
            t0 = cols["text0"][dst]
            cols["text0"][dst] = np.array([t[:3] + ("q" if t[3] != "q" else "z") + t[4:] for t in t0], dtype=object)
        if flip:
            other = {"low": "mid", "mid": "high", "high": "low"}
            cols["label"][dst] = np.array([other[v] for v in cols["label"][src]], dtype=object)

    for kind in ("exact", "near", "conflict"):
        pool = next(take)
        src, dst = pool[:INJECT[kind]], pool[INJECT[kind]:2 * INJECT[kind]]
        copy(src, dst, near=kind == "near", flip=kind == "conflict")
        truth[kind] = sorted(dst.tolist())
        truth[kind + "_src"] = sorted(src.tolist())
    test_idx = n_train + rng.permutation(n - n_train)
    for kind in ("leak", "near_leak"):
        src = next(take)[:INJECT[kind]]
        dst, test_idx = test_idx[:INJECT[kind]], test_idx[INJECT[kind]:]
        copy(src, dst, near=kind == "near_leak")
        truth[kind] = sorted(dst.tolist())
        truth[kind + "_src"] = sorted(src.tolist())
    used = set(np.concatenate([np.array(v) for v in truth.values()]).tolist())
    card_rows = rng.choice(np.array(sorted(set(range(n)) - used)), INJECT["cards"], replace=False)
    prefixes = ["4", "51", "55", "2221", "6011", "3530"]
    for i, r in enumerate(card_rows):
        p = prefixes[i % len(prefixes)]
        d = luhn_fix(np.array([[int(c) for c in p] + list(rng.integers(0, 10, 15 - len(p)))]))[0]
        s = "".join(map(str, d))
        s = [s, " ".join(s[k:k + 4] for k in range(0, 16, 4)), "-".join(s[k:k + 4] for k in range(0, 16, 4))][i % 3]
        cols["text2"][r] = cols["text2"][r] + f" paid by card {s}"
    truth["cards"] = sorted(card_rows.tolist())

    out.mkdir(parents=True, exist_ok=True)
    num_fmt = {c: np.char.mod("%.9g", v) for c, v in cols.items() if c.startswith("num")}
    for name, sl in (("train.csv", slice(0, n_train)), ("test.csv", slice(n_train, n))):
        table = pa.table({c: (num_fmt[c][sl] if c in num_fmt else pa.array(v[sl].tolist(), pa.string()))
                          for c, v in cols.items()})
        pcsv.write_csv(table, out / name)
    truth["n_train"] = n_train
    (out / "truth.json").write_text(json.dumps(truth))
    return truth


def audit_only(out: Path, result: Path) -> None:
    """The measured run: bastion's audit of train.csv and test.csv; full record lists to ``result``."""
    from bastion.audit.table import Source
    from bastion.audit.tabular import audit_table

    t0, c0 = time.perf_counter(), time.process_time()
    res = audit_table([Source(out / "train.csv", "train"), Source(out / "test.csv", "test")], label="label")
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    findings = [{"rule": f.rule_id, "title": f.title, "columns": f.columns, "records": f.records,
                 "samples": f.samples} for r in res.results for f in r.findings]
    result.write_text(json.dumps({"wall_s": wall, "cpu_s": cpu, "n": res.profile.n, "findings": findings,
                                  "seconds": {r.audit: r.seconds for r in res.results}}))


def deepchecks_run(out: Path, result: Path) -> None:
    """deepchecks' data-integrity suite (its 12 checks, default settings, on the training file) and
    its train-test leakage checks (TrainTestSamplesMix, the one that applies to a table without an
    index or a date column) on the same files, in the benchmark venv only. Each check is run and
    timed on its own; ``result`` is rewritten after each one, so a run stopped by the timeout
    keeps what finished."""
    import pandas as pd
    from deepchecks.core.errors import DeepchecksBaseError
    from deepchecks.tabular import Dataset
    from deepchecks.tabular.checks import TrainTestSamplesMix
    from deepchecks.tabular.suites import data_integrity

    rows: dict = {"checks": []}
    t0, c0 = time.perf_counter(), time.process_time()
    train = pd.read_csv(out / "train.csv", dtype={"uid": str, "ts": str})
    test = pd.read_csv(out / "test.csv", dtype={"uid": str, "ts": str})
    rows["read_s"], rows["read_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
    cat = [c for c in train.columns if c.startswith("cat")]
    ds_train = Dataset(train, label="label", cat_features=cat)
    ds_test = Dataset(test, label="label", cat_features=cat)
    checks = [("data-integrity", c) for c in data_integrity().checks.values()]
    checks.append(("train-test-leakage", TrainTestSamplesMix().add_condition_duplicates_ratio_less_or_equal()))
    for suite, check in checks:
        t1, c1 = time.perf_counter(), time.process_time()
        try:
            res = check.run(ds_train, ds_test) if suite == "train-test-leakage" else check.run(ds_train)
        except DeepchecksBaseError as exc:  # what the suite would show as "not run": e.g. no index or date column
            rows["checks"].append({"suite": suite, "check": check.name(), "seconds": time.perf_counter() - t1,
                                   "cpu_s": time.process_time() - c1, "not_run": f"{type(exc).__name__}: {exc}"})
        else:
            conds = [{"name": c.name, "passed": bool(c.is_pass()), "details": str(c.details)[:300]}
                     for c in getattr(res, "conditions_results", [])]
            rows["checks"].append({"suite": suite, "check": res.get_header(), "seconds": time.perf_counter() - t1,
                                   "cpu_s": time.process_time() - c1, "value": _short(res.value), "conditions": conds})
        result.write_text(json.dumps(rows, default=str))
    rows["done"] = True
    result.write_text(json.dumps(rows, default=str))


def _short(v: object) -> object:
    if isinstance(v, dict):
        return {str(k): _short(x) for k, x in list(v.items())[:12]}
    if isinstance(v, (list, tuple)):
        return [_short(x) for x in v[:12]]
    if hasattr(v, "shape"):
        return f"<{type(v).__name__} shape {getattr(v, 'shape', None)}>"
    return v if isinstance(v, (int, float, str, bool, type(None))) else str(v)[:200]


def child(cmd: list[str], timeout: float | None = None) -> tuple[float, float, int, bool]:
    """Run ``cmd``: (wall seconds, CPU seconds, peak RSS in bytes, timed out) of that child and the
    processes it waited for (``wait4``: its own resource usage, not earlier children's)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    timed_out = False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if timeout is not None and time.perf_counter() - t0 > timeout:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            timed_out = True
            break
        time.sleep(0.5)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode and not timed_out:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return time.perf_counter() - t0, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024, timed_out


def score(truth: dict, res: dict) -> dict:
    by = {}
    for f in res["findings"]:
        by.setdefault(f["rule"], set()).update(f["records"])
    n_train = truth["n_train"]
    checks = {"exact duplicates (DA-001)": ("BASTION-DA-001", truth["exact"]),
              "near duplicates (DA-002)": ("BASTION-DA-002", truth["near"]),
              "exact leaks (DA-003)": ("BASTION-DA-003", truth["leak"]),
              "near leaks (DA-004)": ("BASTION-DA-004", truth["near_leak"]),
              "conflicting labels (DA-005)": ("BASTION-DA-005", truth["conflict"]),
              "payment cards (DA-010)": ("BASTION-DA-010", truth["cards"])}
    out = {}
    for name, (rule, want) in checks.items():
        got = by.get(rule, set())
        out[name] = {"injected": len(want), "found": len(set(want) & got), "recall": len(set(want) & got) / len(want)}
    injected = set()
    for k in ("exact", "exact_src", "near", "near_src", "conflict", "conflict_src", "leak", "leak_src", "near_leak",
              "near_leak_src", "cards"):
        injected.update(truth[k])
    srcs = {}  # the training originals of the leaks are named too: they are the other side of each pair
    for f in res["findings"]:
        if f["rule"] in ("BASTION-DA-003", "BASTION-DA-004"):
            srcs.setdefault(f["rule"], set()).update(r for r in f["records"] if r < n_train)
    extra = []
    noise = [f for f in res["findings"] if f["rule"] == "BASTION-DA-007"]
    flagged = set(r for f in noise for r in f["records"])
    out["label-noise candidates (DA-007)"] = {
        "titles": [f["title"] for f in noise], "candidates": len(flagged),
        "of which injected conflicting copies or their originals": len(flagged & set(truth["conflict"] + truth["conflict_src"])),
        "others": len(flagged - set(truth["conflict"] + truth["conflict_src"]))}
    for f in res["findings"]:
        if f["rule"] == "BASTION-DA-007":
            continue
        outside = [r for r in f["records"] if r not in injected and r not in srcs.get(f["rule"], set())]
        if outside or not f["records"]:
            extra.append({"rule": f["rule"], "title": f["title"], "columns": f["columns"], "outside": len(outside)})
    out["findings outside the injected records"] = extra
    return out


def versions(python: str, modules: tuple[str, ...]) -> dict[str, str]:
    """``module.__version__`` of each of ``modules`` as imported by the interpreter ``python``."""
    code = ("import importlib, json; print(json.dumps({m: getattr(importlib.import_module(m), '__version__', '?') "
            f"for m in {list(modules)!r}}}))")
    out = subprocess.run([python, "-W", "ignore", "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--out", type=Path, default=Path("/tmp/auditbench"))
    ap.add_argument("--audit-only", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--deepchecks-only", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--deepchecks", help="Python of a venv with deepchecks: run it on the same files.")
    ap.add_argument("--deepchecks-timeout", type=float, help="Stop deepchecks after this many seconds (the checks "
                                                             "that finished are kept).")
    ap.add_argument("--no-bastion", action="store_true", help="Only deepchecks; the bastion figures of an earlier "
                                                               "run (report.json) are kept.")
    ap.add_argument("--regenerate", action="store_true")
    ap.add_argument("--generate-only", action="store_true", help="Write the table and stop.")
    args = ap.parse_args()
    if args.audit_only:
        return audit_only(args.out, args.audit_only)
    if args.deepchecks_only:
        return deepchecks_run(args.out, args.deepchecks_only)
    if args.regenerate or not (args.out / "truth.json").exists() or json.loads(
            (args.out / "truth.json").read_text())["n_train"] != int(0.8 * args.rows):
        t0 = time.perf_counter()
        generate(args.rows, args.out)
        print(f"generated {args.rows} rows in {time.perf_counter() - t0:.1f} s")
    if args.generate_only:
        return None
    truth = json.loads((args.out / "truth.json").read_text())
    report_path = args.out / "report.json"
    if args.no_bastion:
        report = json.loads(report_path.read_text())
    else:
        res_path = args.out / "bastion.json"
        wall, cpu, peak, _ = child([sys.executable, __file__, "--out", str(args.out), "--audit-only", str(res_path)])
        res = json.loads(res_path.read_text())
        report = {"rows": args.rows, "columns": 50,
                  "bytes": sum((args.out / f).stat().st_size for f in ("train.csv", "test.csv")),
                  "bastion": {"process_wall_s": wall, "process_cpu_s": cpu, "audit_wall_s": res["wall_s"],
                              "audit_cpu_s": res["cpu_s"], "peak_rss_bytes": peak, "per_audit_s": res["seconds"],
                              "score": score(truth, res),
                              "findings": [{"rule": f["rule"], "title": f["title"], "records": len(f["records"])}
                                           for f in res["findings"]]},
                  "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                              "platform": platform.platform(), "load_avg_at_end": os.getloadavg(),
                              **versions(sys.executable, ("bastion", "numpy", "pyarrow", "sklearn"))}}
    if args.deepchecks:
        dres = args.out / "deepchecks.json"
        dres.unlink(missing_ok=True)
        dwall, dcpu, dpeak, stopped = child([args.deepchecks, __file__, "--out", str(args.out), "--deepchecks-only",
                                             str(dres)], timeout=args.deepchecks_timeout)
        report["deepchecks"] = {"process_wall_s": dwall, "process_cpu_s": dcpu, "peak_rss_bytes": dpeak,
                                "timed_out": stopped, "timeout_s": args.deepchecks_timeout,
                                "versions": versions(args.deepchecks, ("deepchecks", "pandas", "numpy", "sklearn")),
                                **(json.loads(dres.read_text()) if dres.exists() else {})}
    report_path.write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
