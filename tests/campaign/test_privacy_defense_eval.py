"""The privacy-defense-eval check: rows per output defense, intervals, findings, bad parameters."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError
from sklearn.linear_model import LogisticRegression

from bastion.campaign.checks.base import CheckContext
from bastion.campaign.checks.privacy_defense_eval import PrivacyDefenseEvalCheck, PrivacyDefenseEvalParams
from bastion.core.data import Dataset
from bastion.core.spec import InputSpec
from bastion.core.training import TrainRequest, sklearn_train_fn


def records(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = np.clip(0.5 + 0.15 * rng.normal(size=(n, 32)) + 0.03 * (2 * y[:, None] - 1), 0, 1)
    return x.astype(np.float32), y


def run(defenses: list[dict], **extra: object):
    (xm, ym), (xn, yn) = records(40, 0), records(200, 1)
    spec = InputSpec(shape=(32,), lower=0.0, upper=1.0)
    target = sklearn_train_fn(LogisticRegression(C=10.0, max_iter=500))(
        TrainRequest(xm, ym, seed=0, input_spec=spec, classes=[0, 1]))
    params = PrivacyDefenseEvalParams(
        defenses=defenses, membership={"attacks": ["loss-threshold"]},
        extraction={"attacks": [{"attack": "knockoff", "params": {"queries": 80, "rounds": 1, "epochs": 3}}],
                    "pool": {"role": "non_members"}}, **extra)
    ctx = CheckContext(target=target, data=Dataset(xn, yn), y=yn,
                       datasets={"members": Dataset(xm, ym), "non_members": Dataset(xn, yn)})
    return PrivacyDefenseEvalCheck("pde", params).run(ctx)


def test_rows_side_by_side_with_intervals_and_findings() -> None:
    res = run([{"kind": "top-k", "k": 1}, {"kind": "label-only"},
               {"kind": "output-noise", "scale": 0.5, "keep_label": False}])
    rows = {r["defense"]: r for r in res.metrics["rows"]}
    assert list(rows) == ["undefended", "top-k(k=1)", "label-only", "output-noise(scale=0.5, distribution=laplace, "
                                                                    "keep_label=False)"]
    base = rows["undefended"]
    assert base["agreement"] == 1.0 and base["membership"]["loss-threshold"]["auc"] > 0.6
    lo, hi = base["membership"]["loss-threshold"]["auc_ci"]
    assert lo < base["membership"]["loss-threshold"]["auc"] < hi
    # top-1 only: the loss attack sees probabilities of 0 or 1, so it falls to the accuracy gap
    assert rows["top-k(k=1)"]["membership"]["loss-threshold"]["auc"] < base["membership"]["loss-threshold"]["auc"]
    assert rows["top-k(k=1)"]["agreement"] == 1.0
    assert rows["label-only"]["membership"] == {} and "needs scores" in rows["label-only"]["notes"][0]
    assert "knockoff" in rows["label-only"]["extraction"]  # run on the labels
    noisy = rows["output-noise(scale=0.5, distribution=laplace, keep_label=False)"]
    assert noisy["agreement"] < 0.9
    rules = {(f.rule_id, f.metrics["defense"]) for f in res.findings}
    assert ("BASTION-MI-006", noisy["defense"]) in rules
    assert ("BASTION-MI-006", "top-k(k=1)") not in rules
    assert not any(d == "label-only" and r == "BASTION-MI-005" for r, d in rules)  # membership not compared
    assert res.values("fidelity", defense="undefended", attack="knockoff")
    assert [a.type for a in res.artifacts] == ["defense_cost_table"]


def test_a_defense_that_changes_nothing_is_said_to_buy_nothing() -> None:
    res = run([{"kind": "rounding", "decimals": 6}])
    assert [f.rule_id for f in res.findings] == ["BASTION-MI-005"]
    assert res.status == "complete"


@pytest.mark.parametrize("defenses,match", [
    ([{"kind": "top-k", "k": 0}], r"defenses\[0\]: .*k=0"),
    ([{"kind": "rounding"}, {"kind": "jpeg"}], r"defenses\[1\]: 'jpeg' transforms the input"),
    ([{"kind": "nope"}], r"defenses\[0\]: unknown defense 'nope'; output defenses: top-k"),
    ([{"kind": "pgd-at"}], r"training defense"),
])
def test_bad_defenses_are_refused_naming_the_entry(defenses: list[dict], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        PrivacyDefenseEvalParams(defenses=defenses)


def test_a_randomised_defense_is_credited_with_the_averaging_attackers_figures() -> None:
    """Behind output noise the row holds what an attacker who averages 64 answers per record gets (near
    the undefended AUC), the single-query figure beside it, and BASTION-MI-007 says the noise is averaged
    away; the deterministic rounding row is asked once."""
    rng = np.random.default_rng(0)

    def recs(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 2, n)
        return np.clip(0.5 + 0.15 * rng.normal(size=(n, 128)) + 0.03 * (2 * y[:, None] - 1), 0, 1).astype(
            np.float32), y

    (xm, ym), (xn, yn) = recs(40), recs(200)
    target = sklearn_train_fn(LogisticRegression(C=1.0, max_iter=2000))(
        TrainRequest(xm, ym, seed=0, input_spec=InputSpec(shape=(128,), lower=0.0, upper=1.0), classes=[0, 1]))
    params = PrivacyDefenseEvalParams(
        defenses=[{"kind": "output-noise", "scale": 0.2, "eot_samples": 64}, {"kind": "rounding", "decimals": 2}],
        membership={"attacks": ["loss-threshold"]},
        extraction={"attacks": [{"attack": "knockoff", "params": {"queries": 640, "rounds": 1, "epochs": 2}}],
                    "pool": {"role": "non_members"}})
    ctx = CheckContext(target=target, data=Dataset(xn, yn), y=yn,
                       datasets={"members": Dataset(xm, ym), "non_members": Dataset(xn, yn)})
    res = PrivacyDefenseEvalCheck("pde", params).run(ctx)
    rows = {r["defense"]: r for r in res.metrics["rows"]}
    base, rounded = rows["undefended"], rows["rounding(decimals=2)"]
    noisy = rows["output-noise(scale=0.2, distribution=laplace, keep_label=True, eot_samples=64)"]
    mia, once = noisy["membership"]["loss-threshold"], noisy["membership"]["loss-threshold"]["single_query"]
    assert noisy["repeats"] == 64 == mia["repeats"] and once["repeats"] == 1
    assert abs(mia["auc"] - base["membership"]["loss-threshold"]["auc"]) < 0.05 and once["auc"] < mia["auc"] - 0.1
    assert mia["averaged"]["auc"] == mia["auc"]  # the stronger attacker is credited
    ext = noisy["extraction"]["knockoff"]  # the pool holds 160 inputs: 640 queries ask 10 of them 64 times
    assert ext["averaged"]["queries"] == 640 and ext["single_query"]["queries"] == 160
    assert ext["fidelity"] == max(ext["averaged"]["fidelity"], ext["single_query"]["fidelity"])
    assert res.values("single_query_membership_auc", defense=noisy["defense"]) == [once["auc"]]
    assert base["repeats"] == rounded["repeats"] == 1 and "single_query" not in rounded["membership"]["loss-threshold"]
    assert rounded["membership"]["loss-threshold"]["repeats"] == 1 and rounded["extraction"]["knockoff"]["repeats"] == 1
    away = [f for f in res.findings if f.rule_id == "BASTION-MI-007"]
    assert [f.metrics["defense"] for f in away] == [noisy["defense"]] and "64 queries per input" in away[0].title


def test_behind_label_only_a_label_only_attack_measures_what_the_labels_leak() -> None:
    """With ``label-robustness`` among the attacks, the label-only row is measured (by that attack
    alone) instead of left empty; the score attack still runs on the other rows."""
    (xm, ym), (xn, yn), (xr, yr) = records(40, 0), records(200, 1), records(120, 2)
    spec = InputSpec(shape=(32,), lower=0.0, upper=1.0)
    trainer = sklearn_train_fn(LogisticRegression(C=10.0, max_iter=500))
    target = trainer(TrainRequest(xm, ym, seed=0, input_spec=spec, classes=[0, 1]))
    params = PrivacyDefenseEvalParams(
        defenses=[{"kind": "label-only"}], extraction=None,
        membership={"attacks": ["loss-threshold", {"attack": "label-robustness",
                                                   "params": {"reference_models": 1, "copies": 4, "cache": False}}]})
    ctx = CheckContext(target=target, data=Dataset(xn, yn), y=yn, trainer=trainer,
                       datasets={"members": Dataset(xm, ym), "non_members": Dataset(xn, yn),
                                 "reference": Dataset(xr, yr)})
    res = PrivacyDefenseEvalCheck("pde", params).run(ctx)
    rows = {r["defense"]: r for r in res.metrics["rows"]}
    assert set(rows["undefended"]["membership"]) == {"loss-threshold", "label-robustness"}
    assert set(rows["label-only"]["membership"]) == {"label-robustness"}
    assert rows["label-only"]["membership"]["label-robustness"]["auc"] > 0.6  # the labels leak membership
    assert not any("not measured" in n for n in rows["label-only"]["notes"])
