"""Can a user trust bastion's robustness figures? bastion ``auto`` against ART's AutoAttack and the best
hand-written adaptive attacks, on six digits CNNs, four of them with masked or randomised gradients.

Models (scikit-learn digits, 8×8 inputs in [0, 1], the demo CNN architecture of ``bastion.core.demo``):

- ``standard``  — the demo CNN;
- ``pgd-at``    — a Madry PGD-adversarially-trained copy (``evasion_strength.adversarially_trained``);
- ``logits1000`` — the demo CNN with its logits multiplied by 1000 (softmax saturates in float32);
- ``round3``    — 3-bit input rounding ``round(7x)/7`` inside ``forward`` (zero gradients);
- ``noise``     — Gaussian input noise σ = ``NOISE_SIGMA`` inside ``forward`` on a copy fine-tuned with
  that noise (a randomised model: every figure is the EXPECTED accuracy over ``--draws`` fresh draws);
- ``sqrt``      — ``sqrt(x) * sqrt(x)`` as the first step (the identity, with NaN gradients at 0).

Per model and L∞ ε: bastion ``auto`` as a user runs it by default (Python API, seed 0); ART 1.20.1's
AutoAttack with the attacks of AutoAttack "standard" that ART has (APGD-CE, APGD-T = targeted APGD-DLR
towards each other class, DeepFool in place of FAB-T, which ART does not ship, and Square with
``--square-queries``), run stage after stage on the inputs still robust through ART's own
``auto_attack.run_attack``; and the best hand-written adaptive attack: PGD with the cross-entropy and
the logit-margin loss, many steps and restarts, through the attacker's differentiable substitute
(straight-through BPDA for rounding and sqrt·sqrt, Athalye et al. 2018, arXiv:1802.00420; the logits
÷ 1000 for the ×1000 model; EOT over ``--eot-draws`` noise draws per step for the noisy model).

Every tool's final adversarial inputs are checked (finite, in [0, 1], within ε: a row that is not is
replaced by its clean input and counted) and scored by this script in the same way: the predicted class
for deterministic models, the mean correctness over ``--draws`` fresh noise draws (seeded apart from
any draw an attack saw) for the randomised one. bastion's own headline is recorded beside it.

bastion's ``gradient-masking`` check runs on every model at every ε (default parameters, seed 0).

Times: wall and CPU (``time.process_time``) of bastion ``auto`` and ART, on the same inputs, one
after the other in the same run (the order alternates between rows), 1 torch thread.

Run from the repository root with a venv that has ART (see benchmarks/RESULTS.md):

    .benchenv/bin/python benchmarks/evasion_trust.py --label main

The recorded figures (benchmarks/results/evasion-trust.md) came from two parts run side by side, a
BPDA-declared part and a merge into a fresh ``--json``, with the hand-written attacks computed earlier on a GPU:

    H="--hand-from benchmarks/.cache/hand-gpu1 benchmarks/.cache/hand-gpu2"
    .benchenv/bin/python benchmarks/evasion_trust.py --models round3 noise sqrt $H --json /tmp/a.json --md /tmp/a.md
    .benchenv/bin/python benchmarks/evasion_trust.py --models standard pgd-at logits1000 $H --json /tmp/b.json --md /tmp/b.md
    .benchenv/bin/python benchmarks/evasion_trust.py --models round3 sqrt --declared --skip-bastion --skip-art \
        --skip-hand --skip-masking --json /tmp/c.json --md /tmp/c.md
    .benchenv/bin/python benchmarks/evasion_trust.py --merge-from /tmp/a.json /tmp/b.json /tmp/c.json

then bastion's rows alone re-run after the automatic straight-through gradients of ``auto`` (ART and
hand-written figures kept from the runs above):

    .benchenv/bin/python benchmarks/evasion_trust.py --models round3 sqrt standard pgd-at logits1000 \
        --skip-art --skip-hand --skip-masking --json /tmp/d.json --md /tmp/d.md
    .benchenv/bin/python benchmarks/evasion_trust.py --merge-from /tmp/d.json

``--declared`` adds a bastion run with the rounding / sqrt step declared for BPDA (``TorchTarget(...,
bpda=BPDA(module=...))``). Parts can run in parallel into separate files (``--models``, ``--eps``,
``--json``) and be folded together with ``--merge-from``. Results are merged into ``--json`` (ART and
hand-written results are kept from earlier runs unless rerun), and the table is rewritten from it into
``--md``. Trained models are cached in benchmarks/.cache.
The hand-written attacks need no bastion code beyond the demo data and can run on a GPU
(``--device cuda --hand-out DIR`` there, then ``--hand-from DIR [DIR ...]`` here scores the saved inputs).
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import io
import json
import math
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import bastion
from bastion.core.demo import demo_data, digits_cnn, digits_cnn_module

CACHE = Path(__file__).resolve().parent / ".cache"
MODELS = ("standard", "pgd-at", "logits1000", "round3", "noise", "sqrt")
MASKED = ("logits1000", "round3", "noise", "sqrt")
NOISE_SIGMA = 0.15
SCALE = 1000.0


# --- the six models ---------------------------------------------------------------------------------
class Scaled(nn.Module):
    """Logits × ``scale``: the same decisions, a softmax that saturates in float32."""

    def __init__(self, base: nn.Module, scale: float) -> None:
        super().__init__()
        self.base, self.scale = base, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) * self.scale


class Quantise(nn.Module):
    """``round(levels · x) / levels``: zero gradient almost everywhere."""

    def __init__(self, levels: int = 7) -> None:
        super().__init__()
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * self.levels) / self.levels


class Rounded(nn.Module):
    """3-bit input quantisation inside ``forward`` (the submodule ``quantise``)."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base, self.quantise = base, Quantise(7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(self.quantise(x))


