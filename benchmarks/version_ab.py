"""Two versions of bastion side by side: the PGD figure of ``pgd_speed.py`` and the ``auto`` figure of
``evasion_strength.py``, on the same model weights and inputs, each run in its own process with the
version's ``src`` first on the path, alternating the versions in every repetition.

    git worktree add /tmp/bastion-base <previous main commit>
    python benchmarks/version_ab.py --base /tmp/bastion-base --reps 5

Reports median CPU and wall seconds per version and the ratio new / base (CPU time is the steadier
figure on a shared machine), and the robust accuracies (equal up to random-start noise).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MEASURE = r"""
import json, sys, time
import numpy as np, torch
torch.set_num_threads(1)
from bastion.core.demo import demo_data, digits_cnn_module
from bastion.core.spec import InputSpec
from bastion.core.targets.torch_target import TorchTarget
what, weights, n, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
model = digits_cnn_module()
model.load_state_dict(torch.load(weights, weights_only=True))
model.eval()
data = demo_data("digits")
x, y = data.x[:n], data.y[:n].astype(np.int64)
target = TorchTarget(model, InputSpec(shape=(1, 8, 8), lower=0.0, upper=1.0, kind="image"))
if what == "pgd":
    from bastion.attacks import PGD
    attack = PGD(eps=0.1, norm="linf", steps=20, step_size=0.0125, batch_size=256, seed=seed)
else:
    from bastion.attacks import AutoAttack
    attack = AutoAttack(eps=0.1, norm="linf", seed=seed, blackbox_queries=1000)
c0, w0 = time.process_time(), time.perf_counter()
res = attack.run(target, x, y)
print(json.dumps({"cpu": time.process_time() - c0, "wall": time.perf_counter() - w0,
                  "robust": res.robust_accuracy}))
"""


def measure(tree: Path, what: str, weights: Path, n: int, seed: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", MEASURE, what, str(weights), str(n), str(seed)], env=env,
                         capture_output=True, text=True, check=True, cwd=tempfile.gettempdir())
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--base", type=Path, required=True, help="worktree of the previous version")
    ap.add_argument("--new", type=Path, default=ROOT)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--auto-reps", type=int, default=2)
    ap.add_argument("--auto-n", type=int, default=100)
    args = ap.parse_args()
    sys.path.insert(0, str(args.new / "src"))
    import torch

    from bastion.core.demo import digits_cnn

    weights = Path(tempfile.mkdtemp()) / "digits-cnn.pt"
    torch.save(digits_cnn().module.state_dict(), weights)  # one set of weights for both versions
    rows = {}
    for what, reps, n in (("pgd", args.reps, 360), ("auto", args.auto_reps, args.auto_n)):
        runs: dict[str, list[dict]] = {"base": [], "new": []}
        for rep in range(reps):
            order = ("base", "new") if rep % 2 == 0 else ("new", "base")
            for name in order:
                tree = args.base if name == "base" else args.new
                runs[name].append(measure(tree, what, weights, n, seed=rep))
                print(what, name, runs[name][-1], flush=True)
        med = {k: {m: statistics.median(r[m] for r in v) for m in ("cpu", "wall", "robust")} for k, v in runs.items()}
        rows[what] = {"n": n, "reps": reps, **med,
                      "ratio_cpu": med["new"]["cpu"] / med["base"]["cpu"],
                      "ratio_wall": med["new"]["wall"] / med["base"]["wall"]}
        print(json.dumps({what: rows[what]}), flush=True)
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared), 1 torch thread",
            "python": platform.python_version(), "torch": torch.__version__}
    out = ROOT / "benchmarks" / "results" / "version-ab.json"
    out.write_text(json.dumps({"meta": meta, **rows}, indent=2))


if __name__ == "__main__":
    main()
