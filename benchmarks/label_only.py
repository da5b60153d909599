"""Label-only membership inference (``label-robustness``) against the score attacks, on the targets of
``benchmarks/membership.py`` (issue 11: "a model that returns labels only").

For each seed and target (the overfit digits MLP and the digits CNN of the membership benchmark,
300 members; evaluated on 150 members and 350 non-members, 600 reference records), the target is
put behind the ``label-only`` output defense and attacked with:

- the gap attack (Yeom et al. 2018): score = 1 if the label is right, else 0 (what a label alone says);
- ``label-robustness`` uncalibrated (the share of right labels under noise, no reference model: the
  raw score of Choquette-Choo et al.'s noise-robustness attack with its threshold swept);
- ``label-robustness`` calibrated on 1 and 4 reference models (bastion's attack);

and, for scale, the score attacks on the same target with its scores: ``loss-threshold`` and LiRA
offline with 4 shadow models. A third target is the hard case for the uncalibrated score: a random
forest of fully grown trees fitted on 300 records of two overlapping classes with 30 % of the
labels flipped (it memorises its mislabelled members, which noise then flips back).

    OMP_NUM_THREADS=1 python benchmarks/label_only.py --seeds 0,1,2 --out benchmarks/results/label-only.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from membership import N_ART_TRAIN, N_REF_OFFLINE, cnn_trainer, digits_split, mlp_trainer, row  # noqa: E402


def forest_setting(seed: int) -> tuple[Any, dict[str, Any], Any]:
    from sklearn.ensemble import RandomForestClassifier

    from bastion.core.spec import InputSpec
    from bastion.core.training import sklearn_train_fn

    rng = np.random.default_rng(seed)
    n, d = 1400, 8
    y = rng.integers(0, 2, n)
    x = np.clip(0.5 + 0.12 * rng.normal(size=(n, d)) + 0.08 * (2 * y[:, None] - 1), 0, 1).astype(np.float32)
    y = np.where(rng.random(n) < 0.3, 1 - y, y)
    data = {"members": (x[:300], y[:300]), "non_members": (x[300:800], y[300:800]), "reference": (x[800:], y[800:])}
    return sklearn_train_fn(RandomForestClassifier(n_estimators=30, random_state=seed)), data, \
        InputSpec(shape=(d,), lower=0.0, upper=1.0)


def attack_rows(name: str, trainer: Any, data: dict[str, Any], spec: Any, seed: int, split_at: int) -> list[dict]:
    from bastion.attacks.privacy import MembershipSplits, get_membership_attack
    from bastion.attacks.privacy.label_only import noisy_views, robustness
    from bastion.core.run import RunContext
    from bastion.core.training import TrainRequest
    from bastion.defenses.outputs import LabelOnly

    (xm, ym), (xn, yn), (xr, yr) = data["members"], data["non_members"], data["reference"]
    classes = sorted(set(np.concatenate([ym, yn, yr]).tolist()))
    target = trainer(TrainRequest(xm, ym, seed=seed, input_spec=spec, classes=classes))
    api = LabelOnly().wrap(target)
    h = split_at  # the members the membership benchmark gives ART to train on are left out here too
    splits = MembershipSplits(xm[h:], ym[h:], xn[h:], yn[h:], xr[:N_REF_OFFLINE], yr[:N_REF_OFFLINE])
    with target.uncounted():
        acc = (float(np.mean(target.predict(xm) == ym)), float(np.mean(target.predict(xn) == yn)))
    out = []

    def add(label: str, sm: np.ndarray, sn: np.ndarray, t0: float, queries: int) -> None:
        out.append(row(label, sm, sn, time.perf_counter() - t0) | {"model": name, "seed": seed, "queries": queries,
                                                                  "train_accuracy": acc[0], "test_accuracy": acc[1]})
        print(f"[{name} seed {seed}] {label}: AUC {out[-1]['auc']:.3f}, TPR@1% {out[-1]['tpr_at_fpr']['0.01']}, "
              f"TPR@10% {out[-1]['tpr_at_fpr']['0.1']:.3f}", flush=True)

    t0 = time.perf_counter()
    with api.uncounted():
        gm = (api.predict(splits.members_x) == splits.members_y).astype(float)
        gn = (api.predict(splits.non_members_x) == splits.non_members_y).astype(float)
    add("gap attack (label right or wrong)", gm, gn, t0, len(gm) + len(gn))
    t0 = time.perf_counter()
    x = np.concatenate([splits.members_x, splits.non_members_x])
    y = np.concatenate([splits.members_y, splits.non_members_y])
    views = noisy_views(spec, x, 16, [0.05, 0.1, 0.2, 0.4], RunContext(seed=seed).spawn("raw"))
    with api.uncounted():
        raw = robustness(np.stack([api.predict(v) for v in views]), y, 16, 4)
    add("label-robustness, uncalibrated (no reference model)", raw[:len(gm)], raw[len(gm):], t0, len(x) * 65)
    ctx = RunContext(seed=seed)
    for refs in (1, 4):
        t0 = time.perf_counter()
        res = get_membership_attack("label-robustness", reference_models=refs).run(api, splits, ctx=ctx,
                                                                                  trainer=trainer)
        add(f"label-robustness, {refs} reference model(s)", res.member_scores, res.non_member_scores, t0, res.queries)
    for label, attack, params in [("loss-threshold (scores)", "loss-threshold", {}),
                                  ("LiRA offline, 4 shadow models (scores)", "lira",
                                   {"mode": "offline", "shadow_models": 4})]:
        t0 = time.perf_counter()
        res = get_membership_attack(attack, **params).run(target, splits, ctx=ctx, trainer=trainer)
        add(label, res.member_scores, res.non_member_scores, t0, res.queries)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/label-only.json")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--models", default="mlp,cnn,forest")
    args = ap.parse_args()
    from bastion.core.spec import InputSpec

    t0 = time.perf_counter()
    rows: list[dict] = []
    image = InputSpec(shape=(1, 8, 8), lower=0.0, upper=1.0, kind="image")
    for seed in (int(s) for s in args.seeds.split(",")):
        for model in args.models.split(","):
            if model == "forest":
                trainer, data, spec = forest_setting(seed)
                rows += attack_rows("random forest, 30 % labels flipped", trainer, data, spec, seed, 150)
            else:
                trainer = mlp_trainer() if model == "mlp" else cnn_trainer()
                rows += attack_rows("MLP on digits (overfit)" if model == "mlp" else "CNN on digits", trainer,
                                    digits_split(seed), image, seed, N_ART_TRAIN)
    import sklearn
    import torch

    doc = {"rows": rows, "seconds": round(time.perf_counter() - t0, 1),
           "machine": {"platform": platform.platform(), "python": platform.python_version()},
           "versions": {"torch": torch.__version__, "sklearn": sklearn.__version__, "numpy": np.__version__}}
    Path(args.out).write_text(json.dumps(doc, indent=1))
    print(json.dumps({"seconds": doc["seconds"]}))


if __name__ == "__main__":
    main()
