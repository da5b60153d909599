"""Tabular constraints: the config parser refuses contradictions by name, ``InputSpec.enforce``
keeps every constraint without leaving the ε-ball, and no attack ever breaks a constraint."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.core.spec import FeatureSpec, InputSpec, constraints_from_config
from bastion.errors import DataError
from constraint_checks import assert_constraints_hold

NAMES = ["age", "income", "color_red", "color_green", "color_blue", "score", "sex"]


def _data(n: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 90, n)
    income = rng.normal(50, 10, n)
    color = np.eye(3)[rng.integers(0, 3, n)]
    score = rng.integers(0, 10, n)
    sex = rng.integers(0, 2, n)
    return np.column_stack([age, income, color, score, sex]).astype(np.float32)


CONFIG = [
    {"name": "age", "kind": "integer", "lower": 18, "upper": 90, "scale": 10},
    {"name": "income", "lower": 0, "upper": 200, "scale": 10},
    {"name": "color_red", "kind": "categorical", "group": "color"},
    {"name": "color_green", "kind": "categorical", "group": "color"},
    {"name": "color_blue", "kind": "categorical", "group": "color"},
    {"name": "score", "kind": "integer", "lower": 0, "upper": 9, "scale": 2},
    {"name": "sex", "mutable": False, "lower": 0, "upper": 1},
]


# --- the parser --------------------------------------------------------------------------------
def test_parse_valid_config() -> None:
    specs = constraints_from_config(CONFIG, NAMES, x=_data())
    by = {f.name: f for f in specs}
    assert by["age"].kind == "integer" and by["age"].scale == 10 and (by["age"].lower, by["age"].upper) == (18, 90)
    assert by["color_green"].group == "color" and by["color_green"].kind == "categorical"
    assert by["sex"].mutable is False
    assert [f.name for f in specs] == NAMES


@pytest.mark.parametrize("bad, column", [
    ([{"name": "age", "lower": 90, "upper": 18}], "age"),
    ([{"name": "height"}], "height"),
    ([{"name": "income", "scale": 0}], "income"),
    ([{"name": "income", "scale": -1.5}], "income"),
    ([{"name": "score", "kind": "ordinal"}], "score"),
    ([{"name": "score", "wat": 1}], "score"),
    ([{"name": "income", "group": "g", "kind": "integer"}], "income"),
    ([{"name": "income", "group": "g"}], "income"),  # a group of one column
])
def test_parse_refuses_contradictions_naming_the_column(bad: list[dict], column: str) -> None:
    with pytest.raises(DataError, match=column):
        constraints_from_config(bad, NAMES)


def test_one_hot_group_must_hold_zeros_and_ones() -> None:
    x = _data()
    x[3, 2] = 0.5  # color_red
    with pytest.raises(DataError, match="color_red"):
        constraints_from_config(CONFIG, NAMES, x=x)


def test_integer_column_must_hold_integers() -> None:
    x = _data()
    x[0, 0] = 30.5
    with pytest.raises(DataError, match="age"):
        constraints_from_config(CONFIG, NAMES, x=x)


def test_unlisted_columns_keep_their_base_spec() -> None:
    base = [FeatureSpec(name=n, lower=-5.0, upper=5.0, scale=3.0) for n in NAMES]
    specs = constraints_from_config([{"name": "age", "kind": "integer"}], NAMES, base=base)
    assert specs[1].scale == 3.0 and specs[1].lower == -5.0
    assert specs[0].kind == "integer" and specs[0].scale == 3.0


# --- enforce -----------------------------------------------------------------------------------
def _spec() -> InputSpec:
    return InputSpec(shape=(len(NAMES),), features=constraints_from_config(CONFIG, NAMES), kind="tabular")


def test_enforce_rounds_projects_and_keeps_immutables() -> None:
    spec = _spec()
    x = np.array([[30, 50, 1, 0, 0, 4, 1]], np.float32)
    xa = np.array([[36.2, 260, 0.1, 0.95, 0.0, 5.1, 0.0]], np.float32)  # linf in ε units: 0.95
    out = spec.enforce(x, xa)
    assert out[0, 0] == 36  # nearest integer, inside the ball
    assert out[0, 1] == 200  # upper bound
    assert out[0, 5] == 5
    assert out[0, 6] == 1  # immutable
    np.testing.assert_array_equal(out[0, 2:5], [1, 0, 0])  # a switch would move 1 > 0.95: original kept


def test_enforce_switches_category_when_the_ball_allows_it() -> None:
    spec = _spec()
    x = np.array([[30, 50, 1, 0, 0, 4, 1]], np.float32)
    xa = np.array([[30, 50, 0.0, 1.0, 0.0, 4, 1]], np.float32)
    np.testing.assert_array_equal(spec.enforce(x, xa)[0, 2:5], [0, 1, 0])


def test_enforce_rounds_toward_the_original_when_nearest_leaves_the_ball() -> None:
    spec = _spec()
    x = np.array([[30, 50, 1, 0, 0, 4, 1]], np.float32)
    xa = np.array([[30.6, 50, 1, 0, 0, 4, 1]], np.float32)  # |delta| = 0.06 ε units; 31 would be 0.1
    out = spec.enforce(x, xa)
    assert out[0, 0] == 30


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.01, 3.0), st.sampled_from(["linf", "l2"]))
def test_enforce_never_leaves_the_ball(seed: int, eps: float, norm: str) -> None:
    spec = _spec()
    rng = np.random.default_rng(seed)
    x = _data(20, seed)
    scale = spec.scale_array()
    d = rng.normal(size=x.shape)
    if norm == "linf":
        d = np.clip(d, -1, 1) * eps
    else:
        d = d / np.linalg.norm(d, axis=1, keepdims=True) * eps * rng.random((len(x), 1))
    xa = (x + d * scale).astype(np.float32)
    out = spec.enforce(x, xa)
    assert_constraints_hold(spec, x, out, bounds_atol=1e-5)
    delta = (out.astype(np.float64) - x) / scale
    if norm == "linf":
        assert np.abs(delta).max() <= eps + 1e-4
    else:
        assert np.linalg.norm(delta, axis=1).max() <= eps + 1e-4


# --- every attack respects every constraint ------------------------------------------------------
def _random_constraints(rng: np.random.Generator, n_features: int) -> tuple[list[dict], list[str]]:
    names = [f"f{i}" for i in range(n_features)]
    cfg: list[dict] = []
    j = 0
    if rng.random() < 0.7:  # a one-hot group of 2-3 columns at the start
        k = int(rng.integers(2, 4))
        cfg += [{"name": names[i], "group": "g", "scale": float(rng.choice([0.5, 1.0, 2.0]))} for i in range(k)]
        j = k
    for i in range(j, n_features):
        r = rng.random()
        item: dict = {"name": names[i], "scale": float(rng.uniform(0.2, 3.0))}
        if r < 0.3:
            item.update(kind="integer", lower=0, upper=int(rng.integers(3, 12)))
        elif r < 0.45:
            item["mutable"] = False
        else:
            item.update(lower=-3.0, upper=3.0)
        cfg.append(item)
    return cfg, names


def _table(rng: np.random.Generator, specs: list) -> np.ndarray:
    n = 24
    cols = []
    group = [j for j, f in enumerate(specs) if f.group]
    if group:
        onehot = np.eye(len(group))[rng.integers(0, len(group), n)]
    for j, f in enumerate(specs):
        if f.group:
            cols.append(onehot[:, group.index(j)])
        elif f.kind == "integer":
            cols.append(rng.integers(int(f.lower), int(f.upper) + 1, n).astype(float))
        elif np.isfinite(f.lower):
            cols.append(rng.uniform(f.lower, f.upper, n))
        else:
            cols.append(rng.normal(size=n))
    return np.column_stack(cols).astype(np.float32)


CHEAP = {
    "fgsm": {}, "pgd": {"steps": 10}, "square": {"max_queries": 60}, "hopskipjump": {"max_queries": 150},
    "transfer": {"train_queries": 60, "epochs": 3, "augment_rounds": 1, "steps": 5},
}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10_000), st.sampled_from(sorted(CHEAP)), st.sampled_from(["linf", "l2"]))
def test_no_attack_breaks_a_constraint(seed: int, name: str, norm: str) -> None:
    import torch

    from bastion.attacks import get_attack
    from bastion.core.targets.torch_target import TorchTarget

    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    n_features = int(rng.integers(5, 9))
    cfg, names = _random_constraints(rng, n_features)
    specs = constraints_from_config(cfg, names)
    spec = InputSpec(shape=(n_features,), features=specs, kind="tabular")
    x = _table(rng, specs)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(n_features, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    target = TorchTarget(model, spec, classes=[0, 1, 2])
    with target.uncounted():
        y = target.predict(x)  # every point starts correctly classified: each one is attacked
    eps = float(rng.uniform(0.1, 1.5))
    res = get_attack(name, eps=eps, norm=norm, seed=seed, **CHEAP[name]).run(target, x, y)
    assert_constraints_hold(spec, x, res.x_adv, bounds_atol=1e-5)
    if not get_attack(name).minimal:
        scale = spec.scale_array()
        delta = (res.x_adv.astype(np.float64) - x) / scale
        size = np.abs(delta).max(axis=1) if norm == "linf" else np.linalg.norm(delta, axis=1)
        assert size.max() <= eps * (1 + 1e-4) + 1e-4


@pytest.mark.parametrize("name", ["square", "hopskipjump"])
def test_blackbox_attacks_still_succeed_under_constraints(name: str) -> None:
    """Constraints are enforced on every query, not just at the end: the attack still finds points."""
    import torch

    from bastion.attacks import get_attack
    from bastion.core.targets.torch_target import TorchTarget

    torch.set_num_threads(1)
    rng = np.random.default_rng(1)
    cfg, names = _random_constraints(rng, 8)
    specs = constraints_from_config(cfg, names)
    spec = InputSpec(shape=(8,), features=specs, kind="tabular")
    x = _table(rng, specs)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    target = TorchTarget(model, spec, classes=[0, 1, 2])
    with target.uncounted():
        y = target.predict(x)
    res = get_attack(name, eps=2.0, norm="linf", max_queries=400).run(target, x, y)
    assert_constraints_hold(spec, x, res.x_adv, bounds_atol=1e-5)
    assert res.success.mean() > 0.3


def test_every_registered_attack_respects_constraints() -> None:
    """Attacks written elsewhere (APGD, C&W, DeepFool, the ensemble...) go through the same
    enforcement: run each once, with its default settings, on a constrained table."""
    import torch

    from bastion.attacks import available_attacks, get_attack
    from bastion.core.targets.torch_target import TorchTarget

    torch.set_num_threads(1)
    rng = np.random.default_rng(7)
    specs = constraints_from_config(CONFIG, NAMES)
    spec = InputSpec(shape=(len(NAMES),), features=specs, kind="tabular")
    x = _data(8, 7)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(len(NAMES), 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    target = TorchTarget(model, spec, classes=[0, 1, 2])
    with target.uncounted():
        y = target.predict(x)
    shrink = {"max_iter": 40, "binary_steps": 3, "steps": 10, "blackbox_queries": 100, "n_target_classes": 2,
              "max_queries": 60}
    for name in available_attacks():
        known = get_attack(name).get_params()
        params = {k: v for k, v in shrink.items() if k in known}
        params.update(eps=1.0, seed=int(rng.integers(100)), **CHEAP.get(name, {}))
        res = get_attack(name, **params).run(target, x, y)
        assert_constraints_hold(spec, x, res.x_adv, bounds_atol=1e-5)
