"""RunContext and QueryLedger: results for a fixed seed do not depend on the batch size, attacks keep
no run state on themselves, budgets live in ledgers (never on the target), parameters are validated
with messages that name the parameter, the value and what is allowed."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch

from bastion.attacks import APGD, PGD, HopSkipJump, Square, Transfer, get_attack, robustness_curve
from bastion.attacks.base import EvasionAttack
from bastion.core.run import QueryLedger, RunContext
from bastion.core.spec import InputSpec
from bastion.core.targets.callable_target import CallableTarget
from bastion.core.targets.torch_target import TorchTarget
from bastion.core.threat import ThreatModel
from bastion.errors import QueryBudgetExceeded, UsageError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def small() -> tuple[TorchTarget, CallableTarget, np.ndarray, np.ndarray]:
    from tests.conftest import make_mlp

    white = TorchTarget(make_mlp(6, 3, hidden=12, seed=1), InputSpec(shape=(6,), lower=0.0, upper=1.0))
    black = CallableTarget(lambda z: white.predict_proba(z), [0, 1, 2], white.input_spec, name="mlp-blackbox")
    x = np.random.default_rng(3).random((40, 6)).astype(np.float32)
    with white.uncounted():
        y = white.predict(x)
    return white, black, x, y


BATCH_CASES = [
    ("pgd", lambda bs: PGD(eps=0.15, steps=8, restarts=2, random_start=True, batch_size=bs), "white"),
    ("pgd-l2", lambda bs: PGD(eps=0.4, norm="l2", steps=8, batch_size=bs), "white"),
    ("apgd", lambda bs: APGD(eps=0.15, steps=10, restarts=2, batch_size=bs), "white"),
    ("square", lambda bs: Square(eps=0.15, max_queries=60, batch_size=bs), "black"),
    ("square-l2", lambda bs: Square(eps=0.5, norm="l2", max_queries=60, batch_size=bs), "black"),
    ("hopskipjump", lambda bs: HopSkipJump(max_queries=150, init_evals=10, batch_size=bs), "black"),
]


@pytest.mark.parametrize("name, make, kind", BATCH_CASES, ids=[c[0] for c in BATCH_CASES])
def test_same_adversarial_inputs_for_batch_sizes_7_32_256(small, name: str, make, kind: str) -> None:  # noqa: ANN001
    white, black, x, y = small
    target = white if kind == "white" else black
    runs = [make(bs).run(target, x, y, ctx=RunContext(seed=11)) for bs in (7, 32, 256)]
    assert runs[0].success.any(), "the case must move some inputs for the comparison to mean something"
    for other in runs[1:]:
        np.testing.assert_allclose(other.x_adv, runs[0].x_adv, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(other.success, runs[0].success)
    # and the seed matters: another seed gives other random starts / searches
    changed = make(32).run(target, x, y, ctx=RunContext(seed=12))
    assert not np.allclose(changed.x_adv, runs[0].x_adv)


def test_same_seed_same_result_in_any_order_of_checks(small) -> None:
    white, _, x, y = small
    root = RunContext(seed=5)
    first = PGD(eps=0.15, steps=5).run(white, x, y, ctx=root.spawn("check-b"))
    PGD(eps=0.15, steps=5).run(white, x, y, ctx=RunContext(seed=5).spawn("check-a"))
    again = PGD(eps=0.15, steps=5).run(white, x, y, ctx=RunContext(seed=5).spawn("check-b"))
    np.testing.assert_array_equal(first.x_adv, again.x_adv)


@pytest.mark.parametrize("make", [
    lambda: PGD(eps=0.15, steps=4), lambda: APGD(eps=0.15, steps=5), lambda: Square(eps=0.15, max_queries=20),
    lambda: HopSkipJump(max_queries=40, init_evals=5), lambda: get_attack("auto", eps=0.15, steps=5,
                                                                        blackbox_queries=20),
    lambda: get_attack("min-eps", attack="fgsm", eps_max=0.5, search_steps=3),
])
def test_attacks_keep_no_run_state_on_self(small, make) -> None:  # noqa: ANN001
    white, black, x, y = small
    attack: EvasionAttack = make()
    target = white if attack.needs_gradients else black
    before = copy.deepcopy(vars(attack))
    a = attack.run(target, x, y, ctx=RunContext(seed=1))
    assert vars(attack).keys() == before.keys()
    assert all(repr(vars(attack)[k]) == repr(v) for k, v in before.items())
    b = attack.run(target, x, y, ctx=RunContext(seed=1))  # reusing the instance gives the same result
    np.testing.assert_array_equal(a.x_adv, b.x_adv)
    assert a.queries == b.queries


def test_transfer_surrogate_is_trained_once_per_run_not_per_process(small) -> None:
    import bastion.attacks.evasion.transfer as transfer

    white, black, x, y = small
    assert not hasattr(transfer, "_CACHE")
    attack = Transfer(eps=0.2, steps=3, train_queries=40, augment_rounds=0, epochs=2)
    ctx = RunContext(seed=0)
    curve = robustness_curve(attack, black, x, y, [0.1, 0.2], ctx=ctx)
    assert curve[0].extra["surrogate"]["source"] == "trained"
    assert curve[1].extra["surrogate"].get("reused") is True  # same run: the surrogate is reused
    fresh = attack.run(black, x, y, ctx=RunContext(seed=0))  # another run trains its own
    assert not fresh.extra["surrogate"].get("reused")


# ---------------------------------------------------------------------------------- the ledger
def test_ledger_counts_limits_and_sub_ledgers_charge_their_parent() -> None:
    root = QueryLedger(100, label="scan")
    sub = root.limit(30, "check's")
    sub.charge(20)
    assert (sub.spent, root.spent, sub.remaining, root.remaining) == (20, 20, 10, 80)
    with pytest.raises(QueryBudgetExceeded, match="check's budget of 30 queries is spent"):
        sub.charge(11)
    assert (sub.spent, root.spent) == (20, 20)  # a refused charge charges nothing
    other = root.limit(None)
    other.charge(80)
    with pytest.raises(QueryBudgetExceeded, match="scan budget of 100"):
        sub.charge(1)  # the parent is spent: the sub-ledger's own room does not help
    assert root.spent == 100 and sub.remaining == 0
    with pytest.raises(UsageError, match="positive integer"):
        QueryLedger(0)


def test_ledger_cannot_be_pickled_into_a_running_process() -> None:
    """Shared memory reaches workers only when they start (the executor hands it over)."""
    with pytest.raises(RuntimeError):
        pickle.dumps(QueryLedger(5))


def test_threat_budget_lives_in_the_ledger_never_on_the_target(small) -> None:
    white, black, x, y = small
    seen: list[int | None] = []
    probe = CallableTarget(lambda z: (seen.append(probe.query_budget), black.predict_proba(z))[1], [0, 1, 2],
                           black.input_spec)
    res = Square(eps=0.1, max_queries=50).run(probe, x, y, ThreatModel(eps=0.1, query_budget=200))
    assert set(seen) == {None}  # nothing was written onto the target while it ran
    assert not res.complete and "threat model's budget of 200 queries" in res.reason
    assert res.queries <= 200 and res.extra["query_log"]["budget"] == 200


def test_run_context_ledger_is_one_budget_for_a_whole_curve(small) -> None:
    white, black, x, y = small
    ctx = RunContext(ledger=QueryLedger(150))
    curve = robustness_curve(Square(max_queries=30), black, x, y, [0.05, 0.1, 0.2], ctx=ctx)
    assert ctx.ledger.spent <= 150 and sum(r.queries for r in curve) == ctx.ledger.spent
    assert not curve[-1].complete


def test_white_box_attack_refused_under_a_black_box_threat(small) -> None:
    white, _, x, y = small
    with pytest.raises(UsageError, match="needs gradients.*knowledge is 'black'"):
        PGD().run(white, x, y, ThreatModel(knowledge="black"))


def test_cancelled_run_keeps_finished_batches_and_says_so(small) -> None:
    white, _, x, y = small
    ctx = RunContext()
    calls = []

    def progress(n: int) -> None:
        calls.append(n)
        ctx.cancel()  # cancel after the first batch

    res = PGD(eps=0.2, steps=3, batch_size=10).run(white, x, y, ctx=ctx, progress=progress)
    assert res.interrupted and not res.complete and calls == [10]
    assert np.array_equal(res.x_adv[10:], x[10:])


# ------------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("attack, params, match", [
    ("pgd", {"step_size": float("nan")}, r"attack 'pgd': step_size=nan is not allowed"),
    ("pgd", {"restarts": 1_000_000_000}, r"restarts=1000000000 is not allowed: input should be less than or"),
    ("pgd", {"steps": 0}, r"steps=0 is not allowed: input should be greater than or equal to 1"),
    ("pgd", {"schedule": "linear"}, r"schedule='linear' is not allowed: input should be 'constant' or 'cosine'"),
    ("pgd", {"eps": "3e-2x"}, r"eps='3e-2x' is not allowed: must be a number"),
    ("apgd", {"rho": 0}, r"rho=0 is not allowed"),
    ("square", {"max_queries": 0}, r"max_queries=0 is not allowed"),
    ("hopskipjump", {"init_evals": 50, "max_evals": 10}, r"max_evals=10 is not allowed: need init_evals <= max_evals"),
    ("cw", {"norm": "linf"}, r"norm='linf' is not allowed"),
    ("pgd", {"stepz": 3}, r"unknown parameter 'stepz'"),
])
def test_bad_parameters_name_the_parameter_the_value_and_what_is_allowed(attack: str, params: dict,
                                                                       match: str) -> None:
    with pytest.raises(UsageError, match=match) as info:
        get_attack(attack, **params)
    assert info.value.field in params  # type: ignore[attr-defined]


def test_scalar_string_eps_from_yaml_is_a_number() -> None:
    assert PGD(eps="3e-2").eps == 0.03


def test_white_box_attacks_take_gradients_through_the_adaptive_view(small) -> None:
    """The one place the gradient target is chosen: ``target.adaptive_view()``; predictions stay the target's."""
    white, black, x, y = small
    calls: list[int] = []

    class Spy(TorchTarget):
        def logits(self, z):  # noqa: ANN001, ANN201
            calls.append(len(z))
            return super().logits(z)

    spy = Spy(white.module, white.input_spec)

    class Viewed(CallableTarget):  # a black box to predict with, whose adaptive view has gradients
        def adaptive_view(self) -> TorchTarget:
            return spy

    target = Viewed(lambda z: black.predict_proba(z), [0, 1, 2], black.input_spec)
    res = PGD(eps=0.2, steps=3).run(target, x, y, ctx=RunContext())
    assert calls and res.success.any()
    assert res.queries >= sum(calls)  # the view's queries are charged to the run's ledger too