class Noisy(nn.Module):
    """Gaussian input noise inside ``forward``: a randomised model."""

    def __init__(self, base: nn.Module, sigma: float) -> None:
        super().__init__()
        self.base, self.sigma = base, sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x + self.sigma * torch.randn_like(x))


class SqrtStep(nn.Module):
    """``sqrt(x) * sqrt(x)``: the identity on [0, 1], with a NaN gradient at every zero pixel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(x) * torch.sqrt(x)


class SqrtSqrt(nn.Module):
    """The sqrt·sqrt step (the submodule ``step``) before the CNN."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base, self.step = base, SqrtStep()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(self.step(x))


def _save(model: nn.Module, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())


def noise_trained(sigma: float, epochs: int = 15) -> nn.Module:
    """The demo CNN fine-tuned on inputs with Gaussian noise σ (so it stays accurate under that noise)."""
    path = CACHE / f"digits-cnn-noise{sigma}.pt"
    model = digits_cnn_module()
    if path.exists():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval()
    model.load_state_dict(digits_cnn().module.state_dict())
    for p in model.parameters():
        p.requires_grad_(True)
    train = demo_data("digits-train")
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.y.astype(np.int64))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            xb = x[idx] + sigma * torch.randn(x[idx].shape, generator=gen)
            opt.zero_grad()
            F.cross_entropy(model(xb), y[idx]).backward()
            opt.step()
    model.eval()
    _save(model, path)
    return model


def _cached(path: Path, make: Callable[[], nn.Module]) -> nn.Module:
    """The demo CNN architecture with the weights cached at ``path``, made (and cached) on first use."""
    if path.exists():
        model = digits_cnn_module()
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model
    model = make()
    _save(model, path)
    return model


def _pgd_trained() -> nn.Module:
    import evasion_strength

    evasion_strength.ADV_PATH = CACHE / "digits-cnn-pgd-at.pt"  # cache beside this script, not in /tmp
    return evasion_strength.adversarially_trained()


def build_models(names: list[str]) -> dict[str, nn.Module]:
    std = _cached(CACHE / "digits-cnn.pt", lambda: digits_cnn().module)
    makers: dict[str, Callable[[], nn.Module]] = {
        "standard": lambda: std,
        "pgd-at": lambda: _cached(CACHE / "digits-cnn-pgd-at.pt", _pgd_trained),
        "logits1000": lambda: Scaled(std, SCALE),
        "round3": lambda: Rounded(std),
        "noise": lambda: Noisy(noise_trained(NOISE_SIGMA), NOISE_SIGMA),
        "sqrt": lambda: SqrtSqrt(std),
    }
    out = {}
    for n in names:
        m = makers[n]().eval()
        for p in m.parameters():
            p.requires_grad_(False)
        out[n] = m
    return out


def randomised(model: nn.Module) -> bool:
    return isinstance(model, Noisy)


# --- scoring: the same for every tool -------------------------------------------------------------------
@torch.no_grad()
def correctness(model: nn.Module, x: np.ndarray, y: np.ndarray, draws: int, seed: int) -> np.ndarray:
    """Per input: 1/0 for a deterministic model; the fraction of ``draws`` fresh noise draws classified
    correctly for a randomised one (the draws seeded by ``seed``)."""
    dev = next(model.parameters()).device
    xt, yt = torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)
    if not randomised(model):
        return (model(xt).argmax(1) == yt).double().cpu().numpy()
    torch.manual_seed(seed)
    hits = torch.zeros(len(x), dtype=torch.float64, device=dev)
    for _ in range(draws):
        hits += (model(xt).argmax(1) == yt).double()
    return (hits / draws).cpu().numpy()


def sanitise(x: np.ndarray, x_adv: np.ndarray, eps: float) -> tuple[np.ndarray, int]:
    """Rows that are not finite, leave [0, 1] or the ε-ball become the clean input; returns how many."""
    x_adv = np.asarray(x_adv, dtype=np.float32).reshape(x.shape)
    flat, d = x_adv.reshape(len(x), -1), (x_adv - x).reshape(len(x), -1)
    ok = (np.isfinite(flat).all(1) & (flat >= -1e-6).all(1) & (flat <= 1 + 1e-6).all(1)
          & (np.abs(np.nan_to_num(d, nan=np.inf)).max(1) <= eps * (1 + 1e-4) + 1e-6))
    out = np.where(ok[:, None, None, None], np.clip(x_adv, 0.0, 1.0), x)
    return out.astype(np.float32), int((~ok).sum())


