"""Strength and speed of bastion's white-box evasion attacks against ART, side by side in one run.

- bastion ``auto`` vs ART ``AutoAttack`` (ART's default list: APGD-CE and APGD-DLR with 5 restarts
  each, DeepFool; its Square stage set to ``--square-queries`` with one restart, the same budget as
  bastion's Square stage) at the same L∞ ε, on the demo digits CNN and on a
  PGD-adversarially-trained copy of it (trained here with bastion's PGD, cached in /tmp);
- bastion ``cw`` (defaults) vs ART ``CarliniL2Method``: success rate and median L2;
- minimal-norm attacks on the same inputs: bastion ``min-eps`` around APGD, ``fab`` (FAB-T), ``deepfool``
  and ``cw``: success, median norm, CPU seconds (L2 and L∞; C&W is L2 only).

Run from the repository root with the benchmark venv (ART installed there only):

    benchmarks/.env/bin/python benchmarks/evasion_strength.py --n 100 --eps 0.1 0.2 --square-queries 1000

The tools run alternately (bastion, ART, ART, bastion, ...) on the same inputs; with ``--reps`` > 1
the medians of the wall and CPU (``time.process_time``) times are reported; compare CPU times on a shared
machine. Writes ``--out`` (JSON); benchmarks/results/evasion-strength.md is written from it by hand.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import bastion
from bastion.attacks import PGD, AutoAttack, CarliniWagnerL2
from bastion.core.demo import demo_data, digits_cnn, digits_cnn_module
from bastion.core.spec import InputSpec
from bastion.core.targets.torch_target import TorchTarget

ADV_PATH = Path("/tmp/bastion-bench/digits-cnn-pgd-at.pt")
SPEC = InputSpec(shape=(1, 8, 8), lower=0.0, upper=1.0, kind="image")


def adversarially_trained(eps: float = 0.15, epochs: int = 12, steps: int = 10) -> torch.nn.Module:
    """Madry PGD adversarial training (arXiv:1706.06083) of the demo CNN, fine-tuned from the clean weights."""
    model = digits_cnn_module()
    if ADV_PATH.exists():
        model.load_state_dict(torch.load(ADV_PATH, map_location="cpu", weights_only=True))
        return model.eval()
    model.load_state_dict(digits_cnn().module.state_dict())
    for p in model.parameters():
        p.requires_grad_(True)
    train = demo_data("digits-train")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = train.x, train.y.astype(np.int64)
    rng = np.random.default_rng(0)
    for epoch in range(epochs):
        perm = rng.permutation(len(x))
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            frozen = TorchTarget(copy.deepcopy(model), SPEC)  # bastion's PGD on a frozen copy
            x_adv = PGD(eps=eps, steps=steps, seed=epoch * 1000 + i).run(frozen, x[idx], y[idx]).x_adv
            model.train()
            opt.zero_grad()
            F.cross_entropy(model(torch.from_numpy(x_adv)), torch.from_numpy(y[idx])).backward()
            opt.step()
    model.eval()
    ADV_PATH.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    ADV_PATH.write_bytes(buf.getvalue())
    return model


def art_classifier(model: torch.nn.Module):
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 8, 8), nb_classes=10,
                             clip_values=(0.0, 1.0), device_type="cpu")


def run_bastion_auto(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, eps: float,
                     square_queries: int) -> tuple[float, float, float, list]:
    target = TorchTarget(model, SPEC)
    t0, c0 = time.perf_counter(), time.process_time()
    res = AutoAttack(eps=eps, norm="linf", seed=0, blackbox_queries=square_queries).run(target, x, y)
    return res.robust_accuracy, time.perf_counter() - t0, time.process_time() - c0, res.extra["stages"]


def run_art_auto(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, eps: float,
                 square_queries: int) -> tuple[float, float, float]:
    """ART's default AutoAttack list (APGD-CE ×5 restarts, APGD-DLR ×5, DeepFool) with its Square stage
    set to ``square_queries`` iterations and one restart (ART's default, 5000 × 5 restarts, does not
    finish in reasonable time on this machine; AutoAttack "standard" uses one Square run)."""
    from art.attacks.evasion import AutoAttack as ArtAutoAttack
    from art.attacks.evasion import AutoProjectedGradientDescent, DeepFool, SquareAttack

    clf = art_classifier(model)
    # eps_step = 2·eps: ART's APGD starts with η = eps_step, the paper (and bastion) with η = 2ε
    attacks = [AutoProjectedGradientDescent(estimator=clf, norm=np.inf, eps=eps, eps_step=2 * eps, max_iter=100,
                                            targeted=False, nb_random_init=5, batch_size=256, loss_type=loss,
                                            verbose=False)
               for loss in ("cross_entropy", "difference_logits_ratio")]
    attacks.append(DeepFool(classifier=clf, max_iter=100, epsilon=1e-3, nb_grads=10, batch_size=256, verbose=False))
    attacks.append(SquareAttack(estimator=clf, norm=np.inf, max_iter=square_queries, eps=eps, p_init=0.8,
                                nb_restarts=1, verbose=False))
    t0, c0 = time.perf_counter(), time.process_time()
    x_adv = ArtAutoAttack(estimator=clf, norm=np.inf, eps=eps, eps_step=2 * eps, attacks=attacks,
                          batch_size=256).generate(x, y=y)
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert np.abs(x_adv - x).max() <= eps + 1e-5
    return float(np.mean(clf.predict(x_adv).argmax(1) == y)), secs, cpu


def cw_compare(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, art_iter: int) -> dict:
    from art.attacks.evasion import CarliniL2Method

    target = TorchTarget(model, SPEC)
    correct = target.predict(x) == y
    x, y = x[correct], y[correct]
    t0 = time.perf_counter()
    res = CarliniWagnerL2().run(target, x, y)
    b_secs = time.perf_counter() - t0
    b_ok, b_l2 = res.success, res.norms["l2"]
    clf = art_classifier(model)
    t0 = time.perf_counter()
    x_art = CarliniL2Method(clf, confidence=0.0, targeted=False, learning_rate=0.01, binary_search_steps=9,
                            max_iter=art_iter, initial_const=0.01, batch_size=256, verbose=False).generate(x)
    a_secs = time.perf_counter() - t0
    a_ok = clf.predict(x_art).argmax(1) != y
    a_l2 = np.linalg.norm((x_art - x).reshape(len(x), -1), axis=1)
    both = a_ok & b_ok
    return {"n": len(x), "art_max_iter": art_iter,
            "bastion_success": float(b_ok.mean()), "art_success": float(a_ok.mean()),
            "bastion_median_l2_all": float(np.median(b_l2[b_ok])) if b_ok.any() else None,
            "art_median_l2_all": float(np.median(a_l2[a_ok])) if a_ok.any() else None,
            "n_both": int(both.sum()),
            "bastion_median_l2_both": float(np.median(b_l2[both])) if both.any() else None,
            "art_median_l2_both": float(np.median(a_l2[both])) if both.any() else None,
            "bastion_seconds": b_secs, "art_seconds": a_secs}


def min_norm_compare(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, search_steps: int) -> list[dict]:
    """Minimal-norm attacks on the correctly classified inputs: success, median norm (over the inputs every
    attack of the norm fooled), CPU seconds."""
    from bastion.attacks import FAB, DeepFool, MinimalEps

    target = TorchTarget(model, SPEC)
    correct = target.predict(x) == y
    x, y = x[correct], y[correct]
    rows = []
    for norm, eps_max in (("l2", 3.0), ("linf", 0.5)):
        attacks = {f"min-eps(apgd, 50 steps, {search_steps} bisections)":
                   MinimalEps(attack="apgd", attack_params={"steps": 50}, norm=norm, eps_max=eps_max,
                              search_steps=search_steps),
                   "fab (FAB-T, 9 targets, 100 steps)": FAB(norm=norm),
                   "deepfool": DeepFool(norm=norm)}
        if norm == "l2":
            attacks["cw (defaults)"] = CarliniWagnerL2()
        found = {}
        for name, attack in attacks.items():
            c0 = time.process_time()
            res = attack.run(target, x, y)
            found[name] = (res.success, res.norms[norm], time.process_time() - c0)
        every = np.logical_and.reduce([ok for ok, _, _ in found.values()])
        for name, (ok, nrm, cpu) in found.items():
            rows.append({"norm": norm, "attack": name, "n": len(x), "success": float(ok.mean()),
                         "median_norm_all_fooled": float(np.median(nrm[every])), "n_all_fooled": int(every.sum()),
                         "cpu_seconds": cpu})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=360, help="test images for the AutoAttack comparison")
    ap.add_argument("--cw-n", type=int, default=60, help="test images for the C&W comparison")
    ap.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.2])
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--art-cw-iter", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--square-queries", type=int, default=1000, help="Square stage budget, both tools")
    ap.add_argument("--models", nargs="+", default=["digits-cnn", "digits-cnn PGD-AT"])
    ap.add_argument("--min-norm-n", type=int, default=100, help="test images for the minimal-norm comparison")
    ap.add_argument("--search-steps", type=int, default=10, help="min-eps bisection steps")
    ap.add_argument("--out", default="benchmarks/results/evasion-strength.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import art

    data = demo_data("digits")
    x, y = data.x[:args.n], data.y[:args.n].astype(np.int64)
    t0 = time.perf_counter()
    models = {"digits-cnn": digits_cnn().module, "digits-cnn PGD-AT": adversarially_trained()}
    train_secs = time.perf_counter() - t0
    rows = []
    for mname, model in models.items():
        if mname not in args.models:
            continue
        clean = float(np.mean(TorchTarget(model, SPEC).predict(x) == y))
        for eps in args.eps:
            b_times, a_times, b_cpu, a_cpu, b_acc, a_acc, stages = [], [], [], [], None, None, None
            for rep in range(args.reps):
                order = ("bastion", "art") if rep % 2 == 0 else ("art", "bastion")
                for tool in order:
                    if tool == "bastion":
                        b_acc, secs, cpu, stages = run_bastion_auto(model, x, y, eps, args.square_queries)
                        b_times.append(secs)
                        b_cpu.append(cpu)
                    else:
                        a_acc, secs, cpu = run_art_auto(model, x, y, eps, args.square_queries)
                        a_times.append(secs)
                        a_cpu.append(cpu)
                    print(f"{mname} eps={eps} {tool}: {secs:.1f}s wall, {cpu:.1f}s CPU", flush=True)
            rows.append({"model": mname, "eps": eps, "clean": clean, "bastion_robust": b_acc, "art_robust": a_acc,
                         "bastion_seconds": statistics.median(b_times), "art_seconds": statistics.median(a_times),
                         "bastion_cpu_seconds": statistics.median(b_cpu), "art_cpu_seconds": statistics.median(a_cpu),
                         "stages": stages})
            print(json.dumps(rows[-1]), flush=True)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).with_suffix(".partial.json").write_text(json.dumps(rows, indent=2))
    cw_x, cw_y = data.x[:args.cw_n], data.y[:args.cw_n].astype(np.int64)
    cw = [cw_compare(models["digits-cnn"], cw_x, cw_y, it) for it in args.art_cw_iter]
    for c in cw:
        print(json.dumps(c), flush=True)
    mx, my = data.x[:args.min_norm_n], data.y[:args.min_norm_n].astype(np.int64)
    min_norm = min_norm_compare(models["digits-cnn"], mx, my, args.search_steps)
    meta = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
                       "2-core CPU shared with other jobs",
            "python": platform.python_version(), "torch": torch.__version__, "bastion": bastion.__version__,
            "art": art.__version__, "n": len(x), "reps": args.reps, "square_queries": args.square_queries,
            "adv_training_seconds": train_secs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "auto": rows, "cw": cw, "min_norm": min_norm}, indent=2))


if __name__ == "__main__":
    main()