def test_v1_subclasses_keep_working(small) -> None:
    """A v1 plug-in: parameters in its own __init__, _attack_batch without the run."""
    white, black, x, y = small

    class Shift(EvasionAttack):
        name = "v1-shift"
        needs_gradients = False

        def __init__(self, *, eps: float = 0.1, strength: float = 1.0, **kw) -> None:  # noqa: ANN003
            super().__init__(eps=eps, **kw)
            self.strength = strength

        def _attack_batch(self, target, x, goal, rows):  # noqa: ANN001, ANN202
            return np.clip(x + self.eps * self.strength, 0.0, 1.0).astype(np.float32)

    attack = Shift(eps=0.05, strength=0.5)
    assert attack.clone(eps=0.2).get_params()["strength"] == 0.5
    res = attack.run(black, x, y, ThreatModel(eps=0.2, knowledge="black"))
    moved = res.x_adv[res.clean_pred == y] - x[res.clean_pred == y]
    assert abs(moved.max() - 0.1) < 1e-6 and moved.min() >= 0  # eps from the threat, strength kept


def test_policy_scalar_eps_written_as_3e_2(tmp_path) -> None:  # noqa: ANN001
    """YAML 1.1 reads `eps: 3e-2` as the string '3e-2': it is a number all the same (issue 7)."""
    from bastion.campaign.policy import load_policy

    path = tmp_path / "p.yaml"
    path.write_text("name: p\ntarget: {model: 'demo:digits-cnn'}\ndata: {source: 'demo:digits'}\n"
                    "checks:\n  - {name: pgd, kind: evasion, attack: pgd, eps: 3e-2}\n")
    check = load_policy(path).checks[0]
    assert check.params.eps == [0.03] and check.attack.eps == 0.03  # type: ignore[attr-defined]


def test_every_attack_parameter_is_documented() -> None:
    """One parameter model per attack, shared with the docs: every field appears in the attack pages."""
    from pathlib import Path

    from bastion.attacks.base import ATTACKS

    root = Path(__file__).resolve().parents[2] / "docs"
    docs = "".join((root / p).read_text() for p in ("api.md", "attacks-whitebox.md", "attacks-blackbox.md"))
    builtin = [ATTACKS[n] for n in ATTACKS if ATTACKS[n].__module__.startswith("bastion.")]
    missing = {cls.name: [f for f in cls.Params.model_fields if f"`{f}`" not in docs and f"{f}=" not in docs]
               for cls in builtin}
    assert not {k: v for k, v in missing.items() if v}
