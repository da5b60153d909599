"""Output-hardening defenses (bastion.defenses.outputs): what each answers, the label-only capability,
bad parameters named, and shadow models hardened like the target."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from bastion.attacks.privacy import MembershipSplits, get_membership_attack
from bastion.core.defense import DEFENSES, harden_like
from bastion.core.spec import InputSpec
from bastion.core.targets.sklearn_target import SklearnTarget
from bastion.defenses.outputs import keep_top1, project_simplex, round_simplex
from bastion.errors import UsageError


def probs(n: int = 64, k: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.full(k, 0.4), size=n)


def target() -> SklearnTarget:
    rng = np.random.default_rng(0)
    x = rng.random((60, 4)).astype(np.float32)
    y = (x[:, 0] + 0.3 * rng.random(60) > 0.6).astype(int)
    return SklearnTarget(LogisticRegression(C=10.0).fit(x, y), InputSpec(shape=(4,), lower=0.0, upper=1.0))


@pytest.mark.parametrize("name,params", [("top-k", {"k": 2}), ("label-only", {}), ("rounding", {"decimals": 1}),
                                         ("reverse-sigmoid", {"beta": 2.0, "gamma": 0.5}), ("output-noise", {})])
def test_every_output_defense_answers_probability_rows(name: str, params: dict) -> None:
    p = probs()
    out = DEFENSES[name](**params).postprocess(p, np.random.default_rng(1))
    assert out.shape == p.shape and out.min() >= 0 and np.allclose(out.sum(1), 1)
    if name != "rounding":  # rounding may move a tie; the others keep the label by construction
        assert (out.argmax(1) == p.argmax(1)).all()
    assert not np.allclose(out, p)


def test_top_k_keeps_k_renormalised() -> None:
    p = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    out = DEFENSES["top-k"](k=2).postprocess(p, np.random.default_rng(0))
    np.testing.assert_allclose(out, [[0.625, 0.375, 0.0], [1 / 9, 0.0, 8 / 9]], atol=1e-12)


def test_rounding_gives_multiples_that_sum_to_one() -> None:
    p = np.array([[1 / 3, 1 / 3, 1 / 3], [0.456, 0.444, 0.1]])
    out = round_simplex(p, 1)
    np.testing.assert_allclose(out, [[0.4, 0.3, 0.3], [0.5, 0.4, 0.1]], atol=1e-12)
    assert np.allclose(out * 10, np.round(out * 10)) and np.allclose(out.sum(1), 1)


def test_reverse_sigmoid_follows_lee_et_al_and_keeps_the_label() -> None:
    p = probs(k=3)
    beta, gamma = 0.8, 0.3
    r = beta * (1 / (1 + np.exp(-gamma * np.log(p / (1 - p)))) - 0.5)
    raw = np.clip(p - r, 0, 1)
    raw /= raw.sum(1, keepdims=True)
    out = DEFENSES["reverse-sigmoid"](beta=beta, gamma=gamma).postprocess(p, np.random.default_rng(0))
    assert (out.argmax(1) == p.argmax(1)).all()
    same = raw.argmax(1) == p.argmax(1)
    np.testing.assert_allclose(out[same], raw[same])
    moved = keep_top1(np.array([[0.6, 0.4]]), np.array([[0.3, 0.7]]))
    np.testing.assert_allclose(moved, [[0.7, 0.3]])


def test_noise_is_projected_on_the_simplex_and_seeded() -> None:
    v = np.array([[0.9, 0.4, -0.2], [0.2, 0.2, 0.2]])
    np.testing.assert_allclose(project_simplex(v), [[0.75, 0.25, 0.0], [1 / 3, 1 / 3, 1 / 3]], atol=1e-12)
    d = DEFENSES["output-noise"](scale=0.5, keep_label=False, distribution="gaussian")
    a, b = d.postprocess(probs(), np.random.default_rng(3)), d.postprocess(probs(), np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert (a.argmax(1) != probs().argmax(1)).any()  # without keep_label, noise this large moves labels


def test_label_only_flips_the_capability_and_score_attacks_refuse() -> None:
    t = target()
    defended = DEFENSES["label-only"]().wrap(t)
    assert defended.label_only and defended.capabilities.label_only and not t.label_only
    assert not DEFENSES["top-k"](k=1).wrap(t).label_only
    x = np.random.default_rng(1).random((20, 4)).astype(np.float32)
    assert set(np.unique(defended.predict_proba(x))) <= {0.0, 1.0}
    splits = MembershipSplits(x[:10], np.zeros(10, int), x[10:], np.ones(10, int))
    with pytest.raises(UsageError, match="answers labels only"):
        get_membership_attack("loss-threshold").run(defended, splits)


def test_output_defenses_declare_their_adaptive_path() -> None:
    for name in ("top-k", "label-only", "rounding", "reverse-sigmoid"):
        assert DEFENSES[name]().check_declaration().bpda == "identity"
    assert DEFENSES["output-noise"](eot_samples=4).check_declaration().eot_samples == 4


@pytest.mark.parametrize("name,params,field", [("top-k", {"k": 0}, "k"), ("rounding", {"decimals": 12}, "decimals"),
                                               ("reverse-sigmoid", {"beta": -1}, "beta"),
                                               ("output-noise", {"distribution": "cauchy"}, "distribution")])
def test_bad_parameters_are_refused_naming_the_field(name: str, params: dict, field: str) -> None:
    with pytest.raises(UsageError, match=field) as err:
        DEFENSES[name](**params)
    assert getattr(err.value, "field", None) == field


def test_shadow_answers_are_hardened_like_the_target() -> None:
    t = target()
    logp = np.log(probs(n=12, k=2)).reshape(2, 3, 2, 2)
    assert harden_like(t, logp, np.random.default_rng(0)) is logp  # nothing to harden
    rounded = DEFENSES["rounding"](decimals=1).wrap(DEFENSES["top-k"](k=1).wrap(t))
    out = np.exp(harden_like(rounded, logp, np.random.default_rng(0)))
    assert out.shape == logp.shape and set(np.round(np.unique(out), 6)) <= {0.0, 1.0}


@pytest.mark.parametrize("attack,params", [("lira", {"mode": "offline", "shadow_models": 1, "cache": False}),
                                           ("rmia", {"reference_models": 1, "cache": False})])
def test_shadow_and_reference_models_are_hardened_like_the_target(monkeypatch: pytest.MonkeyPatch, attack: str,
                                                                  params: dict) -> None:
    from sklearn.linear_model import LogisticRegression as LR

    import bastion.attacks.privacy.shadows as shadows
    from bastion.core.training import sklearn_train_fn

    seen: list[object] = []

    def spy(target, logp, rng, draws=1):  # noqa: ANN001, ANN202 - the real function, recording its target
        seen.append(target)
        return harden_like(target, logp, rng, draws=draws)

    monkeypatch.setattr(shadows, "harden_like", spy)
    rng = np.random.default_rng(0)
    x = rng.random((120, 4)).astype(np.float32)
    y = (x[:, 0] > 0.5).astype(int)
    defended = DEFENSES["rounding"](decimals=1).wrap(target())
    splits = MembershipSplits(x[:30], y[:30], x[30:60], y[30:60], reference_x=x[60:], reference_y=y[60:])
    get_membership_attack(attack, **params).run(defended, splits, trainer=sklearn_train_fn(LR(C=10.0)))
    assert seen == [defended]
