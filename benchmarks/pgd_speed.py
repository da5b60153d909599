"""PGD-L∞ speed: bastion vs a minimal hand-written PyTorch loop vs ART, same model, data, process.

Settings (issue 2): 20 steps, ε = 0.1, step 2.5·ε/20, one random start, batches of 256.
The hand loop is the classic one: fixed 20 steps, random start, no early stop. bastion stops a
sample as soon as it is fooled; a second hand loop with the same early stop isolates bastion's
own overhead. ART (adversarial-robustness-toolbox) runs when importable. Repetition r uses seed r
for every method and runs the methods in a rotated order; the table reports median wall and CPU
times (CPU time is the steadier figure on a machine shared with other processes).

    python benchmarks/pgd_speed.py                  # demo digits CNN, 360 test images (8x8)
    python benchmarks/pgd_speed.py --upsampled      # a CNN on digits upsampled to 32x32, 1797 images
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

EPS, STEPS, BATCH = 0.1, 20, 256
ALPHA = 2.5 * EPS / STEPS


# ----------------------------------------------------------------------------------- model, data
def digits_setup() -> tuple[nn.Module, np.ndarray, np.ndarray, str]:
    from bastion.core.demo import demo_data, digits_cnn

    target = digits_cnn()
    data = demo_data("digits")
    return target.module, data.x, data.y.astype(np.int64), "demo digits CNN, 360 test images 1x8x8"


def upsampled_setup(epochs: int = 3) -> tuple[nn.Module, np.ndarray, np.ndarray, str]:
    """A small CNN trained for a few epochs on the 1797 digits upsampled to 32x32 (as in ANCHORS.md)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x8 = torch.from_numpy((d.images / 16.0).astype(np.float32))[:, None]
    x = F.interpolate(x8, size=(32, 32), mode="bilinear", align_corners=False).clamp(0, 1)
    y = torch.from_numpy(d.target).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(32 * 8 * 8, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    return model, x.numpy(), d.target.astype(np.int64), f"CNN on digits upsampled to 32x32 ({epochs} epochs), 1797 images"


# --------------------------------------------------------------------------------------- methods
def run_bastion(model: nn.Module, x: np.ndarray, y: np.ndarray, seed: int) -> float:
    from bastion.attacks import PGD
    from bastion.core.spec import InputSpec
    from bastion.core.targets.torch_target import TorchTarget

    target = TorchTarget(model, InputSpec(shape=x.shape[1:], lower=0.0, upper=1.0, kind="image"))
    res = PGD(eps=EPS, norm="linf", steps=STEPS, step_size=ALPHA, batch_size=BATCH, seed=seed).run(target, x, y)
    return res.robust_accuracy


def run_hand_loop(model: nn.Module, x: np.ndarray, y: np.ndarray, seed: int) -> float:
    """The classic PGD loop (Madry et al. 2018): random start, fixed steps, sign step, projection."""
    for p in model.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    correct = 0
    for s in range(0, len(x), BATCH):
        xb, yb = torch.from_numpy(x[s:s + BATCH]), torch.from_numpy(y[s:s + BATCH])
        delta = (torch.rand(xb.shape, generator=gen) * 2 - 1) * EPS
        x_adv = (xb + delta).clamp(0, 1)
        for _ in range(STEPS):
            x_adv.requires_grad_(True)
            loss = F.cross_entropy(model(x_adv), yb)
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = x_adv.detach() + ALPHA * grad.sign()
            x_adv = torch.min(torch.max(x_adv, xb - EPS), xb + EPS).clamp(0, 1)
        with torch.no_grad():
            correct += int((model(x_adv).argmax(1) == yb).sum())
    return correct / len(x)


def run_hand_loop_early_stop(model: nn.Module, x: np.ndarray, y: np.ndarray, seed: int) -> float:
    """The same loop, but each sample leaves the batch as soon as it is misclassified (what bastion does);
    it isolates bastion's own overhead from the saving of early stopping."""
    for p in model.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    fooled = 0
    for s in range(0, len(x), BATCH):
        xb, yb = torch.from_numpy(x[s:s + BATCH]), torch.from_numpy(y[s:s + BATCH])
        with torch.no_grad():
            keep = model(xb).argmax(1) == yb
        fooled += int((~keep).sum())
        xb, yb = xb[keep], yb[keep]
        x_adv = (xb + (torch.rand(xb.shape, generator=gen) * 2 - 1) * EPS).clamp(0, 1)
        for step in range(STEPS + 1):
            x_adv.requires_grad_(step < STEPS)
            logits = model(x_adv)
            done = logits.detach().argmax(1) != yb
            fooled += int(done.sum())
            if step == STEPS or done.all():
                break
            (grad,) = torch.autograd.grad(F.cross_entropy(logits, yb, reduction="sum"), x_adv)
            live = ~done
            xb, yb, grad = xb[live], yb[live], grad[live]
            x_adv = x_adv.detach()[live] + ALPHA * grad.sign()
            x_adv = torch.min(torch.max(x_adv, xb - EPS), xb + EPS).clamp(0, 1)
    return 1 - fooled / len(x)


def run_art(model: nn.Module, x: np.ndarray, y: np.ndarray, seed: int) -> float:
    from art.attacks.evasion import ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    clf = PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=x.shape[1:], nb_classes=10,
                            clip_values=(0.0, 1.0), device_type="cpu")
    attack = ProjectedGradientDescent(clf, norm=np.inf, eps=EPS, eps_step=ALPHA, max_iter=STEPS,
                                      num_random_init=1, batch_size=BATCH, verbose=False)
    np.random.seed(seed)  # ART draws its random start from NumPy's global generator
    x_adv = attack.generate(x=x, y=y)
    return float((clf.predict(x_adv, batch_size=BATCH).argmax(1) == y).mean())