def score(model: nn.Module, x: np.ndarray, x_adv: np.ndarray, y: np.ndarray, eps: float, draws: int) -> dict:
    """Robust accuracy of ``x_adv`` (expected over ``draws`` fresh draws for a randomised model, with the
    95% interval of that expectation given these inputs)."""
    x_adv, invalid = sanitise(x, x_adv, eps)
    c = correctness(model, x_adv, y, draws, seed=10_007)
    out = {"robust": float(c.mean()), "invalid_rows": invalid, "per_input": [round(float(v), 3) for v in c]}
    if randomised(model):
        out["ci95"] = float(1.96 * math.sqrt(float(np.sum(c * (1 - c))) / draws) / len(c))
        out["draws"] = draws
    return out


# --- bastion ------------------------------------------------------------------------------------------
#: The submodule with the non-differentiable step, for bastion's BPDA declaration (``--declared``).
BPDA_MODULE = {"round3": "quantise", "sqrt": "step"}


def _target(model: nn.Module, bpda_module: str | None = None) -> Any:
    from bastion.core.spec import InputSpec
    from bastion.core.targets.torch_target import TorchTarget

    spec = InputSpec(shape=(1, 8, 8), lower=0.0, upper=1.0, kind="image")
    if bpda_module is None:
        return TorchTarget(model, spec)
    from bastion.core.defense import BPDA  # bastion's declaration (issue 9); identity straight-through

    return TorchTarget(model, spec, bpda=BPDA(module=bpda_module))


def run_bastion_auto(model: nn.Module, x: np.ndarray, y: np.ndarray, eps: float, draws: int,
                     bpda_module: str | None = None) -> dict:
    """``auto`` as a user runs it: defaults, seed 0, through the Python API; with ``bpda_module``, the
    model's non-differentiable step declared to bastion for BPDA."""
    from bastion.attacks import AutoAttack

    target = _target(model, bpda_module)
    w0, c0 = time.perf_counter(), time.process_time()
    res = AutoAttack(eps=eps, norm="linf", seed=0).run(target, x, y)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    e = res.expectation  # bastion's own measurement of a randomised target: draws and 95% bootstrap CI
    own = {} if e is None else {"headline_draws": e.draws, "headline_eot": e.eot, "headline_ci": list(e.ci)}
    return {**score(model, x, res.x_adv, y, eps, draws), "headline": res.robust_accuracy, **own, "wall_s": wall,
            "cpu_s": cpu, "complete": res.complete, "reason": res.reason, "stages": res.extra.get("stages"),
            "gradients": res.extra.get("gradients"), "notes": res.extra.get("notes")}


def run_masking_check(model: nn.Module, x: np.ndarray, y: np.ndarray, eps: float) -> dict:
    """bastion's ``gradient-masking`` check with its default parameters at ``eps``, as a scan runs it."""
    from bastion.campaign.checks.base import CheckContext
    from bastion.campaign.checks.gradient_masking import GradientMaskingCheck
    from bastion.core.data import Dataset

    check = GradientMaskingCheck("gradient-masking", GradientMaskingCheck.Params(eps=eps))
    ctx = CheckContext(target=_target(model), data=Dataset(x, y, name="digits-test"), y=y, seed=0)
    w0 = time.perf_counter()
    res = check.run(ctx)
    return {"status": res.status, "flagged": res.metrics.get("flagged"), "seconds": time.perf_counter() - w0,
            "findings": [{"rule": f.rule_id, "severity": str(getattr(f.severity, "value", f.severity)),
                          "title": f.title} for f in res.findings]}


