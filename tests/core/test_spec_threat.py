"""InputSpec / FeatureSpec (validate, clip, enforce) and ThreatModel validation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bastion.core.spec import FeatureSpec, InputSpec, tabular_spec
from bastion.core.threat import ThreatModel
from bastion.errors import DataError, UsageError


def test_validate_returns_contiguous_float32_and_adds_the_batch_axis() -> None:
    spec = InputSpec(shape=(2, 3))
    x = np.asfortranarray(np.full((4, 2, 3), 0.5, np.float64))
    out = spec.validate(x)
    assert out.dtype == np.float32 and out.flags.c_contiguous and out.shape == (4, 2, 3)
    assert spec.validate(np.zeros((2, 3))).shape == (1, 2, 3)  # one sample


@pytest.mark.parametrize("x, match", [
    (np.zeros((3, 4, 2)), r"per-sample shape \(4, 2\).*expects \(2, 3\)"),
    (np.zeros((0, 2, 3)), "empty"),
    (np.array([[["a"] * 3] * 2]), "dtype"),
    (np.full((2, 2, 3), 1.5), r"outside the target's declared bounds \[0, 1\]"),
    (np.full((2, 2, 3), -0.01), "outside"),
])
def test_validate_refuses_misfit_inputs(x: np.ndarray, match: str) -> None:
    with pytest.raises(DataError, match=match):
        InputSpec(shape=(2, 3)).validate(x)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_validate_names_the_first_sample_with_nan_or_inf(bad: float) -> None:
    x = np.full((5, 2, 3), 0.5)
    x[3, 1, 2] = bad
    with pytest.raises(DataError, match="NaN or infinite.*index 3, 1 samples") as err:
        InputSpec(shape=(2, 3)).validate(x)
    assert err.value.hint


def test_validate_tolerates_tiny_float_overshoot_of_the_bounds() -> None:
    InputSpec(shape=(2,)).validate(np.array([[1.0 + 1e-7, -1e-7]]))


def test_inverted_bounds_and_wrong_feature_count_are_refused() -> None:
    with pytest.raises(DataError, match="inverted"):
        InputSpec(shape=(3,), lower=1.0, upper=0.0)
    with pytest.raises(DataError, match="2 feature specs for inputs of shape"):
        InputSpec(shape=(3,), features=[FeatureSpec("a"), FeatureSpec("b")])


def test_enforce_clips_per_feature_bounds_and_restores_immutable_features() -> None:
    feats = [FeatureSpec("age", lower=0, upper=120, mutable=False, scale=10.0),
             FeatureSpec("income", lower=0, upper=1e6, scale=1e4),
             FeatureSpec("score", lower=-1, upper=1)]
    spec = InputSpec(shape=(3,), features=feats, kind="tabular")
    np.testing.assert_array_equal(spec.scale_array(), [10.0, 1e4, 1.0])
    np.testing.assert_array_equal(spec.mutable_mask(), [0, 1, 1])
    x = np.array([[40.0, 5e4, 0.5]], np.float32)
    x_adv = np.array([[45.0, -3.0, 7.0]], np.float32)
    out = spec.enforce(x, x_adv)
    np.testing.assert_array_equal(out, [[40.0, 0.0, 1.0]])
    assert out.dtype == np.float32


def test_tabular_spec_uses_observed_ranges_and_std_scales() -> None:
    x = np.array([[0.0, 5.0, 1.0], [2.0, 5.0, 3.0], [4.0, 5.0, 5.0]])
    spec = tabular_spec(x, ["a", "b", "c"])
    lo, hi = spec.bounds_arrays()
    np.testing.assert_array_equal(lo, [0, 5, 1])
    np.testing.assert_array_equal(hi, [4, 5, 5])
    np.testing.assert_allclose(spec.scale_array(), [x[:, 0].std(), 1.0, x[:, 2].std()], rtol=1e-6)  # constant: 1
    assert [f.name for f in spec.features] == ["a", "b", "c"] and spec.kind == "tabular"


def test_to_dict_is_json_with_infinite_bounds_as_null() -> None:
    spec = InputSpec(shape=(2,), lower=-np.inf, upper=np.inf)
    d = json.loads(json.dumps(spec.to_dict()))
    assert d["lower"] is None and d["upper"] is None and d["shape"] == [2]
    tab = tabular_spec(np.array([[0.0, 1.0], [1.0, 3.0]]))
    assert json.loads(json.dumps(tab.to_dict()))["features"][1]["upper"] == 3.0


@pytest.mark.parametrize("kwargs, match", [
    ({"norm": "l1"}, "norm='l1' is not allowed: input should be 'linf' or 'l2'"),
    ({"eps": -0.1}, "eps=-0.1 is not allowed: must be a finite number >= 0"),
    ({"eps": float("nan")}, "eps=nan is not allowed"),
    ({"eps": float("inf")}, "eps=inf is not allowed"),
    ({"eps": "big"}, "eps='big' is not allowed: must be a number"),
    ({"eps": [0.1, 0.2]}, "eps=.* must be a single number"),
    ({"query_budget": 0}, "query_budget=0 is not allowed: input should be greater than 0"),
    ({"poisoning_fraction": 1.0}, "poisoning_fraction=1.0 is not allowed"),
    ({"knowledge": "grey-ish"}, "knowledge='grey-ish' is not allowed: input should be 'white', 'grey' or 'black'"),
    ({"radius": 1}, "unknown parameter 'radius'"),
])
def test_threat_model_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        ThreatModel(**kwargs)


def test_threat_model_defaults() -> None:
    t = ThreatModel()
    assert (t.knowledge, t.norm, t.eps, t.query_budget, t.targeted) == ("white", "linf", 0.1, None, False)


def test_threat_model_reads_yaml_style_numbers_and_is_frozen() -> None:
    t = ThreatModel(eps="3e-2")  # YAML 1.1 reads `eps: 3e-2` as a string
    assert t.eps == 0.03
    with pytest.raises(Exception):
        t.eps = 0.5  # type: ignore[misc]
    with pytest.raises(UsageError, match="True is not allowed"):
        ThreatModel(eps=True)
