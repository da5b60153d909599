"""Adversarial training: bastion's ``pgd-at`` against a hand-written PyTorch PGD-training loop
(time per epoch) and against ART's ``AdversarialTrainerMadryPGD`` (robust accuracy with the same
budget), on the digits demo CNN at L∞ ε = 0.1.

1. **Time per epoch**: the same module, data, batches (64), optimiser (Adam 3e-3) and inner attack
   (10 PGD steps of 2.5·ε/10 from a uniform random start, crafted in eval mode), epochs taken in
   turn (bastion, hand-written, bastion, ...) so both see the same machine load; CPU seconds per
   epoch (process time, what a busy machine does not distort) and wall seconds. bastion's epoch
   is ``TorchTrainingProcedure.fit(..., epochs=1)`` with the ``pgd-at`` defense's hooks.
2. **Robust accuracy**: ``bastion.harden`` (``examples/harden-digits.yaml``: 30 epochs from
   scratch, 128 training images held out for its log) against ART 1.20.1's trainer with the same
   architecture, initial weights, epochs, batch size, optimiser and PGD (eps=0.1, eps_step=0.025,
   max_iter=10, one random start) on the same training images; both hardened models are attacked
   with bastion's full ``auto`` ensemble on the 360 test images.

Run in a venv with ART (never a bastion dependency)::

    python -m venv --system-site-packages .benchenv
    .benchenv/bin/pip install --no-deps -e . && .benchenv/bin/pip install adversarial-robustness-toolbox==1.20.1
    OMP_NUM_THREADS=1 nice -n 10 .benchenv/bin/python benchmarks/harden.py --out benchmarks/results/harden.json

``--device cuda`` runs both on a GPU; ``--methods pgd-at,trades,fast-fgsm`` hardens with each (ART
is compared with ``pgd-at``); ``--skip-art``, ``--skip-timing`` and ``--methods ''`` leave a part out.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
EPS, STEPS, BATCH, LR = 0.1, 10, 64, 3e-3
SEED = 0  # --seed sets it: the policy seed, the initial weights, ART's shuffling


def _data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from bastion.core.demo import demo_data

    train, test = demo_data("digits-train"), demo_data("digits")
    return train.x, train.y, test.x, test.y


def _fresh_module(device: str) -> torch.nn.Module:
    """The demo CNN with the weights bastion's procedure draws for seed 0."""
    from bastion.core.demo import digits_cnn_module
    from bastion.core.training import init_weights

    m = digits_cnn_module()
    init_weights(m, torch.Generator().manual_seed(SEED))
    return m.to(device)


# --- 1. time per epoch ----------------------------------------------------------------------------
def hand_written_epoch(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                       gen: torch.Generator) -> None:
    """One epoch of PGD adversarial training as one would write it by hand (Madry et al. 2018)."""
    perm = torch.randperm(len(x), generator=gen).to(x.device)
    alpha = 2.5 * EPS / STEPS
    for i in range(0, len(x), BATCH):
        xb, yb = x[perm[i:i + BATCH]], y[perm[i:i + BATCH]]
        model.eval()
        delta = ((torch.rand(xb.shape, generator=gen) * 2 - 1) * EPS).to(x.device)
        delta = (xb + delta).clamp(0, 1) - xb
        for _ in range(STEPS):
            delta.requires_grad_(True)
            loss = F.cross_entropy(model(xb + delta), yb)
            (g,) = torch.autograd.grad(loss, delta)
            delta = (delta.detach() + alpha * g.sign()).clamp(-EPS, EPS)
            delta = (xb + delta).clamp(0, 1) - xb
        model.train()
        opt.zero_grad()
        F.cross_entropy(model(xb + delta), yb).backward()
        opt.step()


