"""bastion's attribute-inference (fredrikson, learned) and model-inversion (mi-face,
mi-face-scores) attacks: a gain over the no-query baseline where the model leaks, none where it
cannot, and reconstructions of the demo CNN's classes that are identified far above chance."""

from __future__ import annotations

import numpy as np
import pytest

from bastion.attacks.privacy import AttributeData, get_attribute_attack, get_inversion_attack
from bastion.attacks.privacy.inference import paired_gain_interval
from bastion.attacks.privacy.inversion import total_variation, total_variation_grad
from bastion.core.spec import InputSpec
from bastion.core.targets.callable_target import CallableTarget
from bastion.core.targets.sklearn_target import SklearnTarget
from bastion.errors import TargetError, UsageError

SPEC = InputSpec(shape=(4,), lower=0.0, upper=3.0)


def _table(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Column 0 (values 0, 1, 2) is sensitive and independent of everything else; the label is
    noise, so a model can only be right on its training records by memorising them."""
    rng = np.random.default_rng(seed)
    x = np.c_[rng.integers(0, 3, n), rng.random((n, 3))].astype(np.float32)
    return x, rng.integers(0, 2, n)


@pytest.fixture(scope="module")
def memorising():  # noqa: ANN201 - (target, x, y) with x[:200] its training records
    from sklearn.ensemble import RandomForestClassifier

    x, y = _table()
    return SklearnTarget(RandomForestClassifier(n_estimators=50, random_state=0).fit(x[:200], y[:200]), SPEC), x, y


@pytest.fixture(scope="module")
def blind():  # noqa: ANN201 - a model of the other columns only: its answers cannot reveal column 0
    from sklearn.ensemble import RandomForestClassifier

    x, y = _table()
    model = RandomForestClassifier(n_estimators=50, random_state=0).fit(x[:200, 1:], y[:200])
    return CallableTarget(lambda v: model.predict_proba(v[:, 1:]), [0, 1], SPEC), x, y


@pytest.mark.parametrize("attack", ["fredrikson", "learned"])
def test_attribute_gain_over_the_imputation_baseline_where_the_model_memorised(memorising, attack: str) -> None:
    target, x, y = memorising
    # victims: 100 training records; the attacker knows the attribute of 100 others (ART's setting)
    res = get_attribute_attack(attack).run(target, AttributeData(x[:100], y[:100], 0, known_x=x[100:200],
                                                                  known_y=y[100:200]))
    assert res.baseline_kind == "imputation" and res.metric == "accuracy"
    assert res.value == pytest.approx(np.mean(res.inferred == x[:100, 0]))
    assert res.advantage == pytest.approx(res.value - res.baseline)
    assert res.ci_low > 0.05 and res.ci_low <= res.advantage <= res.ci_high and res.p_value < 0.01
    assert res.queries == (100 if attack == "fredrikson" else 200) * 3  # one per record and candidate


@pytest.mark.parametrize("attack", ["fredrikson", "learned"])
def test_no_gain_where_the_model_never_sees_the_attribute(blind, attack: str) -> None:
    target, x, y = blind
    res = get_attribute_attack(attack).run(target, AttributeData(x[:100], y[:100], 0, known_x=x[100:200],
                                                                  known_y=y[100:200]))
    assert res.ci_low <= 0.0 <= res.ci_high and abs(res.advantage) < 0.1 and res.p_value > 0.05


def test_a_numeric_attribute_is_binned_into_quantiles(memorising) -> None:
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(1)
    x = rng.random((300, 4)).astype(np.float32)
    y = rng.integers(0, 2, 300)
    target = SklearnTarget(RandomForestClassifier(n_estimators=50, random_state=0).fit(x[:200], y[:200]),
                           InputSpec(shape=(4,)))
    res = get_attribute_attack("fredrikson").run(target, AttributeData(x[:100], y[:100], 2, kind="continuous",
                                                                        bins=4, known_x=x[200:], known_y=y[200:]))
    assert len(res.candidates) == 4 and set(np.unique(res.truth)) <= set(res.candidates)
    # each record's truth is its bin's value: bins are quantiles of the known values
    edges = np.sort(res.candidates)
    assert np.all(np.abs(res.truth - x[:100, 2]) <= np.max(np.diff(np.r_[0.0, edges, 1.0])))
    assert res.advantage > 0 and res.ci_low > 0


def test_learned_attack_needs_known_records_and_the_interval_is_exact_when_nothing_differs(memorising) -> None:
    target, x, y = memorising
    with pytest.raises(UsageError, match="background records whose attribute is known"):
        get_attribute_attack("learned").run(target, AttributeData(x[:50], y[:50], 0))
    same = np.array([True, False, True, True])
    assert paired_gain_interval(same, same, np.random.default_rng(0)) == (0.0, 0.0)
    lo, hi = paired_gain_interval(np.ones(200, bool), np.zeros(200, bool), np.random.default_rng(0))
    assert lo == hi == 1.0


def test_mi_face_reconstructs_every_digit_of_the_demo_cnn(digits_target, digits_data) -> None:
    res = get_inversion_attack("mi-face", steps=30).run(digits_target, digits_data)
    lo, hi = 0.0, 1.0
    assert res.reconstructions.shape == (10, 1, 8, 8)
    assert res.reconstructions.min() >= lo and res.reconstructions.max() <= hi
    assert res.classes == list(range(10)) and res.class_means.shape == (10, 1, 8, 8)
    assert res.identified >= 0.8 and res.p_value < 1e-4  # chance: 1 in 10
    assert res.confidence.min() > 0.9
    assert res.queries == 10 * 31  # one query per class and step (30 steps, then the last point scored)


def test_mi_face_from_scores_only(digits_target, digits_data) -> None:
    res = get_inversion_attack("mi-face-scores", steps=40, samples=10).run(digits_target, digits_data)
    assert res.identified >= 0.6 and res.p_value < 1e-3
    assert res.queries == 10 * (40 * 11 + 1)  # samples + 1 per class and step, one to score the last (no probes)


def test_inversion_of_an_untrained_model_is_at_chance(digits_data) -> None:
    import torch

    from bastion.core.demo import digits_cnn_module
    from bastion.core.targets.torch_target import TorchTarget

    torch.manual_seed(0)
    untrained = TorchTarget(digits_cnn_module(), InputSpec(shape=(1, 8, 8), kind="image"), classes=list(range(10)))
    res = get_inversion_attack("mi-face", steps=30).run(untrained, digits_data)
    assert res.identified <= 0.3 and res.p_value > 0.05


def test_inversion_refuses_what_it_cannot_attack(digits_data) -> None:
    spec = InputSpec(shape=(1, 8, 8), kind="image")
    black = CallableTarget(lambda v: np.full((len(v), 10), 0.1), list(range(10)), spec)
    with pytest.raises(TargetError, match="needs gradients"):
        get_inversion_attack("mi-face").run(black, digits_data)
    unbounded = CallableTarget(lambda v: np.full((len(v), 10), 0.1), list(range(10)),
                               InputSpec(shape=(1, 8, 8), lower=-np.inf, upper=np.inf))
    with pytest.raises(UsageError, match="infinite"):
        get_inversion_attack("mi-face-scores").run(unbounded, digits_data)
    labels_only = CallableTarget(lambda v: np.eye(10)[np.zeros(len(v), int)], list(range(10)), spec)
    labels_only.label_only = True
    with pytest.raises(UsageError, match="needs the model's scores, but the target .* answers labels only"):
        get_inversion_attack("mi-face-scores").run(labels_only, digits_data)


def test_total_variation_gradient_matches_finite_differences() -> None:
    x = np.random.default_rng(0).random((2, 1, 5, 6))
    g = total_variation_grad(x)
    h = 1e-6
    for idx in [(0, 0, 0, 0), (1, 0, 2, 3), (0, 0, 4, 5)]:
        e = np.zeros_like(x)
        e[idx] = h
        num = (total_variation(x + e) - total_variation(x - e))[idx[0]] / (2 * h)
        assert g[idx] == pytest.approx(num, rel=1e-4, abs=1e-8)


def test_mi_face_takes_gradients_in_expectation_on_a_randomised_target(digits_target, digits_data) -> None:
    import torch

    from bastion.core.targets.torch_target import TorchTarget

    class Noisy(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x + 0.3 * torch.randn_like(x))

    noisy = TorchTarget(Noisy(digits_target.module), InputSpec(shape=(1, 8, 8), kind="image"), classes=list(range(10)))
    noisy.randomized = True
    first = get_inversion_attack("mi-face", steps=10).run(noisy, digits_data)
    assert first.queries == 10 * 11 * 8  # 8 draws per class and step
    again = get_inversion_attack("mi-face", steps=10).run(noisy, digits_data)
    np.testing.assert_array_equal(first.reconstructions, again.reconstructions)  # draws seeded from the run
    one = get_inversion_attack("mi-face", steps=10, eot_iter=1).run(noisy, digits_data)
    assert one.queries == 10 * 11