# --- ART --------------------------------------------------------------------------------------------------
def run_art(model: nn.Module, x: np.ndarray, y: np.ndarray, eps: float, square_queries: int, draws: int) -> dict:
    """ART 1.20.1's AutoAttack machinery (``auto_attack.run_attack``, which ``AutoAttack.generate`` calls per
    attack) with the AutoAttack "standard" list as far as ART has it: APGD-CE (1 run), APGD-T (targeted
    APGD-DLR towards each of the 9 other classes, most likely first), DeepFool (ART has no FAB-T) and
    Square (``square_queries`` iterations, 1 run); each on the inputs still robust. ``eps_step = 2ε``:
    ART's APGD starts with η = eps_step, the paper with η = 2ε. A stage that raises is recorded, not fatal."""
    from art.attacks.evasion import AutoProjectedGradientDescent, DeepFool, SquareAttack
    from art.attacks.evasion.auto_attack import run_attack
    from evasion_strength import art_classifier

    np.random.seed(0)  # ART draws from numpy's and torch's global generators
    torch.manual_seed(0)
    clf = art_classifier(model)
    onehot = np.eye(10, dtype=np.float32)
    x_adv, yo = x.copy(), onehot[y]
    stages: list[dict] = []
    w0, c0 = time.perf_counter(), time.process_time()
    robust = clf.predict(x).argmax(1) == y

    def stage(name: str, attack: Any, labels: np.ndarray) -> None:
        nonlocal x_adv, robust
        s0 = time.perf_counter()
        try:
            if robust.any():
                x_adv, robust = run_attack(x_adv, labels, robust, attack, clf, norm=np.inf, eps=eps)
            err = None
        except Exception as exc:  # noqa: BLE001 - recorded in the results
            err = f"{type(exc).__name__}: {exc}"
        stages.append({"stage": name, "robust_art": float(robust.mean()), "seconds": time.perf_counter() - s0,
                       "error": err})

    apgd = dict(estimator=clf, norm=np.inf, eps=eps, eps_step=2 * eps, max_iter=100, nb_random_init=1,
                batch_size=256, verbose=False)
    stage("apgd-ce", AutoProjectedGradientDescent(targeted=False, loss_type="cross_entropy", **apgd), yo)
    with torch.no_grad():
        order = np.argsort(-model(torch.from_numpy(x)).numpy(), axis=1)
    others = np.array([[c for c in row if c != t] for row, t in zip(order, y)])  # most likely first
    apgd_t = AutoProjectedGradientDescent(targeted=True, loss_type="difference_logits_ratio", **apgd)
    for k in range(9):
        stage(f"apgd-t[{k}]", apgd_t, onehot[others[:, k]])
    stage("deepfool", DeepFool(classifier=clf, max_iter=100, epsilon=1e-3, nb_grads=10, batch_size=256,
                               verbose=False), yo)
    stage("square", SquareAttack(estimator=clf, norm=np.inf, max_iter=square_queries, eps=eps, p_init=0.8,
                                 nb_restarts=1, batch_size=256, verbose=False), yo)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return {**score(model, x, x_adv, y, eps, draws), "headline": float(robust.mean()), "wall_s": wall,
            "cpu_s": cpu, "square_queries": square_queries, "stages": _merge_targeted(stages)}


def _merge_targeted(stages: list[dict]) -> list[dict]:
    out: list[dict] = []
    for s in stages:
        name = s["stage"].split("[")[0]
        if out and out[-1]["stage"] == name:
            out[-1].update(robust_art=s["robust_art"], seconds=out[-1]["seconds"] + s["seconds"],
                           error=out[-1]["error"] or s["error"])
        else:
            out.append({**s, "stage": name})
    return out


