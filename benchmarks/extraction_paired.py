"""Extraction fidelity, bastion against ART 1.20.1, paired by seed (issue 11): is a gap noise or real?

For each seed both tools query the same inputs and train the same architecture, initialised from
the same seed, the same way (the setting of ``benchmarks/extraction.py``: the demo digits CNN as
target, fidelity on the 360 test digits no attack queries, Adam 2e-3, batch 64, 40 epochs). Per
setting the difference bastion − ART is taken seed by seed; the table gives its mean with a 95 %
t interval (and a percentile bootstrap one), and the verdict: "higher"/"lower" when the interval
excludes 0, else "no difference detected".

Parts (run separately to keep each run short; ``--markdown`` merges their JSON files):
- ``random``: Knockoff (scores) and Copycat (top-1 labels) with random selection, out-of-distribution
  natural-image patches (250-2,000 queries) and training digits (250-1,000): each seed's query set
  is the first ``budget`` inputs of one seeded order, as in ``extraction.py``.
- ``adaptive``: Knockoff Nets' adaptive strategy, bastion's ``strategy: adaptive`` against ART's
  ``KnockoffNets(sampling_strategy="adaptive", reward="all")``, choosing ``budget`` queries from a
  larger candidate set split into the same groups for both tools: 4,000 natural-image patches in
  10 k-means clusters (bastion's ``kmeans``, seeded per seed), or the 1,437 training digits by their
  labels (an attacker owning labelled data of the model's kind). Beside them, bastion's random
  selection from the same candidates (does the policy help?).

    OMP_NUM_THREADS=1 nice -n 15 .benchenv/bin/python benchmarks/extraction_paired.py --part random \\
        --seeds 0-9 --out benchmarks/results/extraction-paired-random.json
    OMP_NUM_THREADS=1 nice -n 15 .benchenv/bin/python benchmarks/extraction_paired.py --part adaptive \\
        --seeds 0-4 --out benchmarks/results/extraction-paired-adaptive.json
    python benchmarks/extraction_paired.py --markdown benchmarks/results/extraction-paired-*.json
    (a run's printed log works too: its JSON lines)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from extraction import BATCH, EPOCHS, LR, agreement, art_extract, art_victim, bastion_extract, natural_patches  # noqa: E402

RANDOM_BUDGETS = {"ood": (250, 500, 1000, 2000), "in": (250, 500, 1000)}
ADAPTIVE_BUDGETS = {"ood": (250, 500, 1000, 2000), "in": (250, 500, 1000)}
CANDIDATES, CLUSTERS = 4000, 10


def seed_list(spec: str) -> list[int]:
    """``0-9`` or ``0,3,5``."""
    if "-" in spec:
        a, b = spec.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(s) for s in spec.split(",")]


def fidelity(model_pred: np.ndarray, ref: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    return agreement(model_pred, ref), agreement(model_pred, y)


def random_part(seed: int, env: dict[str, Any]) -> list[dict[str, Any]]:
    from bastion.core.surrogate import input_statistics

    target, train, test, ref, victim = env["target"], env["train"], env["test"], env["ref"], env["victim"]
    ood_all = natural_patches(max(RANDOM_BUDGETS["ood"]), seed=1234)  # extraction.py's query set
    order = {"ood": np.random.default_rng(seed).permutation(len(ood_all)),
             "in": np.random.default_rng(seed).permutation(len(train.x))}
    rows = []
    for qset, budgets in RANDOM_BUDGETS.items():
        for budget in budgets:
            q = ood_all[order["ood"][:budget]] if qset == "ood" else train.x[order["in"][:budget]]
            mean, std = input_statistics(q, target.input_spec)
            for kind in ("knockoff", "copycat"):
                res, b_cpu, _ = bastion_extract(kind, target, test.x, q, seed)
                stolen, a_cpu = art_extract(kind, victim, q, seed, mean, std)
                rows.append(_row(seed, "random", qset, kind, budget, res.surrogate.predict(test.x),
                                 stolen.predict(test.x).argmax(1), ref, test.y, b_cpu, a_cpu))
                print(json.dumps(rows[-1]), flush=True)
    return rows


def adaptive_part(seed: int, env: dict[str, Any]) -> list[dict[str, Any]]:
    from bastion.attacks.extraction.adaptive import kmeans
    from bastion.core.data import Dataset
    from bastion.core.surrogate import input_statistics

    target, train, test, ref, victim = env["target"], env["train"], env["test"], env["ref"], env["victim"]
    patches = natural_patches(CANDIDATES, seed=4321)
    sets = {"ood": (patches, kmeans(patches, CLUSTERS, seed=seed)), "in": (train.x, np.asarray(train.y))}
    rows = []
    for qset, budgets in ADAPTIVE_BUDGETS.items():
        pool, groups = sets[qset]
        mean, std = input_statistics(pool, target.input_spec)
        for budget in budgets:
            res, b_cpu, _ = bastion_extract("knockoff", target, test.x, Dataset(pool, groups), seed,
                                            strategy="adaptive", queries=budget)
            stolen, a_cpu = art_extract("knockoff", victim, pool, seed, mean, std, groups=groups, budget=budget)
            row = _row(seed, "adaptive", qset, "knockoff", budget, res.surrogate.predict(test.x),
                       stolen.predict(test.x).argmax(1), ref, test.y, b_cpu, a_cpu)
            rand, r_cpu, _ = bastion_extract("knockoff", target, test.x, pool, seed, queries=budget)
            row["bastion_random_fidelity"], _ = fidelity(rand.surrogate.predict(test.x), ref, test.y)
            row["bastion_queries"], row["bastion_random_cpu_s"] = int(res.queries), round(r_cpu, 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def _row(seed: int, strategy: str, qset: str, kind: str, budget: int, b_pred: np.ndarray, a_pred: np.ndarray,
         ref: np.ndarray, y: np.ndarray, b_cpu: float, a_cpu: float) -> dict[str, Any]:
    bf, ba = fidelity(b_pred, ref, y)
    af, aa = fidelity(a_pred, ref, y)
    return {"seed": seed, "strategy": strategy, "query_set": qset, "attack": kind, "budget": budget,
            "bastion_fidelity": bf, "art_fidelity": af, "bastion_accuracy": ba, "art_accuracy": aa,
            "bastion_cpu_s": round(b_cpu, 2), "art_cpu_s": round(a_cpu, 2)}


def paired(d: np.ndarray, rng: np.random.Generator) -> tuple[float, tuple[float, float], tuple[float, float]]:
    """Mean of the paired differences, its 95 % t interval and percentile-bootstrap interval."""
    from scipy import stats

    m = float(d.mean())
    half = float(stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    boot = rng.choice(d, (10_000, len(d))).mean(1)
    return m, (m - half, m + half), (float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975)))


def markdown(rows: list[dict[str, Any]]) -> str:
    rng = np.random.default_rng(0)
    lines = ["| selection | query set | attack | queries | seeds | bastion fidelity (mean ± sd) | ART fidelity | "
             "bastion − ART: mean [95 % t] [bootstrap] | bastion ahead | verdict |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    keys = sorted({(r["strategy"], r["query_set"], r["attack"], r["budget"]) for r in rows},
                  key=lambda k: (k[0] != "random", k[1] != "ood", k[2], k[3]))
    for key in keys:
        sel = sorted((r for r in rows if (r["strategy"], r["query_set"], r["attack"], r["budget"]) == key),
                     key=lambda r: r["seed"])
        b, a = np.array([r["bastion_fidelity"] for r in sel]), np.array([r["art_fidelity"] for r in sel])
        m, (lo, hi), (blo, bhi) = paired(b - a, rng)
        verdict = "bastion higher" if lo > 0 else "**bastion lower**" if hi < 0 else "no difference detected"
        extra = ""
        if "bastion_random_fidelity" in sel[0]:
            rnd = np.array([r["bastion_random_fidelity"] for r in sel])
            rm, (rlo, rhi), _ = paired(b - rnd, rng)
            extra = f"; adaptive − random (bastion): {rm:+.3f} [{rlo:+.3f}, {rhi:+.3f}]"
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {len(sel)} | {b.mean():.3f} ± {b.std(ddof=1):.3f} | "
                     f"{a.mean():.3f} ± {a.std(ddof=1):.3f} | {m:+.3f} [{lo:+.3f}, {hi:+.3f}] [{blo:+.3f}, {bhi:+.3f}] | "
                     f"{int((b > a).sum())}/{int((b < a).sum())} (ties {int((b == a).sum())}) | {verdict}{extra} |")
    return "\n".join(lines)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """A run's rows: its ``--out`` JSON, or the JSON lines it printed (an unfinished run's log)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return json.loads(text)["rows"]
    return [json.loads(line) for line in text.splitlines() if line.startswith('{"seed"')]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("random", "adaptive"), default="random")
    ap.add_argument("--seeds", default="0-9")
    ap.add_argument("--out", default=None)
    ap.add_argument("--markdown", nargs="+", default=None, help="print the table of runs' JSON files and exit")
    args = ap.parse_args()
    if args.markdown:
        rows = [r for f in args.markdown for r in read_rows(Path(f))]
        print(markdown(rows))
        return
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    import art

    import bastion
    from bastion.core.demo import demo_data, digits_cnn

    target = digits_cnn()
    train, test = demo_data("digits-train"), demo_data("digits")
    with target.uncounted():
        ref = target.predict(test.x)
    env = {"target": target, "train": train, "test": test, "ref": ref, "victim": art_victim(target.module)}
    part = random_part if args.part == "random" else adaptive_part
    t0 = time.process_time()
    rows = [r for seed in seed_list(args.seeds) for r in part(seed, env)]
    out = {"machine": {"python": platform.python_version(), "platform": platform.platform(),
                       "torch": torch.__version__, "art": art.__version__, "bastion": bastion.__version__,
                       "numpy": np.__version__},
           "settings": {"part": args.part, "seeds": args.seeds, "epochs": EPOCHS, "batch": BATCH, "lr": LR,
                        "cpu_s": round(time.process_time() - t0, 1)},
           "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1), encoding="utf-8")
    print(markdown(rows))


if __name__ == "__main__":
    main()
