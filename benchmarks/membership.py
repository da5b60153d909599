"""Membership inference: bastion's LiRA and RMIA against ART's MembershipInferenceBlackBox, side by
side in one run, on the same target models and the same evaluation records (issue 11).

Targets (scikit-learn's digits, 1,797 images 8x8 in [0, 1], one seeded split):
- an MLP trained to overfit (scikit-learn, 256 hidden units, no weight decay) on 300 members;
- a CNN (the demo architecture, torch) trained for 60 epochs on the same 300 members.
Records: 300 members and 500 non-members; every attack is evaluated on the same 150 members and
350 non-members (a 1 % FPR is measurable, 0.1 % is not). ART's attack model is trained on the
other 150 members and 150 non-members (it is given known members, which bastion's attacks are
not). bastion's shadow and reference models train through the same training procedure as the
target, each on half of its pool, about 300 records like the target: offline, 600 other digits
(the reference population); online LiRA, 300 of them plus the evaluation records.

The LiRA row with shift queries (each record also moved one pixel four ways) and the RMIA rows
reuse the models cached by the rows before them (asked new queries, not trained again).

Run in the benchmark virtualenv (ART installed there, never a bastion dependency):

    OMP_NUM_THREADS=1 nice -n 10 .benchenv/bin/python benchmarks/membership.py --out benchmarks/results/membership.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
import warnings
from typing import Any

import numpy as np

N_MEMBERS, N_NON_MEMBERS = 300, 500
N_ART_TRAIN = 150  # members and non-members given to ART to train its attack model
N_REF_OFFLINE, N_REF_ONLINE = 600, 300  # shadow models train on half of their pool: ~300 records, like the target


def cpu() -> float:
    """CPU seconds of this process and of its finished children (worker processes)."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def digits_split(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    perm = np.random.default_rng(seed).permutation(len(x))
    m, n, r = perm[:N_MEMBERS], perm[N_MEMBERS:N_MEMBERS + N_NON_MEMBERS], perm[N_MEMBERS + N_NON_MEMBERS:]
    return {"members": (x[m], d.target[m]), "non_members": (x[n], d.target[n]), "reference": (x[r], d.target[r])}


def mlp_trainer() -> Any:
    from sklearn.neural_network import MLPClassifier

    from bastion.core.training import sklearn_train_fn

    # bastion's sklearn adapter flattens the (1, 8, 8) images to 64 features for the estimator
    return sklearn_train_fn(MLPClassifier(hidden_layer_sizes=(256,), alpha=0.0, max_iter=500))


def cnn_trainer() -> Any:
    from bastion.core.demo import digits_cnn_module
    from bastion.core.training import TorchTrainingProcedure, adam

    return TorchTrainingProcedure(model=digits_cnn_module, optimizer=adam(3e-3), epochs=60, batch_size=64,
                                  name="digits-cnn")


def art_scores(target: Any, data: dict[str, Any], model_type: str) -> tuple[np.ndarray, np.ndarray, float]:
    """ART 1.20.1's MembershipInferenceBlackBox on the target's probabilities: its attack model is
    fitted on the first halves of the members and non-members, then scores the second halves."""
    from art.attacks.inference.membership_inference import MembershipInferenceBlackBox
    from art.estimators.classification import BlackBoxClassifier

    (xm, ym), (xn, yn) = data["members"], data["non_members"]
    h = N_ART_TRAIN
    est = BlackBoxClassifier(lambda x: target.predict_proba(x.astype(np.float32)), input_shape=xm.shape[1:],
                             nb_classes=10, clip_values=(0.0, 1.0))
    t0 = time.perf_counter()
    attack = MembershipInferenceBlackBox(est, input_type="prediction", attack_model_type=model_type)
    with target.uncounted():
        pm, pn = target.predict_proba(xm), target.predict_proba(xn)
    onehot = np.eye(10)
    attack.fit(y=onehot[ym[:h]], test_y=onehot[yn[:h]], pred=pm[:h], test_pred=pn[:h])
    sm = attack.infer(None, onehot[ym[h:]], pred=pm[h:], probabilities=True)
    sn = attack.infer(None, onehot[yn[h:]], pred=pn[h:], probabilities=True)
    col = -1 if np.ndim(sm) == 2 else None
    sm = np.asarray(sm)[:, col] if col is not None else np.asarray(sm).ravel()
    sn = np.asarray(sn)[:, col] if col is not None else np.asarray(sn).ravel()
    return sm, sn, time.perf_counter() - t0


def row(name: str, sm: np.ndarray, sn: np.ndarray, seconds: float, cpu_s: float | None = None) -> dict[str, Any]:
    from bastion.attacks.privacy.membership import operating_point, roc_curve

    roc = roc_curve(sm, sn)
    pts = {f"{f:g}": operating_point(roc, f, len(sm), len(sn)) for f in (0.001, 0.01, 0.1)}
    return {"attack": name, "auc": roc.auc, "advantage": float(np.max(roc.tpr - roc.fpr)),
            "tpr_at_fpr": {k: p.tpr for k, p in pts.items()},
            "tpr_ci_1pct": [pts["0.01"].ci_low, pts["0.01"].ci_high],
            "note_0.1pct": pts["0.001"].reason, "seconds": round(seconds, 2),
            "cpu_seconds": None if cpu_s is None else round(cpu_s, 2)}