# --- hand-written adaptive attacks -------------------------------------------------------------------------
def substitute(name: str, model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The adaptive attacker's differentiable path: forward values of the real model, useful gradients."""
    if isinstance(model, Scaled):
        return model.base  # logits ÷ 1000: the same decisions, a softmax that does not saturate
    if isinstance(model, Rounded):
        return lambda x: model.base(x + (model.quantise(x) - x).detach())  # BPDA, straight-through
    if isinstance(model, SqrtSqrt):
        return lambda x: model.base(x + (model.step(x) - x).detach())  # BPDA, straight-through
    return model


def _loss(z: torch.Tensor, y: torch.Tensor, kind: str, t: torch.Tensor | None) -> torch.Tensor:
    """Per-row loss the attacker maximises: cross-entropy, the negative logit margin (C&W), or with a
    target class ``t`` the margin of ``t`` over every other class."""
    if kind == "ce":
        return F.cross_entropy(z, y, reduction="none")
    if t is not None:
        return z.gather(1, t[:, None]).squeeze(1) - z.scatter(1, t[:, None], -torch.inf).amax(1)
    other = z.scatter(1, y[:, None], -torch.inf).amax(1)
    return other - z.gather(1, y[:, None]).squeeze(1)


def hand_pgd(name: str, model: nn.Module, x: np.ndarray, y: np.ndarray, eps: float, *, steps: int,
             restarts: int, targets: int, eot: int, draws: int, seed: int = 0) -> dict:
    """L∞ PGD (Madry et al. 2018) with a random start and a step-size schedule (ε/4, ε/10, ε/40 over the
    first half, next quarter, last quarter): ``restarts`` runs with the cross-entropy and as many with the
    logit margin, plus one targeted-margin run towards each of the ``targets`` most likely other classes;
    all through ``substitute``. For a randomised model the gradient is that of the expected loss over
    ``eot`` draws (EOT, Athalye et al. 2018). Per input the best iterate over all runs is kept: the first
    that fools a deterministic model, or (checked at four points of each run) the one with the lowest
    expected accuracy over ``draws`` selection draws; the final score uses other, fresh draws."""
    f = substitute(name, model)
    rnd = randomised(model)
    dev = next(model.parameters()).device
    x0, yt = torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)
    with torch.no_grad():
        order = f(x0).argsort(1, descending=True)
    others = torch.stack([row[row != c] for row, c in zip(order, yt)])  # most likely other classes first
    best = x0.clone()
    best_c = torch.from_numpy(correctness(model, x, y, draws, seed=1)).double().to(dev)
    gen = torch.Generator().manual_seed(seed)
    reps = eot if rnd else 1
    w0 = time.perf_counter()
    checkpoints = {steps // 4, steps // 2, 3 * steps // 4, steps - 1}
    runs = [(kind, None) for _ in range(restarts) for kind in ("ce", "margin")]
    runs += [("margin", k) for k in range(targets)]
    for i, (kind, k) in enumerate(runs):
        todo = torch.nonzero(best_c > 0).squeeze(1)
        if not len(todo):
            break
        xs, ys = x0[todo], yt[todo]
        tt = None if k is None else others[todo, k].repeat(reps)
        adv = (xs + eps * (2 * torch.rand(xs.shape, generator=gen).to(dev) - 1)).clamp(0, 1)
        torch.manual_seed(seed * 1000 + i)
        for t in range(steps):
            alpha = eps / 4 if t < steps // 2 else eps / 10 if t < 3 * steps // 4 else eps / 40
            adv.requires_grad_(True)
            z = f(adv.repeat(reps, 1, 1, 1))
            loss = _loss(z, ys.repeat(reps), kind, tt).view(reps, -1).mean(0).sum()
            (g,) = torch.autograd.grad(loss, adv)
            with torch.no_grad():
                adv = adv + alpha * torch.nan_to_num(g).sign()
                adv = torch.min(torch.max(adv, xs - eps), xs + eps).clamp(0, 1)
            if rnd and t not in checkpoints:
                continue
            with torch.no_grad():
                if rnd:
                    c = torch.from_numpy(correctness(model, adv.cpu().numpy(), ys.cpu().numpy(), draws,
                                                     seed=2 + t)).to(dev)
                else:
                    c = (model(adv).argmax(1) == ys).double()
            better = c < best_c[todo]
            best[todo[better]], best_c[todo[better]] = adv[better].detach(), c[better]
    x_adv = best.cpu().numpy()
    return {**score(model, x, x_adv, y, eps, draws), "x_adv": x_adv, "wall_s": time.perf_counter() - w0,
            "device": str(dev), "seed": seed, "steps": steps,
            "runs": [f"{kind}{'' if k is None else f'-target{k + 1}'}" for kind, k in runs],
            "eot": reps,
            "substitute": {"Scaled": "logits / 1000", "Rounded": "BPDA straight-through",
                           "SqrtSqrt": "BPDA straight-through"}.get(type(model).__name__, "the model")}


def load_hand(model: nn.Module, x: np.ndarray, y: np.ndarray, eps: float, files: list[Path], draws: int) -> dict:
    """Hand-written adversarial inputs saved by ``--hand-out`` (one file per earlier run), scored here: per
    input the run whose input is right on the fewest selection draws (seed apart from the final draws)."""
    found = [f for f in files if f.exists()]
    if not found:
        raise FileNotFoundError(f"no saved hand-written attack among {', '.join(map(str, files))}")
    cands = [sanitise(x, np.load(f)["x_adv"][:len(x)], eps)[0] for f in found]  # saved for the first N ≥ n
    sel = np.stack([correctness(model, c, y, draws, seed=3) for c in cands])
    pick = sel.argmin(0)
    x_adv = np.stack(cands)[pick, np.arange(len(x))]
    metas = [json.loads(str(np.load(f)["meta"])) for f in found]
    return {**score(model, x, x_adv, y, eps, draws), "from": [str(f) for f in found],
            "there": [{k: m.get(k) for k in ("robust", "wall_s", "device", "seed", "steps", "runs", "eot",
                                             "substitute")} for m in metas],
            "wall_s": sum(m["wall_s"] for m in metas)}


def merge(data: dict, other: dict) -> None:
    """Fold another result file's runs and rows into ``data`` (bastion runs and masking checks by label;
    ART and hand-written results replaced where the other file has them)."""
    runs = data["meta"].setdefault("runs", {})
    for run_id, argv in other["meta"].get("runs", {}).items():
        while run_id in runs and runs[run_id] != argv:  # parts started in the same minute
            run_id += "'"
        runs[run_id] = argv
    for key, value in other["meta"].items():
        if key in ("art", "hand") or (key != "runs" and key not in data["meta"]):
            data["meta"][key] = value
    for name, row in other["rows"].items():
        mine = data["rows"].setdefault(name, {})
        for field, value in row.items():
            if field in ("bastion", "masking"):
                mine.setdefault(field, {}).update(value)
            else:
                mine[field] = value


# --- report ---------------------------------------------------------------------------------------------------
def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def _pm(result: dict | None) -> str:
    """A robust accuracy, with ± the 95% interval of its expectation over draws where it has one."""
    if not result or "robust" not in result:
        return "—"
    return _pct(result["robust"]) + (f" ± {100 * result['ci95']:.1f}" if "ci95" in result else "")


def _ci(result: dict) -> str:
    """bastion's own 95% bootstrap interval of an expected robust accuracy, where it reported one."""
    ci = result.get("headline_ci")
    return f", CI {100 * ci[0]:.1f}–{100 * ci[1]:.1f}%" if ci else ""


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}×" if b > 0 else "—"


def best_known(row: dict, n: int | None = None) -> tuple[float | None, str]:
    """The lower robust accuracy of ART and the hand-written attack (over the first ``n`` inputs if given:
    a bastion run on fewer inputs is compared on those)."""
    known = [(float(np.mean(row[k]["per_input"][:n])) if n else row[k]["robust"], k)
             for k in ("art", "hand") if row.get(k) and "robust" in row[k]]
    return min(known) if known else (None, "")