def timing(epochs: int, device: str) -> dict[str, Any]:
    from bastion.attacks.evasion.training.madry import PGDTraining
    from bastion.core.spec import InputSpec
    from bastion.core.training import TorchTrainingProcedure, TrainRequest, adam

    from bastion.core.demo import digits_cnn_module

    xtr, ytr, _, _ = _data()
    spec = InputSpec(shape=(1, 8, 8), lower=0.0, upper=1.0, kind="image")
    request = TrainRequest(xtr, ytr, seed=SEED, input_spec=spec, device=device)
    procedure = PGDTraining(eps=EPS, steps=STEPS).apply(
        TorchTrainingProcedure(model=digits_cnn_module, optimizer=adam(LR), epochs=1, batch_size=BATCH))
    ours = _fresh_module(device)
    theirs = _fresh_module(device)
    opt = torch.optim.Adam(theirs.parameters(), lr=LR)
    x = torch.as_tensor(xtr, device=device)
    y = torch.as_tensor(ytr.astype(np.int64), device=device)
    gen = torch.Generator().manual_seed(SEED)
    rows: dict[str, list[tuple[float, float]]] = {"bastion": [], "hand-written": []}

    def clock(fn: Any) -> tuple[float, float]:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.process_time() - c0, time.perf_counter() - w0

    clock(lambda: procedure.fit(request, ours, epochs=1))  # warm-up of both (first-call costs)
    clock(lambda: hand_written_epoch(theirs, opt, x, y, gen))
    for _ in range(epochs):
        rows["bastion"].append(clock(lambda: procedure.fit(request, ours, epochs=1)))
        rows["hand-written"].append(clock(lambda: hand_written_epoch(theirs, opt, x, y, gen)))
    out: dict[str, Any] = {"epochs_timed": epochs, "train_samples": len(xtr)}
    for name, r in rows.items():
        out[name] = {"cpu_s_per_epoch_median": statistics.median(c for c, _ in r),
                     "wall_s_per_epoch_median": statistics.median(w for _, w in r),
                     "cpu_s": [round(c, 3) for c, _ in r], "wall_s": [round(w, 3) for _, w in r]}
    out["ratio_cpu"] = out["bastion"]["cpu_s_per_epoch_median"] / out["hand-written"]["cpu_s_per_epoch_median"]
    out["ratio_wall"] = out["bastion"]["wall_s_per_epoch_median"] / out["hand-written"]["wall_s_per_epoch_median"]
    return out


# --- 2. robust accuracy against ART ---------------------------------------------------------------
def auto_figures(module: torch.nn.Module, x: np.ndarray, y: np.ndarray, device: str) -> dict[str, float]:
    from bastion.attacks import get_attack
    from bastion.core.spec import InputSpec
    from bastion.core.targets.torch_target import TorchTarget

    target = TorchTarget(module, InputSpec(shape=(1, 8, 8), lower=0.0, upper=1.0, kind="image"),
                         classes=list(range(10)), device=device)
    t0 = time.perf_counter()
    r = get_attack("auto", eps=EPS, norm="linf").run(target, x, y)
    return {"clean_accuracy": r.clean_accuracy, "robust_accuracy": r.robust_accuracy,
            "auto_seconds": time.perf_counter() - t0,
            "robust_correct": (r.adv_pred == r.y).astype(int).tolist()}  # per image, for the paired test


