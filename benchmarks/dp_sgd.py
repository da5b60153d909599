"""DP-SGD (Abadi et al. 2016, through Opacus) against non-private training of the same model (issue 11):
time per epoch, test accuracy, the accountant's ε spent, and membership inference before and after.

Two settings (``--setting``), scikit-learn's digits, 8x8 in [0, 1]:

- ``members`` (one seeded split per seed): 300 members (the training set), 500 non-members (test
  accuracy and the attacks' non-members), the other 997 digits the attacker's reference population;
- ``full``: the demo's training split (1437 digits, stratified 80 %) as members, its test split
  (360) as non-members; no reference population (the loss-threshold attack only).

Models: an MLP (64-256-10) and the demo CNN, each trained by one ``TorchTrainingProcedure`` (Adam
3e-3, batch ``--batch-size``, ``--epochs`` epochs): once without DP, then with the ``dp-sgd``
training defense at each ``--epsilons`` (δ = ``--delta``, clipping norm 1, RDP accountant; Poisson
sampling, same expected batch size; per-sample clipping by ``dp-sgd``'s default, ``bk``). Then,
timing only, the other ``--modes`` of per-sample clipping at the largest ε (Opacus's ``ghost``
clipping and its per-sample-gradient ``hooks``), each against the same non-private run.

Time per epoch: CPU seconds of this process between consecutive epoch ends (the first epoch, which
holds Opacus's setup and noise calibration, left out), median over the epochs; each DP
configuration's ratio to the non-private run of the same model and seed, measured in the same run.
Membership: bastion's ``loss-threshold`` (Yeom et al. 2018) and (``members`` setting) ``rmia`` with
one reference model trained by the same procedure as the target (DP when the target is), on all
members and non-members: AUC and TPR at 1 % FPR.

    OMP_NUM_THREADS=1 nice -n 15 .venv/bin/python benchmarks/dp_sgd.py --out benchmarks/results/dp-sgd.json
    OMP_NUM_THREADS=1 nice -n 15 .venv/bin/python benchmarks/dp_sgd.py --setting full --batch-size 256 \
        --epochs 30 --out benchmarks/results/dp-sgd-full.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from typing import Any

import numpy as np

N_MEMBERS, N_NON_MEMBERS = 300, 500


def digits_split(seed: int, setting: str = "members") -> dict[str, Any]:
    from sklearn.datasets import load_digits

    if setting == "full":
        import bastion

        tr, te = bastion.load_data("demo:digits-train"), bastion.load_data("demo:digits")
        return {"members": (tr.x, tr.y.astype(np.int64)), "non_members": (te.x, te.y.astype(np.int64)),
                "reference": None}
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    perm = np.random.default_rng(seed).permutation(len(x))
    m, n, r = perm[:N_MEMBERS], perm[N_MEMBERS:N_MEMBERS + N_NON_MEMBERS], perm[N_MEMBERS + N_NON_MEMBERS:]
    return {"members": (x[m], d.target[m]), "non_members": (x[n], d.target[n]), "reference": (x[r], d.target[r])}


def mlp_module() -> Any:
    import torch.nn as nn

    return nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))


class EpochClock:
    """An epoch hook recording the process CPU time at each epoch end (picklable, no run state kept
    beyond the list it appends to)."""

    def __init__(self) -> None:
        self.marks: list[float] = []

    def __call__(self, end: Any) -> bool:
        self.marks.append(time.process_time())
        return False

    def per_epoch(self) -> float:
        return float(np.median(np.diff(self.marks))) if len(self.marks) > 1 else float("nan")


def procedure(model: Any, epochs: int, epsilon: float | None, delta: float, clock: EpochClock | None,
              batch_size: int = 64, mode: str = "bk") -> Any:
    from bastion.core.training import TorchTrainingProcedure, adam
    from bastion.defenses.dp_sgd import DPSGD

    proc = TorchTrainingProcedure(model=model, optimizer=adam(3e-3), epochs=epochs, batch_size=batch_size)
    if epsilon is not None:
        proc = DPSGD(epsilon=epsilon, delta=delta, max_grad_norm=1.0, accountant="rdp",
                     grad_sample_mode=mode).apply(proc)
    return proc.with_hooks(epoch=[clock]) if clock is not None else proc


def attack_row(attack: str, params: dict[str, Any], target: Any, splits: Any, trainer: Any, seed: int) -> dict:
    from bastion.attacks.privacy import get_membership_attack
    from bastion.attacks.privacy.membership import operating_point, roc_curve
    from bastion.core.run import RunContext

    res = get_membership_attack(attack, **params).run(target, splits, ctx=RunContext(seed=seed), trainer=trainer)
    roc = roc_curve(res.member_scores, res.non_member_scores)
    p = operating_point(roc, 0.01, len(res.member_scores), len(res.non_member_scores))
    return {"auc": round(float(roc.auc), 4), "tpr_at_1pct_fpr": p.tpr, "tpr_ci": [p.ci_low, p.ci_high]}


def run(model_name: str, model: Any, data: dict[str, Any], seed: int, epochs: int, epsilons: list[float | None],
        delta: float, batch_size: int, modes: list[str]) -> list[dict[str, Any]]:
    from bastion.attacks.privacy import MembershipSplits
    from bastion.core.spec import InputSpec
    from bastion.core.targets.torch_target import TorchTarget
    from bastion.core.training import TrainRequest

    spec = InputSpec(shape=(1, 8, 8), lower=0.0, upper=1.0, kind="image")
    (xm, ym), (xn, yn) = data["members"], data["non_members"]
    xr, yr = data["reference"] if data["reference"] is not None else (None, None)
    splits = MembershipSplits(xm, ym, xn, yn, xr, yr)
    runs = [(eps, "bk", True) for eps in epsilons]
    runs += [(max(e for e in epsilons if e is not None), m, False) for m in modes if m != "bk"]
    rows = []
    for eps, mode, attacks in runs:
        clock = EpochClock()
        state: dict[str, Any] = {}
        c0, w0 = time.process_time(), time.perf_counter()
        module = procedure(model, epochs, eps, delta, clock, batch_size, mode).fit(
            TrainRequest(xm, ym, seed=seed, input_spec=spec, classes=list(range(10))), state=state)
        cpu_s, wall_s = time.process_time() - c0, time.perf_counter() - w0
        target = TorchTarget(module, spec, classes=list(range(10)), name=model_name)
        with target.uncounted():
            train_acc = float(np.mean(target.predict_proba(xm).argmax(1) == ym))
            test_acc = float(np.mean(target.predict_proba(xn).argmax(1) == yn))
        privacy = state.get("privacy", {})
        row = {"model": model_name, "seed": seed, "members": len(xm), "batch_size": batch_size,
               "target_epsilon": eps, "delta": delta if eps else None,
               "grad_sample_mode": privacy.get("grad_sample_mode"), "epsilon_spent": privacy.get("epsilon"),
               "noise_multiplier": privacy.get("noise_multiplier"), "steps": privacy.get("steps"),
               "train_accuracy": round(train_acc, 4), "test_accuracy": round(test_acc, 4),
               "cpu_s_per_epoch": round(clock.per_epoch(), 4), "train_cpu_s": round(cpu_s, 2),
               "train_wall_s": round(wall_s, 2)}
        if attacks:
            trainer = procedure(model, epochs, eps, delta, None, batch_size, mode)
            row["loss-threshold"] = attack_row("loss-threshold", {}, target, splits, trainer, seed)
            if xr is not None:
                row["rmia-1ref"] = attack_row("rmia", {"reference_models": 1}, target, splits, trainer, seed)
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = rows[0]["cpu_s_per_epoch"]
    for r in rows:
        r["epoch_time_ratio"] = round(r["cpu_s_per_epoch"] / base, 3)
        r["train_cpu_ratio"] = round(r["train_cpu_s"] / rows[0]["train_cpu_s"], 3)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/dp-sgd.json")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--epsilons", default="1,4,8")
    ap.add_argument("--delta", type=float, default=1e-4)
    ap.add_argument("--models", default="mlp,cnn")
    ap.add_argument("--setting", choices=["members", "full"], default="members")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--modes", default="bk,ghost,hooks", help="per-sample clipping modes timed at the largest ε")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    os.environ.setdefault("BASTION_CACHE_DIR", tempfile.mkdtemp(prefix="bastion-dp-bench-"))
    import opacus
    import sklearn
    import torch

    import bastion
    from bastion.core.demo import digits_cnn_module

    torch.set_num_threads(1)
    models = {"mlp": ("MLP on digits", mlp_module), "cnn": ("CNN on digits", digits_cnn_module)}
    epsilons: list[float | None] = [None, *(float(e) for e in args.epsilons.split(","))]
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for seed in (int(s) for s in args.seeds.split(",")):
        data = digits_split(seed, args.setting)
        for key in args.models.split(","):
            name, model = models[key]
            rows += run(name, model, data, seed, args.epochs, epsilons, args.delta, args.batch_size,
                        args.modes.split(","))
    doc = {"rows": rows, "seconds": round(time.perf_counter() - t0, 1), "epochs": args.epochs, "delta": args.delta,
           "setting": args.setting, "batch_size": args.batch_size,
           "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                       "python": sys.version.split()[0], "threads": torch.get_num_threads()},
           "versions": {"bastion": bastion.__version__, "opacus": opacus.__version__, "torch": torch.__version__,
                        "numpy": np.__version__, "sklearn": sklearn.__version__}}
    with open(args.out, "w") as fh:
        json.dump(doc, fh, indent=1)
    print(json.dumps({"seconds": doc["seconds"]}))


if __name__ == "__main__":
    main()
