"""The embedded demo models: trained once into the cache, reloaded from it, good enough to attack."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from bastion.attacks import PGD
from bastion.core.data import align_labels
from bastion.core.demo import cache_dir
from bastion.core.loader import load_data, load_target
from bastion.core.targets.sklearn_target import DifferentiableSklearnTarget


def test_cache_dir_follows_the_environment(bastion_cache_dir: Path) -> None:
    assert os.environ["BASTION_CACHE_DIR"] == str(bastion_cache_dir)
    assert cache_dir() == bastion_cache_dir / "demo"


def test_digits_cnn_is_accurate_cached_and_reloads_identically(digits_target, digits_data,
                                                               bastion_cache_dir: Path) -> None:
    files = list((bastion_cache_dir / "demo").glob("digits-cnn-*.pt"))
    assert len(files) == 1
    assert digits_target.white_box and digits_target.input_spec.shape == (1, 8, 8)
    y = align_labels(digits_data, digits_target)
    acc = float(np.mean(digits_target.predict(digits_data.x) == y))
    assert acc > 0.9
    again = load_target("demo:digits-cnn")  # from the cache this time
    np.testing.assert_allclose(again.predict_proba(digits_data.x[:50]),
                               digits_target.predict_proba(digits_data.x[:50]), atol=1e-6)
    assert list((bastion_cache_dir / "demo").glob("digits-cnn-*.pt")) == files


def test_pgd_lowers_the_digits_cnn_accuracy(digits_target, digits_data) -> None:
    x, y = digits_data.x[:64], digits_data.y[:64].astype(np.int64)
    res = PGD(eps=0.1, steps=10).run(digits_target, x, y)
    assert res.robust_accuracy < res.clean_accuracy
    assert res.norms["linf"].max() <= 0.1 + 1e-6 and res.x_adv.min() >= 0 and res.x_adv.max() <= 1


def test_breast_cancer_pipeline_is_white_box_with_tabular_constraints(bastion_cache_dir: Path) -> None:
    target = load_target("demo:breast-cancer")
    assert isinstance(target, DifferentiableSklearnTarget)
    assert list((bastion_cache_dir / "demo").glob("breast-cancer-*.skops"))
    data = load_data("demo:breast-cancer")
    y = align_labels(data, target)
    assert np.mean(target.predict(data.x) == y) > 0.9
    res = PGD(eps=0.5, steps=10).run(target, data.x, y)
    lo, hi = target.input_spec.bounds_arrays()
    assert (res.x_adv >= lo).all() and (res.x_adv <= hi).all()
    delta = np.abs(res.x_adv - data.x) / target.input_spec.scale_array()
    assert delta.max() <= 0.5 + 1e-4
    assert res.robust_accuracy < res.clean_accuracy