def bastion_run(epochs: int, device: str, method: str, eval_limit: int | None, keep: str = "best") -> dict[str, Any]:
    """``bastion.harden`` on ``examples/harden-digits.yaml``; the weights it writes are also
    attacked exactly as ART's model is (``auto_figures``), so the two compare on one evaluation."""
    import tempfile

    import yaml
    from safetensors.torch import load_file

    import bastion
    from bastion.core.demo import digits_cnn_module

    policy = yaml.safe_load((ROOT / "examples" / "harden-digits.yaml").read_text())
    policy["harden"].update(epochs=epochs, device=device, method=method, keep=keep)
    policy["seed"] = SEED
    if method == "fast-fgsm":
        policy["harden"]["params"] = {}  # one FGSM step of 1.25·ε
    if eval_limit:
        policy["datasets"]["eval"]["limit"] = eval_limit
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = bastion.harden(policy, out_dir=tmp)
        total = time.perf_counter() - t0
        module = digits_cnn_module()
        module.load_state_dict(load_file(str(Path(tmp) / "hardened.safetensors")))
    _, _, xte, yte = _data()
    if eval_limit:
        from bastion.core.demo import demo_data

        sub = demo_data("digits").sample(eval_limit, 0)
        xte, yte = sub.x, sub.y
    same_eval = auto_figures(module.eval(), xte, yte, device)  # exactly as ART's model is evaluated
    return {"keep": keep, "epochs": len(result.epochs), "kept_epoch": result.kept_epoch, "train_seconds": result.train_seconds,
            "after_same_eval_as_art": same_eval,
            "train_seconds_per_epoch": result.train_seconds / max(len(result.epochs), 1),
            "before": result.before.model_dump(), "after": result.after.model_dump(),
            "stopped": result.stopped, "total_seconds": total,
            "log": [e.model_dump() for e in result.epochs]}


def art_run(epochs: int, device: str, eval_limit: int | None) -> dict[str, Any]:
    import art
    from art.defences.trainer import AdversarialTrainerMadryPGD
    from art.estimators.classification import PyTorchClassifier

    xtr, ytr, xte, yte = _data()
    if eval_limit:  # the same seeded subset as the policy's datasets.eval.limit
        from bastion.core.demo import demo_data

        sub = demo_data("digits").sample(eval_limit, 0)
        xte, yte = sub.x, sub.y
    from bastion.campaign.harden import holdout_split

    kept, _ = holdout_split(len(ytr), 128, SEED)  # the images bastion trains on (it holds 128 out for its log)
    xtr, ytr = xtr[kept], ytr[kept]
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    model = _fresh_module(device)
    clf = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(),
                            optimizer=torch.optim.Adam(model.parameters(), lr=LR), input_shape=(1, 8, 8),
                            nb_classes=10, clip_values=(0.0, 1.0),
                            device_type="gpu" if device.startswith("cuda") else "cpu")
    trainer = AdversarialTrainerMadryPGD(clf, nb_epochs=epochs, batch_size=BATCH, eps=EPS, eps_step=2.5 * EPS / STEPS,
                                         max_iter=STEPS, num_random_init=1)
    t0 = time.perf_counter()
    trainer.fit(xtr, ytr)
    seconds = time.perf_counter() - t0
    trained = trainer.get_classifier().model.eval()
    return {"art": art.__version__, "epochs": epochs, "train_samples": len(xtr), "train_seconds": seconds,
            "train_seconds_per_epoch": seconds / epochs, "after": auto_figures(trained, xte, yte, device)}


