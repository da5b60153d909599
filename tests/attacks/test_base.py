"""The Attack contract: registry, AttackResult and its metrics, labels, query budgets, interrupts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bastion.attacks import FGSM, PGD, Attack, AttackResult, available_attacks, get_attack, register_attack
from bastion.attacks import robustness_curve
from bastion.attacks.base import ATTACKS
from bastion.core.metrics import attack_metrics, perturbation_norms
from bastion.core.spec import InputSpec
from bastion.core.targets.torch_target import TorchTarget
from bastion.core.threat import ThreatModel
from bastion.errors import DataError, QueryBudgetExceeded, UsageError

torch.set_num_threads(1)


@pytest.fixture
def small(mlp_factory, rng: np.random.Generator) -> tuple[TorchTarget, np.ndarray, np.ndarray]:
    target = TorchTarget(mlp_factory(5, 3, seed=4), InputSpec(shape=(5,)))
    x = rng.random((40, 5)).astype(np.float32)
    y = target.predict(x)
    target.reset_queries()
    return target, x, y


# ------------------------------------------------------------------------------------- registry
def test_builtin_attacks_are_registered_by_name() -> None:
    attacks = available_attacks()
    assert attacks["pgd"] is PGD and attacks["fgsm"] is FGSM
    assert isinstance(get_attack("fgsm", eps=0.3), FGSM)


def test_unknown_attack_name_lists_the_available_ones() -> None:
    with pytest.raises(UsageError, match="unknown attack 'nope'.*fgsm.*pgd"):
        get_attack("nope")


def test_register_attack_needs_a_name_and_makes_the_attack_reachable() -> None:
    class Nameless(Attack):
        def _attack_batch(self, target, x, goal, rows, run):  # noqa: ANN001, ANN202
            return x

    with pytest.raises(ValueError):
        register_attack(Nameless)

    @register_attack
    class Identity(Attack):
        name = "identity-test"
        needs_gradients = False

        def _attack_batch(self, target, x, goal, rows, run):  # noqa: ANN001, ANN202
            return x

    try:
        assert get_attack("identity-test", eps=0.0).name == "identity-test"
    finally:
        ATTACKS.remove("identity-test")


def test_params_clone_and_repr() -> None:
    pgd = PGD(eps=0.2, steps=7, restarts=2, schedule="cosine")
    params = pgd.get_params()
    assert params["eps"] == 0.2 and params["steps"] == 7 and params["restarts"] == 2 and params["seed"] == 0
    other = pgd.clone(eps=0.5)
    assert other.eps == 0.5 and other.steps == 7 and other.schedule == "cosine" and pgd.eps == 0.2
    assert repr(pgd).startswith("PGD(") and "steps=7" in repr(pgd)


# -------------------------------------------------------------------------------------- results
def test_attack_result_fields_and_metrics(small) -> None:
    target, x, y = small
    res = PGD(eps=0.3, steps=10).run(target, x, y)
    assert isinstance(res, AttackResult)
    assert res.attack == "pgd" and res.eps == 0.3 and res.norm == "linf" and res.complete and res.reason is None
    assert res.x_adv.shape == x.shape and res.success.shape == (len(x),)
    assert set(res.norms) == {"l0", "l2", "linf"}
    assert res.queries > 0 and res.seconds > 0
    m = res.metrics()
    assert m["n"] == len(x) and m["clean_accuracy"] == 1.0
    assert m["robust_accuracy"] == pytest.approx(1 - res.success.mean())
    assert m["success_rate"] == pytest.approx(res.success.mean())
    assert m["n_fooled"] == int(res.success.sum())
    assert m["queries"] == res.queries and m["complete"] is True
    if res.success.any():
        assert m["norms"]["linf"]["max"] <= 0.3 + 1e-6
        np.testing.assert_allclose(m["adv_confidence_mean"], res.adv_confidence[res.success].mean())


def test_attack_metrics_known_values() -> None:
    y = np.array([0, 1, 2, 0])
    clean = np.array([0, 1, 1, 0])  # 3 of 4 right
    adv = np.array([1, 1, 1, 2])  # samples 0 and 3 fooled; sample 2 was already wrong
    success = adv != y
    norms = {"linf": np.array([0.1, 0.0, 0.5, 0.3])}
    m = attack_metrics(y=y, clean_pred=clean, adv_pred=adv, success=success, norms=norms,
                       adv_confidence=np.array([0.6, 0.9, 0.5, 0.8]), queries=12, seconds=2.0)
    assert m["clean_accuracy"] == 0.75 and m["robust_accuracy"] == 0.25
    assert m["n_attacked"] == 3 and m["n_fooled"] == 2 and m["success_rate"] == pytest.approx(2 / 3)
    assert m["norms"]["linf"] == {"median": pytest.approx(0.2), "mean": pytest.approx(0.2), "max": 0.3}
    assert m["adv_confidence_mean"] == pytest.approx(0.7)
    assert m["queries_per_sample"] == 3.0


def test_perturbation_norms_known_values() -> None:
    x = np.zeros((2, 4))
    x_adv = np.array([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, -2.0]])
    n = perturbation_norms(x, x_adv)
    np.testing.assert_allclose(n["l0"], [2, 1])
    np.testing.assert_allclose(n["l2"], [5, 2])
    np.testing.assert_allclose(n["linf"], [4, 2])
    scaled = perturbation_norms(x, x_adv, scale=np.array([1.0, 2.0, 1.0, 4.0]))
    np.testing.assert_allclose(scaled["linf"], [3, 0.5])


# --------------------------------------------------------------------------------------- labels
@pytest.mark.parametrize("labels, match", [
    (np.arange(39), "40 inputs but 39 labels"),
    (np.full(40, 3), r"\[0, 2\]"),
    (np.full(40, -1), r"\[0, 2\]"),
    (np.full(40, 0.5), "class indices"),
    (np.array(["a"] * 40), "class indices"),
])
def test_bad_labels_are_data_errors(small, labels: np.ndarray, match: str) -> None:
    target, x, _ = small
    with pytest.raises(DataError, match=match):
        FGSM().run(target, x, labels)


def test_integral_float_labels_are_accepted(small) -> None:
    target, x, y = small
    res = FGSM(eps=0.1).run(target, x, y.astype(np.float64))
    assert res.y.dtype == np.int64


def test_inputs_outside_the_bounds_are_refused(small) -> None:
    target, x, y = small
    with pytest.raises(DataError, match="bounds"):
        FGSM().run(target, x + 2, y)


# ------------------------------------------------------------------------- budgets and interrupts
def test_threat_query_budget_stops_the_attack_and_keeps_finished_batches(small) -> None:
    target, x, y = small
    # FGSM costs exactly one query per attacked input: 40 for the clean predictions, then 10 per batch
    res = FGSM(eps=0.5, batch_size=10).run(target, x, y, ThreatModel(eps=0.5, query_budget=65))
    assert not res.complete and "budget of 65 queries" in res.reason
    assert res.queries == 60
    moved = np.abs(res.x_adv - x).reshape(len(x), -1).max(axis=1) > 0
    assert moved[:20].all() and not moved[20:].any()
    assert res.metrics()["complete"] is False and "budget" in res.metrics()["reason"]
    assert target.query_budget is None  # the threat's budget does not stick to the target


def test_threat_budget_cannot_lift_the_targets_own_hard_budget(small) -> None:
    target, x, y = small
    target.query_budget = 50
    res = FGSM(eps=0.5, batch_size=10).run(target, x, y, ThreatModel(eps=0.5, query_budget=10_000))
    assert not res.complete
    assert target.queries <= 50
    assert target.query_budget == 50


def test_target_budget_raises_outside_attacks(small) -> None:
    target, x, _ = small
    target.query_budget = 30
    target.predict_proba(x[:30])
    with pytest.raises(QueryBudgetExceeded, match="budget of 30"):
        target.predict_proba(x[:1])
    with target.uncounted():  # bastion's own measurements never count
        target.predict_proba(x)
    assert target.queries == 30


def test_budget_exhausted_before_any_attack_still_reports(small) -> None:
    target, x, y = small
    res = PGD(eps=0.3).run(target, x, y, ThreatModel(eps=0.3, query_budget=5))
    assert not res.complete
    np.testing.assert_array_equal(res.x_adv, x)
    np.testing.assert_array_equal(res.clean_pred, y)
    assert res.robust_accuracy == 1.0


def test_interrupt_keeps_finished_batches(small) -> None:
    class InterruptedFGSM(FGSM):
        name = "fgsm"  # behaves like FGSM until the third batch

        def _attack_batch(self, target, x, goal, rows, run):  # noqa: ANN001, ANN202
            if rows[0] >= 20:
                raise KeyboardInterrupt
            return super()._attack_batch(target, x, goal, rows, run)

    target, x, y = small
    res = InterruptedFGSM(eps=0.5, batch_size=10).run(target, x, y)
    assert not res.complete and res.reason == "interrupted"
    moved = np.abs(res.x_adv - x).max(axis=1) > 0
    assert moved[:20].all() and not moved[20:].any()


def test_robustness_curve_stops_when_the_budget_runs_out(small) -> None:
    target, x, y = small
    target.query_budget = 40 + 40 + 40 + 5  # clean + one FGSM pass, twice, then a little
    curve = robustness_curve(FGSM(), target, x, y, [0.05, 0.1, 0.2, 0.4])
    assert curve[-1].complete is False
    assert all(r.complete for r in curve[:-1])
    assert len(curve) < 4


def test_robustness_curve_reuses_points_already_fooled(small) -> None:
    target, x, y = small
    curve = robustness_curve(PGD(steps=10), target, x, y, [0.5, 0.0, 0.25])
    assert [r.eps for r in curve] == [0.0, 0.25, 0.5]
    assert curve[0].robust_accuracy == 1.0  # eps 0 changes nothing
    fooled_small = curve[1].success
    assert curve[2].success[fooled_small].all()  # kept at larger eps
    np.testing.assert_array_equal(curve[2].x_adv[fooled_small], curve[1].x_adv[fooled_small])