def _n(result: dict) -> int | None:
    return len(result["per_input"]) if "per_input" in result else None


def any_tool(row: dict) -> float | None:
    """Per input the lowest correctness any tool reached, averaged: the strongest known per input."""
    per = [row[k]["per_input"] for k in ("art", "hand") if row.get(k) and "per_input" in row[k]]
    per += [b["per_input"] for b in row.get("bastion", {}).values() if "per_input" in b]
    full = max((len(p) for p in per), default=0)
    per = [p for p in per if len(p) == full]  # runs on fewer inputs are left out
    return float(np.mean(np.min(np.array(per), axis=0))) if per else None


def targets(rows: dict, labels: list[str]) -> list[str]:
    """Issue 9's targets per bastion run: within 1 point of the best known attack; a masking finding on
    each masked model and none on the others; ART's CPU time at least 5× bastion's."""
    out = []
    for lab in labels:
        gap, mask, speed = [], [], []
        for r in rows.values():
            b = r.get("bastion", {}).get(lab)
            bk = best_known(r, _n(b))[0] if b else None
            if b and bk is not None and b["robust"] - bk > 0.01 + 1e-9:
                gap.append(f"{r['model']} ε={r['eps']} +{100 * (b['robust'] - bk):.1f}")
            art = r.get("art")
            if b and art and art.get("cpu_s") and art["cpu_s"] < 5 * b["cpu_s"]:
                speed.append(f"{r['model']} ε={r['eps']} {art['cpu_s'] / b['cpu_s']:.1f}×")
            m = r.get("masking", {}).get(lab.split("+")[0])
            if m and "+" not in lab:
                raised = bool(m["findings"])
                if raised != (r["model"] in MASKED):
                    mask.append(f"{r['model']} ε={r['eps']} ({'raised' if raised else 'none'})")
        n_b = sum(1 for r in rows.values() if r.get("bastion", {}).get(lab))
        out.append(f"- `{lab}` ({n_b} rows): within 1 pp of the best known: "
                   + ("**met**" if not gap else "**not met** on " + "; ".join(gap))
                   + ". Masking findings as expected: "
                   + ("—" if "+" in lab else "**met**" if not mask else "**not met** on " + "; ".join(mask))
                   + ". ART CPU ≥ 5× bastion's: "
                   + ("**met**" if not speed else "**not met** on " + "; ".join(speed))
                   + " (rows with an ART time).")
    return out