# --- 2b. step-for-step equivalence with ART ------------------------------------------------------
def equivalence(epochs: int) -> dict[str, Any]:
    """bastion's ``pgd-at`` and ART's ``AdversarialTrainerMadryPGD`` fed the same random numbers: the
    same initial weights, the same batches (ART's ``np.random.shuffle`` of the epoch replaced by
    bastion's permutation, its within-batch shuffle of ``adv_ids`` by the identity) and the same PGD
    random starts (ART's ``random_sphere`` replaced by the uniform draws bastion's batch hook makes
    from its generator, row for row). If the two implement the same algorithm, their weights after
    ``epochs`` epochs differ by float rounding only; for scale, the same comparison between two
    bastion runs whose random starts come from different seeds."""
    import art.attacks.evasion.projected_gradient_descent.projected_gradient_descent_pytorch as art_pgd
    import art.defences.trainer.adversarial_trainer as art_trainer
    from art.defences.trainer import AdversarialTrainerMadryPGD
    from art.estimators.classification import PyTorchClassifier

    from bastion.attacks.evasion.training.madry import PGDTraining
    from bastion.campaign.harden import holdout_split
    from bastion.core.spec import InputSpec
    from bastion.core.training import TorchTrainingProcedure, TrainRequest, adam
    from bastion.core.demo import digits_cnn_module

    xtr, ytr, xte, yte = _data()
    kept, _ = holdout_split(len(ytr), 128, SEED)
    xtr, ytr = xtr[kept], ytr[kept]
    n = len(xtr)
    spec = InputSpec(shape=(1, 8, 8), lower=0.0, upper=1.0, kind="image")

    def bastion_weights(start_seed: int) -> torch.nn.Module:
        """``pgd-at`` through the procedure; its random starts come from a generator seeded by
        ``start_seed`` (the procedure seeds it with the request's seed; shuffling too)."""
        procedure = PGDTraining(eps=EPS, steps=STEPS).apply(
            TorchTrainingProcedure(model=digits_cnn_module, optimizer=adam(LR), epochs=epochs, batch_size=BATCH))
        request = TrainRequest(xtr, ytr, seed=start_seed, input_spec=spec)
        return procedure.fit(request, _fresh_module("cpu"))

    # bastion's random numbers, replayed for ART: the epochs' permutations and each batch's uniform start
    shuffle, starts = torch.Generator().manual_seed(SEED), torch.Generator().manual_seed(SEED)
    perms, rows = [], []
    for _ in range(epochs):
        perms.append(torch.randperm(n, generator=shuffle).numpy())
        for i in range(0, n, BATCH):
            b = min(BATCH, n - i)
            rows.append(((torch.rand((b, 1, 8, 8), generator=starts) * 2 - 1) * EPS).reshape(b, -1).numpy())
    start_rows = np.concatenate(rows)
    served = {"perm": 0, "row": 0}

    class Shuffle:  # ART's np.random.shuffle: bastion's permutation for the epoch, identity within a batch
        def shuffle(self, a: np.ndarray) -> None:
            if len(a) == n:
                a[:] = perms[served["perm"]]
                served["perm"] += 1

    class NumpyShim:
        random = Shuffle()

        def __getattr__(self, name: str) -> Any:
            return getattr(np, name)

    def sphere(count: int, dims: int, radius: float, norm: Any) -> np.ndarray:
        assert norm in ("inf", np.inf) and radius == EPS and dims == 64
        out = start_rows[served["row"]:served["row"] + count]
        served["row"] += count
        return out

    saved = art_trainer.np, art_pgd.random_sphere
    art_trainer.np, art_pgd.random_sphere = NumpyShim(), sphere
    try:
        first = first_batch_craft(xtr[perms[0][:BATCH]], ytr[perms[0][:BATCH]], start_rows[:BATCH], sphere, served)
        model = _fresh_module("cpu")
        clf = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(),
                                optimizer=torch.optim.Adam(model.parameters(), lr=LR), input_shape=(1, 8, 8),
                                nb_classes=10, clip_values=(0.0, 1.0), device_type="cpu")
        AdversarialTrainerMadryPGD(clf, nb_epochs=epochs, batch_size=BATCH, eps=EPS, eps_step=2.5 * EPS / STEPS,
                                   max_iter=STEPS, num_random_init=1).fit(xtr, ytr)
    finally:
        art_trainer.np, art_pgd.random_sphere = saved
    assert served == {"perm": epochs, "row": len(start_rows)}, served  # ART drew exactly bastion's numbers
    theirs = clf.model.eval()
    ours, other = bastion_weights(SEED), bastion_weights(SEED + 1)

    def diff(a: torch.nn.Module, b: torch.nn.Module) -> dict[str, float]:
        wa = torch.cat([p.detach().flatten() for p in a.parameters()])
        wb = torch.cat([p.detach().flatten() for p in b.parameters()])
        with torch.no_grad():
            xt = torch.as_tensor(xte)
            agree = float((a(xt).argmax(1) == b(xt).argmax(1)).float().mean())
        return {"max_abs_weight_diff": float((wa - wb).abs().max()),
                "relative_l2_weight_diff": float((wa - wb).norm() / wb.norm()), "test_prediction_agreement": agree}

    return {"epochs": epochs, "first_batch_adversarial_inputs": first,
            "bastion_vs_art_same_random_numbers": diff(ours, theirs),
            "bastion_vs_bastion_other_seed": diff(ours, other)}