def run_model(name: str, trainer: Any, data: dict[str, Any], seed: int, shadows: int, workers: int,
              art_types: list[str], art_reps: int = 1, only_art: bool = False) -> list[dict[str, Any]]:
    from bastion.attacks.privacy import MembershipSplits, get_membership_attack
    from bastion.campaign.executors import make_executor
    from bastion.core.spec import InputSpec
    from bastion.core.training import TrainRequest

    spec = InputSpec(shape=(1, 8, 8), lower=0.0, upper=1.0, kind="image")
    (xm, ym), (xn, yn), (xr, yr) = data["members"], data["non_members"], data["reference"]
    t0 = time.perf_counter()
    target = trainer(TrainRequest(xm, ym, seed=seed, input_spec=spec, classes=list(range(10))))
    with target.uncounted():
        train_acc = float(np.mean(target.predict_proba(xm).argmax(1) == ym))
        test_acc = float(np.mean(target.predict_proba(xn).argmax(1) == yn))
    print(f"[{name}] target trained in {time.perf_counter() - t0:.1f}s: train acc {train_acc:.3f}, "
          f"test acc {test_acc:.3f}", flush=True)
    h = N_ART_TRAIN
    offline = MembershipSplits(xm[h:], ym[h:], xn[h:], yn[h:], xr[:N_REF_OFFLINE], yr[:N_REF_OFFLINE])
    online = MembershipSplits(xm[h:], ym[h:], xn[h:], yn[h:], xr[:N_REF_ONLINE], yr[:N_REF_ONLINE])
    out = []
    for t in art_types:
        for rep in range(art_reps):  # ART's attack model is trained without a seed: its figures vary run to run
            sm, sn, s = art_scores(target, data, t)
            out.append(row(f"ART MembershipInferenceBlackBox ({t})", sm, sn, s) | {"rep": rep})
            print(f"[{name}] {out[-1]}", flush=True)
    if only_art:
        for r in out:
            r.update(model=name, train_accuracy=train_acc, test_accuracy=test_acc)
        return out
    from bastion.core.run import RunContext

    ctx = RunContext(seed=seed, executor=make_executor(workers))
    for label, attack, params, splits in [
        ("bastion loss-threshold", "loss-threshold", {}, offline),
        (f"bastion LiRA online, {shadows} shadow models", "lira", {"mode": "online", "shadow_models": shadows}, online),
        (f"bastion LiRA online, {shadows} shadow models, shift queries", "lira",
         {"mode": "online", "shadow_models": shadows, "augment": "shift"}, online),
        (f"bastion LiRA offline, {shadows} shadow models", "lira", {"mode": "offline", "shadow_models": shadows},
         offline),
        ("bastion LiRA offline, 1 shadow model", "lira", {"mode": "offline", "shadow_models": 1}, offline),
        ("bastion RMIA offline, 1 reference model", "rmia", {"reference_models": 1}, offline),
        (f"bastion RMIA offline, {shadows} reference models", "rmia", {"reference_models": shadows}, offline),
    ]:  # the shift row and the RMIA rows reuse the cached LiRA models: no training
        c0, w0 = cpu(), time.perf_counter()
        res = get_membership_attack(attack, **params).run(target, splits, ctx=ctx, trainer=trainer)
        out.append(row(label, res.member_scores, res.non_member_scores, time.perf_counter() - w0, cpu() - c0))
        print(f"[{name}] {out[-1]}", flush=True)
    for r in out:
        r.update(model=name, train_accuracy=train_acc, test_accuracy=test_acc)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/membership.json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shadows", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--models", default="mlp,cnn")
    ap.add_argument("--art-models", default="nn,rf,gb")
    ap.add_argument("--art-reps", type=int, default=1, help="Repetitions of each ART attack (unseeded).")
    ap.add_argument("--only-art", action="store_true", help="Skip bastion's attacks (ART's spread over repetitions).")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    os.environ.setdefault("BASTION_CACHE_DIR", tempfile.mkdtemp(prefix="bastion-mi-bench-"))  # a cold cache
    import sklearn
    import torch

    import art
    import bastion

    torch.set_num_threads(1)
    data = digits_split(args.seed)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    trainers = {"mlp": ("MLP on digits (overfit)", mlp_trainer), "cnn": ("CNN on digits", cnn_trainer)}
    for key in args.models.split(","):
        name, make = trainers[key]
        rows += run_model(name, make(), data, args.seed, args.shadows, args.workers, args.art_models.split(","),
                          args.art_reps, args.only_art)
    doc = {"rows": rows, "seconds": round(time.perf_counter() - t0, 1), "seed": args.seed, "shadows": args.shadows,
           "workers": args.workers,
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0]},
           "versions": {"bastion": bastion.__version__, "art": art.__version__, "torch": torch.__version__,
                        "numpy": np.__version__, "sklearn": sklearn.__version__}}
    with open(args.out, "w") as fh:
        json.dump(doc, fh, indent=1)
    print(json.dumps({"seconds": doc["seconds"]}))


if __name__ == "__main__":
    main()