def write_md(data: dict, path: Path) -> None:
    meta = data["meta"]
    rows = dict(sorted(data["rows"].items(), key=lambda kv: (MODELS.index(kv[1]["model"]), kv[1]["eps"])))
    labels = sorted({lab for r in rows.values() for lab in r.get("bastion", {})})
    L = ["# Evasion figures a user can trust: bastion `auto` vs ART AutoAttack vs hand-written adaptive attacks",
         "", "Script: `benchmarks/evasion_trust.py`; raw figures: `evasion-trust.json`. Written by the script.", "",
         f"- Machine: {meta.get('machine')}. Python {meta.get('python')}, torch {meta.get('torch')}, "
         f"ART {meta.get('art')}, bastion {meta.get('bastion')}.",
         f"- Data: the first {meta.get('n')} images of the digits test split (8×8, [0, 1]). Noise model σ = "
         f"{NOISE_SIGMA}; its figures are expected accuracies over {meta.get('draws')} fresh noise draws "
         "(± the 95% interval of that expectation), for every tool alike.",
         *([f"- {meta['hand']}."] if meta.get("hand") else []),
         "- Runs (label, start; arguments):", *[f"  - {k}: `{v}`" for k, v in meta.get("runs", {}).items()], "",
         "## Robust accuracy (L∞)", "",
         "bastion cells: robust accuracy of its adversarial inputs scored by this script (bastion's own headline "
         "in brackets; for the noise model bastion's own expectation over its own fresh draws with its 95% "
         "bootstrap CI). ± on the noise row: the 95% interval of the expectation over this script's draws. Best known: the lower of ART and the hand-written attack. Any tool: per input the lowest "
         "accuracy any tool reached (bastion included). Δ: bastion minus best known, over the inputs that bastion "
         "run attacked (a run labelled `-nN` attacked the first N only).", ""]
    head = (["model", "ε", "clean"] + [f"bastion auto ({lab})" for lab in labels]
            + ["ART AutoAttack", "hand-written adaptive", "best known", "any tool, per input"]
            + [f"Δ {lab} (pp)" for lab in labels])
    L += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows.values():
        bk, _ = best_known(r)
        bs = [r.get("bastion", {}).get(lab) for lab in labels]
        art, hand = r.get("art"), r.get("hand")
        cells = ([r["model"], str(r["eps"]), _pct(r.get("clean"))]
                 + ["—" if b is None else f"{_pm(b)} ({_pct(b['headline'])}{_ci(b)})" for b in bs]
                 + [_pm(art), _pm(hand), _pct(bk),
                    _pct(any_tool(r))]
                 + ["—" if b is None or best_known(r, _n(b))[0] is None
                    else f"{100 * (b['robust'] - best_known(r, _n(b))[0]):+.1f}" for b in bs])
        L.append("| " + " | ".join(cells) + " |")
    L += ["", "## Times (1 torch thread; bastion and ART alternate within a run)", "",
          "A row's bastion and ART figures may come from different runs of the same label (see Runs), on the "
          "same machine under another load; CPU time depends less on the load than wall time.", "",
          "| model | ε | bastion run | bastion wall s | bastion CPU s | ART run | ART wall s | ART CPU s "
          "| ART / bastion wall | ART / bastion CPU |", "| --- " * 10 + "|"]
    for r in rows.values():
        art = r.get("art") or {}
        for lab in labels:
            b = r.get("bastion", {}).get(lab)
            if not b or not art:
                continue
            L.append(f"| {r['model']} | {r['eps']} | {lab} | {b['wall_s']:.1f} | {b['cpu_s']:.1f} | {art['run']} | "
                     f"{art['wall_s']:.1f} | {art['cpu_s']:.1f} | {_ratio(art['wall_s'], b['wall_s'])} | "
                     f"{_ratio(art['cpu_s'], b['cpu_s'])} |")
    for lab in labels:  # summed over the rows that have both times
        pairs = [(r["bastion"][lab], r["art"]) for r in rows.values() if r.get("art") and lab in r.get("bastion", {})]
        if pairs:
            bw, bc, aw, ac = (sum(p[i][k] for p in pairs) for i, k in ((0, "wall_s"), (0, "cpu_s"), (1, "wall_s"),
                                                                       (1, "cpu_s")))
            L.append(f"| all {len(pairs)} rows | | {lab} | {bw:.1f} | {bc:.1f} | | {aw:.1f} | {ac:.1f} | "
                     f"{_ratio(aw, bw)} | {_ratio(ac, bc)} |")
    L += ["", "## Masking check (`gradient-masking`, default parameters)", "",
          "| model | ε | run | flagged signs | findings (severity) |", "| --- | --- | --- | --- | --- |"]
    for r in rows.values():
        for lab, m in sorted(r.get("masking", {}).items()):
            f = ", ".join(f"{x['rule']} ({x['severity']})" for x in m["findings"]) or "none"
            L.append(f"| {r['model']} | {r['eps']} | {lab} | {', '.join(m['flagged'] or []) or 'none'} | {f} |")
    L += ["", "## Targets (computed from the rows above)", ""] + targets(rows, labels)
    L += ["", "## Stages", "", "bastion `auto` per stage (robust accuracy by bastion's own count, seconds); "
          "ART per stage (robust by ART's own count, seconds).", ""]
    for r in rows.values():
        for lab in labels:
            b = r.get("bastion", {}).get(lab)
            if b and b.get("stages"):
                s = "; ".join(f"{st['stage']} {_pct(st['robust_accuracy'])} ({st['seconds']:.1f} s)"
                              for st in b["stages"])
                L.append(f"- {r['model']} ε={r['eps']} bastion ({lab}): {s}")
        art = r.get("art")
        if art:
            s = "; ".join(f"{st['stage']} {_pct(st['robust_art'])} ({st['seconds']:.1f} s)"
                          + (f" ERROR {st['error'][:80]}" if st.get("error") else "") for st in art["stages"])
            L.append(f"- {r['model']} ε={r['eps']} ART (Square {art['square_queries']} queries): {s}")
    path.write_text("\n".join(L) + "\n")