def same_algorithm_check(model: nn.Module, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Robust accuracy of the three implementations without a random start: deterministic, so equal
    numbers show the same algorithm (differences in the timed runs come from the random starts)."""
    from bastion.attacks import PGD
    from bastion.core.spec import InputSpec
    from bastion.core.targets.torch_target import TorchTarget

    target = TorchTarget(model, InputSpec(shape=x.shape[1:], lower=0.0, upper=1.0, kind="image"))
    out = {"bastion": PGD(eps=EPS, steps=STEPS, step_size=ALPHA, random_start=False, batch_size=BATCH)
           .run(target, x, y).robust_accuracy}
    correct = 0
    for s in range(0, len(x), BATCH):
        xb, yb = torch.from_numpy(x[s:s + BATCH]), torch.from_numpy(y[s:s + BATCH])
        x_adv = xb.clone()
        for _ in range(STEPS):
            x_adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), yb), x_adv)
            x_adv = torch.min(torch.max(x_adv.detach() + ALPHA * grad.sign(), xb - EPS), xb + EPS).clamp(0, 1)
        with torch.no_grad():
            correct += int((model(x_adv).argmax(1) == yb).sum())
    out["hand loop"] = correct / len(x)
    if art_available():
        from art.attacks.evasion import ProjectedGradientDescent
        from art.estimators.classification import PyTorchClassifier

        clf = PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=x.shape[1:], nb_classes=10,
                                clip_values=(0.0, 1.0), device_type="cpu")
        x_adv = ProjectedGradientDescent(clf, norm=np.inf, eps=EPS, eps_step=ALPHA, max_iter=STEPS, num_random_init=0,
                                         batch_size=BATCH, verbose=False).generate(x=x, y=y)
        out["ART"] = float((clf.predict(x_adv, batch_size=BATCH).argmax(1) == y).mean())
    return out


def art_available() -> bool:
    try:
        import art  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------------------------------ main
def measure(methods: dict[str, Callable[..., float]], model: nn.Module, x: np.ndarray, y: np.ndarray,
            reps: int) -> dict[str, dict[str, object]]:
    names = list(methods)
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    accs: dict[str, list[float]] = {n: [] for n in names}
    for n in names:  # warm-up: imports, allocator, one-off checks
        methods[n](model, x[:BATCH], y[:BATCH], 0)
    for r in range(reps):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            t0, c0 = time.perf_counter(), time.process_time()
            accs[n].append(methods[n](model, x, y, r))
            times[n].append(time.perf_counter() - t0)
            cpu[n].append(time.process_time() - c0)
    return {n: {"median": statistics.median(times[n]), "cpu": statistics.median(cpu[n]), "times": times[n],
                "cpu_times": cpu[n], "acc": accs[n]} for n in names}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--upsampled", action="store_true", help="use the 32x32 upsampled digits CNN")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default); 1 is least disturbed "
                    "by other processes on a shared machine")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, x, y, what = upsampled_setup() if args.upsampled else digits_setup()
    with torch.no_grad():
        clean = float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())
    methods: dict[str, Callable[..., float]] = {"bastion": run_bastion, "hand loop": run_hand_loop,
                                                "hand loop + early stop": run_hand_loop_early_stop}
    if art_available():
        methods["ART"] = run_art
    res = measure(methods, model, x, y, args.reps)
    same = same_algorithm_check(model, x, y)
    import bastion

    versions = f"python {platform.python_version()}, torch {torch.__version__}, bastion {bastion.__version__}"
    if art_available():
        import art

        versions += f", ART {art.__version__}"
    print(f"model: {what}; clean accuracy {clean:.3f}")
    print(f"PGD-Linf eps={EPS} steps={STEPS} step={ALPHA:.4g} batch={BATCH}, random start; {args.reps} reps, "
          f"rotated order; torch threads {torch.get_num_threads()}; {os.cpu_count()} CPUs ({platform.machine()})")
    print(versions)
    print()
    print("| method | median wall time (s) | median CPU time (s) | wall / CPU time of each run (s) "
          "| robust accuracy over seeds: median (min-max), mean |")
    print("| --- | ---: | ---: | --- | ---: |")
    for n, r in res.items():
        runs = ", ".join(f"{t:.2f}/{c:.2f}" for t, c in zip(r["times"], r["cpu_times"]))  # type: ignore[arg-type]
        acc = r["acc"]
        acc_txt = (f"{statistics.median(acc):.4f} ({min(acc):.4f}-{max(acc):.4f}), "  # type: ignore[arg-type]
                   f"mean {statistics.mean(acc):.4f}")  # type: ignore[arg-type]
        print(f"| {n} | {r['median']:.3f} | {r['cpu']:.3f} | {runs} | {acc_txt} |")
    print()
    print("without random start (deterministic): robust accuracy "
          + ", ".join(f"{n} {a:.4f}" for n, a in same.items()))
    for other in ("hand loop", "hand loop + early stop", "ART"):
        if other in res:
            wall = res["bastion"]["median"] / res[other]["median"]  # type: ignore[operator]
            cpu_ratio = res["bastion"]["cpu"] / res[other]["cpu"]  # type: ignore[operator]
            print(f"bastion / {other}: {wall:.3f}x wall, {cpu_ratio:.3f}x CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
