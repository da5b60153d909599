"""FGSM and PGD: known answers on linear models, and invariants on random models (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.attacks import FGSM, PGD, get_attack, robustness_curve
from bastion.core.spec import FeatureSpec, InputSpec
from bastion.core.targets.torch_target import TorchTarget
from bastion.core.threat import ThreatModel
from bastion.errors import TargetError, UsageError

torch.set_num_threads(1)
TOL = 1e-5


# --------------------------------------------------------------------------------------- helpers
def linear_binary(w: np.ndarray, b: float) -> torch.nn.Linear:
    """Two logits whose difference is ``w @ x + b``: class 0 when positive, class 1 when negative."""
    lin = torch.nn.Linear(len(w), 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(np.stack([w / 2, -w / 2]), dtype=torch.float32))
        lin.bias.copy_(torch.tensor([b / 2, -b / 2], dtype=torch.float32))
    return lin


def assert_in_ball(x: np.ndarray, x_adv: np.ndarray, eps: float, norm: str, scale: np.ndarray) -> np.ndarray:
    """Every ``|x_adv - x| / scale`` within ε, allowing for float32 rounding of ``x_adv`` (two ulps of
    the input value, in ε units); returns the per-sample norms."""
    delta = ((x_adv.astype(np.float64) - x) / scale).reshape(len(x), -1)
    slack = (2 * np.spacing(np.abs(x).astype(np.float32)).astype(np.float64) / scale).reshape(len(x), -1)
    if norm == "linf":
        size, allowed = np.abs(delta).max(axis=1), eps + slack.max(axis=1)
    else:
        size, allowed = np.linalg.norm(delta, axis=1), eps * (1 + 1e-6) + np.linalg.norm(slack, axis=1)
    assert (size <= allowed + 1e-7).all(), (size - allowed).max()
    return size


def margin_sign(y: np.ndarray) -> np.ndarray:
    """+1 for class 0 (the attacker lowers w·x), -1 for class 1 (the attacker raises it)."""
    return np.where(y == 0, 1.0, -1.0)[:, None]


# ------------------------------------------------------------------------------ FGSM known answers
def test_fgsm_linf_linear_moves_each_feature_by_eps_against_the_weight(rng: np.random.Generator) -> None:
    w = rng.normal(size=6)
    w[np.abs(w) < 0.2] += 0.5  # no weight near zero
    target = TorchTarget(linear_binary(w, -w.sum() / 2), InputSpec(shape=(6,), lower=0.0, upper=1.0))
    x = rng.random((50, 6)).astype(np.float32)
    y = target.predict(x)
    assert set(y) == {0, 1}
    eps = 0.15
    res = FGSM(eps=eps).run(target, x, y)
    # the CE gradient of a binary linear model is p_other * (±w): the step is -eps*sign(w) for
    # class 0 and +eps*sign(w) for class 1, then clipped to [0, 1]
    expected = np.clip(x - eps * margin_sign(y) * np.sign(w), 0.0, 1.0)
    np.testing.assert_allclose(res.x_adv, expected, atol=TOL)
    interior = (expected > 0) & (expected < 1)
    np.testing.assert_allclose(np.abs(res.x_adv - x)[interior], eps, atol=TOL)
    assert (res.x_adv == 0).any() or (res.x_adv == 1).any()  # some clipping really happened


def test_fgsm_on_sklearn_logistic_regression_twin_moves_by_eps_times_feature_scale(
        rng: np.random.Generator) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from bastion.core.loader import load_data, load_target
    from bastion.core.targets.sklearn_target import DifferentiableSklearnTarget

    x = (rng.normal(size=(200, 5)) * [1.0, 10.0, 0.1, 3.0, 50.0] + [0, 5, 1, -2, 100]).astype(np.float32)
    y = (x[:, 0] + (x[:, 1] - 5) / 10 - (x[:, 2] - 1) * 10 > 0).astype(int)
    est = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)
    data = load_data((x, y))
    target = load_target(est, data=data)
    assert isinstance(target, DifferentiableSklearnTarget)
    w = est[-1].coef_[0] / est[0].scale_  # d(logit of class 1)/dx
    scale = target.input_spec.scale_array()
    np.testing.assert_allclose(scale, x.std(axis=0), rtol=1e-4)  # ε is in units of each feature's std
    lo, hi = target.input_spec.bounds_arrays()
    yp = target.predict(x)
    eps = 0.3
    res = FGSM(eps=eps).run(target, x, yp)
    expected = np.clip(x + eps * scale * np.sign(w) * margin_sign(yp), lo, hi)
    np.testing.assert_allclose(res.x_adv, expected, rtol=1e-5, atol=1e-4)
    inside = (expected > lo) & (expected < hi)
    np.testing.assert_allclose((np.abs(res.x_adv - x) / scale)[inside], eps, rtol=1e-4)


def test_fgsm_l2_moves_by_eps_along_the_normalised_weight(rng: np.random.Generator) -> None:
    w = rng.normal(size=8)
    target = TorchTarget(linear_binary(w, 0.1), InputSpec(shape=(8,), lower=-10.0, upper=10.0))
    x = rng.normal(size=(30, 8)).astype(np.float32)
    y = target.predict(x)
    eps = 0.5
    res = FGSM(eps=eps, norm="l2").run(target, x, y)
    expected = x - eps * margin_sign(y) * w / np.linalg.norm(w)
    np.testing.assert_allclose(res.x_adv, expected, atol=1e-5)
    np.testing.assert_allclose(res.norms["l2"], eps, rtol=1e-5)


def test_fgsm_leaves_misclassified_inputs_unchanged(rng: np.random.Generator) -> None:
    w = rng.normal(size=4)
    target = TorchTarget(linear_binary(w, 0.0), InputSpec(shape=(4,)))
    x = rng.random((40, 4)).astype(np.float32)
    y = 1 - target.predict(x)  # every label wrong
    res = FGSM(eps=0.2).run(target, x, y)
    np.testing.assert_array_equal(res.x_adv, x)
    assert res.robust_accuracy == 0.0 and res.clean_accuracy == 0.0


# ------------------------------------------------------------------------------- PGD known answers
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_robust_accuracy_on_linear_binary_model_matches_the_analytic_optimum(
        norm: str, rng: np.random.Generator) -> None:
    """For f(x) = w·x + b the worst case over the ball lowers |f| by eps*||w||_1 (L∞) or
    eps*||w||_2 (L2): a point is robust exactly when its margin is larger than that."""
    d = 10
    w = rng.normal(size=d)
    target = TorchTarget(linear_binary(w, 0.0), InputSpec(shape=(d,), lower=-100.0, upper=100.0))
    x = rng.normal(size=(400, d)).astype(np.float32)
    y = target.predict(x)
    eps = 0.3 if norm == "linf" else 1.0
    dual = np.abs(w).sum() if norm == "linf" else np.linalg.norm(w)
    margin = np.abs(x.astype(np.float64) @ w)
    clear = np.abs(margin - eps * dual) > 0.05 * eps * dual  # leave out near-ties
    x, y, margin = x[clear], y[clear], margin[clear]
    analytic_robust = margin > eps * dual
    assert 0.2 < analytic_robust.mean() < 0.8  # the test is informative both ways
    res = PGD(eps=eps, norm=norm, steps=40).run(target, x, y)
    np.testing.assert_array_equal(res.adv_pred == y, analytic_robust)
    assert res.success.sum() == (~analytic_robust).sum()


def test_pgd_linf_on_linear_model_ends_at_the_optimal_corner(rng: np.random.Generator) -> None:
    """Points whose margin is just below eps*||w||_1 are fooled only near the corner
    x - eps*sign(w) (class 0): PGD must find that corner."""
    d = 6
    w = rng.choice([-1.0, 1.0], size=d) * rng.uniform(0.5, 1.5, size=d)
    eps = 0.2
    dual = np.abs(w).sum()
    x = rng.normal(size=(40, d))
    # move every point so that its margin is 0.98 * eps * ||w||_1 on the class-0 side
    x = x + ((0.98 * eps * dual - x @ w) / (w @ w))[:, None] * w
    x = x.astype(np.float32)
    target = TorchTarget(linear_binary(w, 0.0), InputSpec(shape=(d,), lower=-100.0, upper=100.0))
    y = target.predict(x)
    assert (y == 0).all()
    res = PGD(eps=eps, steps=30).run(target, x, y)
    assert res.success.all()
    corner = x - eps * np.sign(w)
    # any fooling point lies within 0.02*eps*||w||_1 / min|w| of the corner in every coordinate
    bound = 0.02 * eps * dual / np.abs(w).min() + 1e-5
    assert np.abs(res.x_adv - corner).max() <= bound


def test_pgd_without_random_start_is_deterministic_and_beats_fgsm_on_a_cnn(
        cnn_factory, rng: np.random.Generator) -> None:
    target = TorchTarget(cnn_factory(1, 6, 4, seed=3), InputSpec(shape=(1, 6, 6), kind="image"))
    x = rng.random((60, 1, 6, 6)).astype(np.float32)
    y = target.predict(x)
    fgsm = FGSM(eps=0.05).run(target, x, y)
    pgd = PGD(eps=0.05, steps=20, random_start=False).run(target, x, y)
    pgd2 = PGD(eps=0.05, steps=20, random_start=False).run(target, x, y)
    np.testing.assert_array_equal(pgd.x_adv, pgd2.x_adv)
    assert pgd.robust_accuracy <= fgsm.robust_accuracy
    assert pgd.robust_accuracy < 1.0


def test_pgd_early_stop_uses_fewer_queries_than_the_full_loop(rng: np.random.Generator, mlp_factory) -> None:
    target = TorchTarget(mlp_factory(5, 3, seed=1), InputSpec(shape=(5,)))
    x = rng.random((64, 5)).astype(np.float32)
    y = target.predict(x)
    res = PGD(eps=1.0, steps=20).run(target, x, y)  # eps covers the whole box: most fall quickly
    assert res.success.mean() > 0.5
    full = len(x) * 21 + 2 * len(x)  # 21 forward passes per sample, plus the clean prediction
    assert res.queries < full / 2


def test_targeted_pgd_reaches_the_requested_class(rng: np.random.Generator, mlp_factory) -> None:
    target = TorchTarget(mlp_factory(4, 3, seed=2), InputSpec(shape=(4,), lower=-5, upper=5))
    x = rng.random((50, 4)).astype(np.float32)
    y = target.predict(x)
    y_target = (y + 1) % 3
    res = PGD(eps=5.0, steps=40, targeted=True).run(target, x, y, y_target=y_target)
    assert res.targeted
    np.testing.assert_array_equal(res.success, res.adv_pred == y_target)
    assert res.success.mean() > 0.8


# -------------------------------------------------------------------------------- property tests
@st.composite
def attack_cases(draw: st.DrawFn) -> dict:
    kind = draw(st.sampled_from(["mlp", "cnn", "tabular"]))
    n_classes = draw(st.integers(2, 4))
    seed = draw(st.integers(0, 10_000))
    if kind == "cnn":
        c, s = draw(st.integers(1, 2)), draw(st.integers(3, 6))
        shape: tuple[int, ...] = (c, s, s)
        lo, hi = draw(st.sampled_from([(0.0, 1.0), (-1.0, 1.0), (0.0, 255.0)]))
        spec = InputSpec(shape=shape, lower=lo, upper=hi, kind="image")
    else:
        d = draw(st.integers(2, 8))
        shape = (d,)
        if kind == "tabular":
            feats = []
            for i in range(d):
                lo_i = draw(st.floats(-50, 50, allow_nan=False))
                width = draw(st.floats(0.5, 100, allow_nan=False))
                feats.append(FeatureSpec(name=f"f{i}", lower=lo_i, upper=lo_i + width,
                                         scale=draw(st.floats(0.05, 20, allow_nan=False)),
                                         mutable=draw(st.booleans()) if i else False))
            spec = InputSpec(shape=shape, features=feats, kind="tabular")
        else:
            lo, hi = draw(st.sampled_from([(0.0, 1.0), (-3.0, 3.0)]))
            spec = InputSpec(shape=shape, lower=lo, upper=hi)
    return {"kind": kind, "n_classes": n_classes, "seed": seed, "spec": spec,
            "norm": draw(st.sampled_from(["linf", "l2"])), "eps": draw(st.floats(0.0, 2.0)),
            "attack": draw(st.sampled_from(["pgd", "fgsm"])), "restarts": draw(st.integers(1, 2)),
            "schedule": draw(st.sampled_from(["constant", "cosine"])), "loss": draw(st.sampled_from(["ce", "margin"]))}


def _build(case: dict, cnn_factory, mlp_factory) -> tuple[TorchTarget, np.ndarray, np.ndarray]:
    spec: InputSpec = case["spec"]
    if case["kind"] == "cnn":
        module = cnn_factory(spec.shape[0], spec.shape[1], case["n_classes"], seed=case["seed"])
    else:
        module = mlp_factory(spec.shape[0], case["n_classes"], seed=case["seed"])
        if case["kind"] == "tabular":  # make the raw-unit features matter comparably
            lo, hi = spec.bounds_arrays()
            centre, half = torch.tensor((lo + hi) / 2), torch.tensor((hi - lo) / 2)
            module = torch.nn.Sequential(_Affine(centre, half), module)
    target = TorchTarget(module, spec)
    lo, hi = spec.bounds_arrays()
    r = np.random.default_rng(case["seed"])
    x = (lo + (hi - lo) * r.random((12, *spec.shape))).astype(np.float32)
    return target, x, target.predict(x)


class _Affine(torch.nn.Module):
    def __init__(self, centre: torch.Tensor, half: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("centre", centre)
        self.register_buffer("radius", half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.centre) / self.radius


def _make_attack(case: dict, seed: int = 0):  # noqa: ANN202
    if case["attack"] == "fgsm":
        return FGSM(eps=case["eps"], norm=case["norm"], seed=seed, batch_size=5)
    return PGD(eps=case["eps"], norm=case["norm"], steps=5, restarts=case["restarts"], schedule=case["schedule"],
               loss=case["loss"], seed=seed, batch_size=5)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=attack_cases())
def test_attacks_stay_in_the_eps_ball_the_bounds_and_the_mutable_features(case: dict, cnn_factory,
                                                                         mlp_factory) -> None:
    target, x, y = _build(case, cnn_factory, mlp_factory)
    spec = target.input_spec
    res = _make_attack(case).run(target, x, y)
    lo, hi = spec.bounds_arrays()
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == np.float32
    assert (res.x_adv >= lo).all() and (res.x_adv <= hi).all()
    size = assert_in_ball(x, res.x_adv, case["eps"], case["norm"], spec.scale_array())
    np.testing.assert_allclose(res.norms[case["norm"]], size, rtol=1e-6, atol=1e-7)
    immutable = spec.mutable_mask() == 0
    if immutable.any():
        np.testing.assert_array_equal(res.x_adv[:, immutable], x[:, immutable])
    # success is exactly "the model's prediction changed away from the label"
    np.testing.assert_array_equal(res.success, target.predict(res.x_adv) != y)
    unattacked = res.clean_pred != y
    np.testing.assert_array_equal(res.x_adv[unattacked], x[unattacked])


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=attack_cases(), seed=st.integers(0, 2**16))
def test_attacks_are_reproducible_with_a_seed(case: dict, seed: int, cnn_factory, mlp_factory) -> None:
    target, x, y = _build(case, cnn_factory, mlp_factory)
    a = _make_attack(case, seed).run(target, x, y)
    b = _make_attack(case, seed).run(target, x, y)
    np.testing.assert_array_equal(a.x_adv, b.x_adv)
    np.testing.assert_array_equal(a.success, b.success)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=attack_cases(), epsilons=st.lists(st.floats(0.0, 1.5), min_size=2, max_size=5))
def test_robustness_curve_is_monotone_non_increasing(case: dict, epsilons: list[float], cnn_factory,
                                                     mlp_factory) -> None:
    target, x, y = _build(case, cnn_factory, mlp_factory)
    curve = robustness_curve(_make_attack(case), target, x, y, epsilons)
    assert [r.eps for r in curve] == sorted(epsilons)
    acc = [r.robust_accuracy for r in curve]
    assert all(b <= a for a, b in zip(acc, acc[1:])), acc
    for r in curve:  # every point still inside its own ball, and its predictions are real
        assert_in_ball(x, r.x_adv, r.eps, case["norm"], target.input_spec.scale_array())
        np.testing.assert_array_equal(r.adv_pred, target.predict(r.x_adv))
        assert r.clean_accuracy == 1.0


# ------------------------------------------------------------------------------------ contract
def test_threat_model_overrides_eps_norm_and_targeting(rng: np.random.Generator, mlp_factory) -> None:
    target = TorchTarget(mlp_factory(4, 3), InputSpec(shape=(4,)))
    x = rng.random((20, 4)).astype(np.float32)
    y = target.predict(x)
    res = PGD(eps=0.01, steps=3).run(target, x, y, ThreatModel(eps=0.4, norm="l2", targeted=True))
    assert (res.eps, res.norm, res.targeted) == (0.4, "l2", True)
    assert res.norms["l2"].max() <= 0.4 + 1e-5


def test_gradient_attack_on_black_box_target_is_refused(rng: np.random.Generator) -> None:
    from bastion.core.targets.callable_target import CallableTarget

    target = CallableTarget(lambda a: np.full((len(a), 2), 0.5), [0, 1], InputSpec(shape=(3,)))
    with pytest.raises(TargetError, match="black box"):
        PGD().run(target, rng.random((4, 3)).astype(np.float32), np.zeros(4, int))


@pytest.mark.parametrize("params", [{"steps": 0}, {"schedule": "linear"}, {"loss": "hinge"}, {"step_size": -1.0},
                                    {"eps": -0.1}, {"norm": "l1"}, {"batch_size": 0}])
def test_bad_pgd_parameters_are_usage_errors(params: dict) -> None:
    with pytest.raises(UsageError):
        PGD(**params)


def test_get_attack_builds_by_name_and_names_allowed_parameters() -> None:
    pgd = get_attack("pgd", eps=0.2, steps=7)
    assert isinstance(pgd, PGD) and pgd.steps == 7 and pgd.eps == 0.2
    with pytest.raises(UsageError, match="steps"):
        get_attack("fgsm", steps=3)