def _commit() -> str:
    """The git commit of the bastion source this run imports (``unknown`` outside a checkout)."""
    import subprocess

    try:
        return subprocess.run(["git", "-C", str(Path(bastion.__file__).parent), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.2])
    ap.add_argument("--n", type=int, default=200, help="test images (the first n of the digits test split)")
    ap.add_argument("--square-queries", type=int, default=5000, help="ART Square iterations (one run)")
    ap.add_argument("--draws", type=int, default=100, help="noise draws per expected accuracy")
    ap.add_argument("--label", default="main", help="name of this bastion run (before / after / ...)")
    ap.add_argument("--skip-art", action="store_true", help="keep ART results from --json")
    ap.add_argument("--skip-hand", action="store_true", help="keep hand-written results from --json")
    ap.add_argument("--skip-bastion", action="store_true", help="skip the default bastion run (not --declared)")
    ap.add_argument("--skip-masking", action="store_true")
    ap.add_argument("--declared", action="store_true",
                    help="also run bastion auto with the BPDA declaration on the rounding and sqrt models")
    ap.add_argument("--hand-steps", type=int, default=200)
    ap.add_argument("--hand-restarts", type=int, default=5, help="CE and margin runs each (deterministic)")
    ap.add_argument("--hand-targets", type=int, default=3, help="targeted-margin runs (top classes)")
    ap.add_argument("--eot-restarts", type=int, default=1, help="CE and margin runs each (randomised model)")
    ap.add_argument("--eot-draws", type=int, default=20, help="noise draws per EOT gradient step")
    ap.add_argument("--hand-seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="torch device of the hand-written attacks")
    ap.add_argument("--hand-out", help="also save the hand-written attacks' inputs here (npz per row)")
    ap.add_argument("--hand-from", nargs="+",
                    help="score hand-written adversarial inputs saved by --hand-out instead of running the attacks "
                         "(e.g. computed on a GPU machine); with several folders, per input the run with the "
                         "lowest accuracy on selection draws")
    ap.add_argument("--merge-from", nargs="+", metavar="JSON",
                    help="only merge the rows and runs of these result files (parts run in parallel) into --json")
    ap.add_argument("--json", default="benchmarks/results/evasion-trust.json")
    ap.add_argument("--md", default="benchmarks/results/evasion-trust.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.json)
    data = json.loads(out.read_text()) if out.exists() else {"meta": {"runs": {}}, "rows": {}}

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, indent=1))
        write_md(data, Path(args.md))

    if args.merge_from:
        for f in args.merge_from:
            merge(data, json.loads(Path(f).read_text()))
        save()
        return
    data["meta"].update({
        "machine": f"{platform.machine()}, 2-core CPU shared with other jobs, 1 torch thread",
        "python": platform.python_version(), "torch": torch.__version__, "bastion": bastion.__version__,
        "n": args.n, "draws": args.draws, "noise_sigma": NOISE_SIGMA, "scale": SCALE})
    if not args.skip_art:
        import art

        data["meta"]["art"] = art.__version__
    if args.hand_from:
        data["meta"]["hand"] = (f"hand-written attacks computed by earlier --hand-out runs "
                                f"({', '.join(args.hand_from)}), scored by this run; their wall times are "
                                "those runs' (device in the JSON)")
    run_id = f"{args.label} {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC, bastion at {_commit()}"
    data["meta"].setdefault("runs", {})[run_id] = " ".join(
        f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("json", "md", "label"))
    test = demo_data("digits")
    x, y = test.x[:args.n].astype(np.float32), test.y[:args.n].astype(np.int64)
    models = build_models(args.models)

    k = 0
    for mname, model in models.items():
        clean = float(correctness(model, x, y, args.draws, seed=10_007).mean())
        print(f"{mname}: clean {clean:.3f}", flush=True)
        for eps in args.eps:
            row = data["rows"].setdefault(f"{mname} {eps}", {"model": mname, "eps": eps})
            row["clean"] = clean
            tools = [t for t in ("bastion", "art") if not getattr(args, f"skip_{t}")]
            for tool in tools if k % 2 == 0 else tools[::-1]:
                if tool == "bastion":
                    res = run_bastion_auto(model, x, y, eps, args.draws)
                    row.setdefault("bastion", {})[args.label] = {**res, "run": args.label}
                else:
                    res = run_art(model, x, y, eps, args.square_queries, args.draws)
                    row["art"] = {**res, "run": args.label}
                print(f"  {mname} ε={eps} {tool}: robust {res['robust']:.3f} (headline {res['headline']:.3f}) "
                      f"wall {res['wall_s']:.1f}s cpu {res['cpu_s']:.1f}s", flush=True)
                save()
            k += 1
            if args.declared and mname in BPDA_MODULE:
                res = run_bastion_auto(model, x, y, eps, args.draws, BPDA_MODULE[mname])
                row.setdefault("bastion", {})[f"{args.label}+bpda"] = {**res, "run": args.label}
                print(f"  {mname} ε={eps} bastion+bpda: robust {res['robust']:.3f} (headline {res['headline']:.3f})"
                      f" wall {res['wall_s']:.1f}s cpu {res['cpu_s']:.1f}s", flush=True)
                save()
            if args.hand_from:
                res = load_hand(model, x, y, eps, [Path(d) / f"hand-{mname}-{eps}.npz" for d in args.hand_from],
                                args.draws)
                row["hand"] = {**res, "run": args.label}
                print(f"  {mname} ε={eps} hand (from {len(res['from'])} saved runs): robust {res['robust']:.3f}",
                      flush=True)
            elif not args.skip_hand:
                hand_model = copy.deepcopy(model).to(args.device)
                res = hand_pgd(mname, hand_model, x, y, eps, steps=args.hand_steps, targets=args.hand_targets,
                               restarts=args.eot_restarts if randomised(model) else args.hand_restarts,
                               eot=args.eot_draws, draws=args.draws, seed=args.hand_seed)
                x_adv = res.pop("x_adv")
                if args.hand_out:
                    Path(args.hand_out).mkdir(parents=True, exist_ok=True)
                    meta = {k: v for k, v in res.items() if k != "per_input"}
                    np.savez(Path(args.hand_out) / f"hand-{mname}-{eps}.npz", x_adv=x_adv, meta=json.dumps(meta))
                row["hand"] = {**res, "run": args.label}
                print(f"  {mname} ε={eps} hand: robust {res['robust']:.3f} wall {res['wall_s']:.1f}s", flush=True)
            if not args.skip_masking:
                row.setdefault("masking", {})[args.label] = run_masking_check(model, x, y, eps)
                print(f"  {mname} ε={eps} masking: {row['masking'][args.label]['flagged']}", flush=True)
            save()


if __name__ == "__main__":
    main()