def first_batch_craft(x: np.ndarray, y: np.ndarray, start: np.ndarray, sphere: Any, served: dict[str, int]
                      ) -> dict[str, float]:
    """The inner maximisation alone: bastion's ``ascend`` and ART's PGD on one batch of the initial
    model from the same random start (``sphere`` serves ``start``'s rows to ART; the counter is reset)."""
    from art.attacks.evasion import ProjectedGradientDescentPyTorch
    from art.estimators.classification import PyTorchClassifier

    from bastion.attacks.evasion._torch import Geometry
    from bastion.attacks.evasion.training.base import ascend, cross_entropy_to
    from bastion.core.spec import InputSpec

    model = _fresh_module("cpu").eval()
    clf = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 8, 8), nb_classes=10,
                            clip_values=(0.0, 1.0), device_type="cpu")
    theirs = ProjectedGradientDescentPyTorch(clf, eps=EPS, eps_step=2.5 * EPS / STEPS, max_iter=STEPS,
                                             num_random_init=1, batch_size=len(x), verbose=False).generate(x, y=y)
    served["row"] = 0

    xt, yt = torch.as_tensor(x), torch.as_tensor(y.astype(np.int64))
    geo = Geometry.from_spec(InputSpec(shape=(1, 8, 8), lower=0.0, upper=1.0, kind="image"), "cpu")
    gen = torch.Generator().manual_seed(SEED)  # the generator the start rows were drawn from, first draw
    ours = ascend(model, lambda z: cross_entropy_to(z, yt), xt, geo, eps=EPS, norm="linf", steps=STEPS,
                  step_size=2.5 * EPS / STEPS, generator=gen).numpy()
    return {"max_abs_diff": float(np.abs(ours - theirs).max()),
            "share_of_coordinates_equal": float(np.mean(ours == theirs))}


# --- 3. paired comparison over seeds -------------------------------------------------------------
def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: ``b`` and ``c`` are the discordant pairs (images only one
    of the two models keeps correct); under the null each is Binomial(b + c, 1/2)."""
    from math import comb

    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2 ** n)


def paired_summary(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per seed and pooled over seeds: each bastion run against ART's on the same images (the
    ``robust_correct`` vectors of ``auto``): robust accuracies, discordant pairs and the exact
    McNemar p-value. Pooling treats seed x image pairs as one sample (seeds are independent runs)."""
    out: dict[str, Any] = {}
    for key in sorted({k for d in docs for k in d.get("bastion", {})}):
        rows, pooled_b, pooled_c = [], 0, 0
        for d in docs:
            if key not in d.get("bastion", {}) or "art" not in d:
                continue
            ours = np.array(d["bastion"][key]["after_same_eval_as_art"]["robust_correct"])
            art_ = np.array(d["art"]["after"]["robust_correct"])
            b, c = int((ours & (1 - art_)).sum()), int(((1 - ours) & art_).sum())
            pooled_b, pooled_c = pooled_b + b, pooled_c + c
            rows.append({"seed": d["seed"], "bastion": float(ours.mean()), "art": float(art_.mean()),
                         "bastion_only": b, "art_only": c, "mcnemar_p": mcnemar_exact(b, c)})
        if rows:
            out[key] = {"seeds": rows, "bastion_mean": statistics.mean(r["bastion"] for r in rows),
                        "art_mean": statistics.mean(r["art"] for r in rows), "bastion_only": pooled_b,
                        "art_only": pooled_c, "pooled_mcnemar_p": mcnemar_exact(pooled_b, pooled_c),
                        "across_seeds": across_seeds([r["bastion"] - r["art"] for r in rows])}
    for method in sorted({k.split("/")[0] for k in out}):  # bastion's own two choices of weights, seed by seed
        best, last = out.get(f"{method}/keep-best"), out.get(f"{method}/keep-last")
        if best and last:
            pairs = {r["seed"]: r["bastion"] for r in last["seeds"]}
            diffs = [r["bastion"] - pairs[r["seed"]] for r in best["seeds"] if r["seed"] in pairs]
            out[f"{method}: keep-best minus keep-last"] = {**across_seeds(diffs),
                                                             "best_lower_on": sum(d < 0 for d in diffs),
                                                             "best_higher_on": sum(d > 0 for d in diffs)}
    return out


