"""Where a DP-SGD step's time goes (issue 11): cProfile over the training loop of the digits MLP and
CNN (``benchmarks/dp_sgd.py``'s models and ``members`` setting: 300 digits, batch 64), non-private
and with ``dp-sgd`` (ε = 8, δ = 1e-4, RDP, each ``--modes``), the internal time of every function
grouped by what it does, in CPU milliseconds per step. Profiled: the steps only (from after the
setup hooks, where Opacus's noise calibration runs, to the last epoch's end, before the accountant's
final ε). cProfile adds its own cost to each Python call, so the Python-heavy groups are inflated;
compare the groups, not the totals with ``dp_sgd.py``.

    OMP_NUM_THREADS=1 nice -n 15 .venv/bin/python benchmarks/dp_sgd_profile.py --out benchmarks/results/dp-sgd-profile.json
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from dp_sgd import digits_split, mlp_module, procedure  # noqa: E402

GROUPS = [  # (group, predicate on (file, function name)); the first that matches
    ("forward", lambda f, n: n in {"<built-in method torch._C._nn.linear>", "<built-in method torch.conv2d>",
                                   "<built-in method torch.relu>", "<built-in method torch.max_pool2d>",
                                   "<built-in method torch._C._nn.cross_entropy_loss>"}),
    ("backward (autograd)", lambda f, n: "run_backward" in n),
    ("per-sample norms and clipped sum", lambda f, n: "bk_clipping" in f or "fast_gradient_clipping" in f
     or "grad_sample" in f or any(k in n for k in ("im2col", "torch.bmm", "tensordot", "torch.einsum",
                                                       "torch.mm", "linalg_vector_norm"))),
    ("noise", lambda f, n: "torch.normal" in n or "_generate_noise" in n or "add_noise" in n),
    ("Opacus optimiser (accumulate, scale, accountant hook)", lambda f, n: "opacus/optimizers" in f
     or "opacus/accountants" in f or "copy.py" in f or "_tensor.py" in f or "storage.py" in f),
    ("Adam", lambda f, n: "adam" in f),
    ("Poisson sampling", lambda f, n: "uniform_sampler" in f),
]


def profile(model: Any, eps: float | None, mode: str, data: Any, epochs: int) -> dict[str, Any]:
    from bastion.core.spec import InputSpec
    from bastion.core.training import TrainRequest

    spec = InputSpec(shape=(1, 8, 8), lower=0.0, upper=1.0, kind="image")
    xm, ym = data["members"]
    request = TrainRequest(xm, ym, seed=0, input_spec=spec, classes=list(range(10)))
    state: dict[str, Any] = {}
    procedure(model, 1, eps, 1e-4, None, 64, mode).fit(request)  # imports and first-call costs
    prof = cProfile.Profile()

    def stop(end: Any) -> bool:
        if end.epoch == epochs - 1:
            prof.disable()
        return False

    proc = procedure(model, epochs, eps, 1e-4, None, 64, mode).with_hooks(setup=[lambda s: prof.enable()],
                                                                          epoch=[stop])
    proc.fit(request, state=state)
    steps = state.get("privacy", {}).get("steps") or epochs * -(-len(xm) // 64)
    groups: dict[str, float] = {g: 0.0 for g, _ in GROUPS}
    groups["other Python (training loop, hooks, torch wrappers)"] = 0.0
    for (file, _, name), (_, _, tottime, _, _) in pstats.Stats(prof).stats.items():  # type: ignore[attr-defined]
        label = name if name.startswith("<") else f"{Path(file).name}:{name}"
        group = next((g for g, match in GROUPS if match(file, label)), "other Python (training loop, hooks, "
                                                                          "torch wrappers)")
        groups[group] += tottime
    per_step = {g: round(1000 * t / steps, 3) for g, t in groups.items()}
    return {"steps": steps, "ms_per_step": per_step,
            "total_ms_per_step": round(sum(per_step.values()), 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/dp-sgd-profile.json")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--modes", default="bk,ghost,hooks")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import torch

    from bastion.core.demo import digits_cnn_module

    torch.set_num_threads(1)
    data = digits_split(0)
    out: dict[str, Any] = {"epochs": args.epochs, "torch": torch.__version__, "rows": []}
    for name, model in (("MLP", mlp_module), ("CNN", digits_cnn_module)):
        for eps, mode in [(None, "-"), *((8.0, m) for m in args.modes.split(","))]:
            row = {"model": name, "training": "non-private" if eps is None else f"dp-sgd {mode}",
                   **profile(model, eps, mode if eps else "bk", data, args.epochs)}
            out["rows"].append(row)
            print(json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