def across_seeds(diffs: list[float]) -> dict[str, Any]:
    """The training run as the unit: the per-seed differences (bastion - ART) of robust accuracy,
    their mean and standard deviation, a paired t-test and a Wilcoxon signed-rank test (two-sided)."""
    from scipy.stats import ttest_1samp, wilcoxon

    out: dict[str, Any] = {"seeds": len(diffs), "mean_diff": statistics.mean(diffs)}
    if len(diffs) >= 2:
        out["sd_diff"] = statistics.stdev(diffs)
        out["t_test_p"] = float(ttest_1samp(diffs, 0.0).pvalue)
    if len(diffs) >= 5 and any(diffs):
        out["wilcoxon_p"] = float(wilcoxon(diffs).pvalue)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=30, help="training epochs of part 2")
    ap.add_argument("--timing-epochs", type=int, default=5, help="epochs timed per side in part 1")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--methods", default="pgd-at", help="bastion methods of part 2, comma-separated ('' for none)")
    ap.add_argument("--eval-limit", type=int, default=None, help="attack a seeded subset of the 360 test images")
    ap.add_argument("--skip-art", action="store_true")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--keep", default="best", help="harden.keep of part 2, comma-separated (best,last: one run each)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--equivalence", type=int, default=0, metavar="EPOCHS",
                    help="only train bastion and ART for EPOCHS on the same random numbers and compare the weights")
    ap.add_argument("--paired", type=Path, nargs="+", default=None,
                    help="only summarise earlier --out files (one per seed): paired per-image comparison")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.paired:
        print(json.dumps(paired_summary([json.loads(p.read_text()) for p in args.paired]), indent=2))
        return
    global SEED
    SEED = args.seed
    if args.equivalence:
        print(json.dumps(equivalence(args.equivalence), indent=2))
        return
    doc: dict[str, Any] = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                                       "python": platform.python_version(), "torch": torch.__version__,
                                       "torch_threads": torch.get_num_threads(), "device": args.device,
                                       "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None},
                           "seed": SEED}
    if not args.skip_timing:
        doc["timing"] = timing(args.timing_epochs, args.device)
        print(json.dumps({"timing": {k: v for k, v in doc["timing"].items() if not isinstance(v, dict)}}), flush=True)
    doc["bastion"] = {}
    for method in filter(None, args.methods.split(",")):
        for keep in args.keep.split(","):
            key = f"{method}/keep-{keep}"
            doc["bastion"][key] = bastion_run(args.epochs, args.device, method, args.eval_limit, keep)
            print(json.dumps({key: {k: v for k, v in doc["bastion"][key].items()
                                    if k not in ("log", "after_same_eval_as_art")}}), flush=True)
    if not args.skip_art:
        doc["art"] = art_run(args.epochs, args.device, args.eval_limit)
        print(json.dumps({"art": {k: v for k, v in doc["art"].items() if k != "after"}}), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
