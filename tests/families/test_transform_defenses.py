"""The registered input-transformation defenses: what each does to an input, the adaptive path it
declares (BPDA for non-differentiable steps, EOT for noise), and the refusals of bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bastion.core.defense import DEFENSES, TargetDefense
from bastion.core.spec import InputSpec
from bastion.core.targets.torch_target import TorchTarget
from bastion.errors import DataError, UsageError

INPUT = ["bit-depth", "median-smoothing", "spatial-smoothing", "jpeg", "rescale", "inference-noise", "transform-chain"]
PARAMS = {"transform-chain": {"steps": [{"kind": "rescale", "scale": 0.5}, {"kind": "jpeg", "quality": 50},
                                        {"kind": "bit-depth", "bits": 3}]}}


def image_target(channels: int = 1) -> TorchTarget:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(channels * 64, 3))
    return TorchTarget(net, InputSpec(shape=(channels, 8, 8), kind="image"), classes=[0, 1, 2])


def images(n: int = 6, channels: int = 1) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 1, (n, channels, 8, 8)).astype(np.float32)


def make(name: str) -> TargetDefense:
    cls = DEFENSES.get_object(name)
    assert issubclass(cls, TargetDefense)
    return cls(**PARAMS.get(name, {}))


@pytest.mark.parametrize("name", INPUT)
def test_each_defense_is_registered_keeps_shape_and_bounds_and_predicts_on_its_output(name: str) -> None:
    defense = make(name)
    inner = image_target()
    defended = defense.wrap(inner, seed=1)
    x = images()
    z = defense.preprocess(x, np.random.default_rng(1))
    assert z.shape == x.shape and z.dtype == np.float32 and z.min() >= 0 and z.max() <= 1
    assert not np.allclose(z, x, atol=1e-3)  # it transforms
    p = defended.predict_proba(x)
    np.testing.assert_allclose(p, inner.predict_proba(z), atol=1e-5)  # same draw: rng seeded alike


def test_what_each_step_computes() -> None:
    x = images(2)
    r = np.random.default_rng(0)
    bits = make("bit-depth").preprocess(x, r)
    assert set(np.unique(np.round(bits * 15, 4))) <= set(range(16))
    med = make("median-smoothing").preprocess(x, r)
    assert med[0, 0, 3, 4] == pytest.approx(np.median(x[0, 0, 2:5, 3:6]))
    blur = DEFENSES.get_object("spatial-smoothing")(sigma=1.0)
    xt = torch.from_numpy(x)
    np.testing.assert_allclose(blur.preprocess(x, r), blur.preprocess_torch(xt, r).numpy(), atol=1e-6)
    jp = make("jpeg").preprocess(x, r)
    assert 0.01 < np.abs(jp - x).mean() < 0.3  # lossy but close
    flat = np.full((1, 1, 8, 8), 0.5, np.float32)
    np.testing.assert_allclose(make("rescale").preprocess(flat, r), flat, atol=1e-6)  # a flat image survives


@pytest.mark.parametrize("name,bpda,eot", [("bit-depth", "identity", 1), ("median-smoothing", "approximation", 1),
                                           ("spatial-smoothing", "exact", 1), ("jpeg", "identity", 1),
                                           ("rescale", "exact", 1), ("inference-noise", "exact", 16),
                                           ("transform-chain", "approximation", 1)])
def test_adaptive_path_gives_gradients_where_the_deployed_model_gives_none(name: str, bpda: str, eot: int) -> None:
    defended = make(name).wrap(image_target())
    assert defended.describe()["adaptive"] == {"bpda": bpda, "eot_samples": eot}
    x = torch.from_numpy(images(4)).requires_grad_(True)
    (g,) = torch.autograd.grad(defended.adaptive_view().logits(x)[:, 0].sum(), x)
    assert torch.count_nonzero(g) > 0.5 * g.numel()
    x = torch.from_numpy(images(4)).requires_grad_(True)
    (own,) = torch.autograd.grad(defended.logits(x)[:, 0].sum(), x, allow_unused=True)
    if bpda in ("identity", "approximation"):
        assert own is None or torch.count_nonzero(own) == 0  # masked: only BPDA gets through


def test_chain_backward_pass_composes_its_steps_surrogates() -> None:
    chain = make("transform-chain")
    x = torch.from_numpy(images(2)).requires_grad_(True)
    rescaled = chain.steps[0].preprocess_torch(x, np.random.default_rng(0))
    torch.testing.assert_close(chain.approximation(x), rescaled)  # rescale exact, jpeg and bit depth identity


@pytest.mark.parametrize("name,spec,match", [
    ("jpeg", InputSpec(shape=(2, 8, 8), kind="image"), "with 1 or 3 channels"),
    ("median-smoothing", InputSpec(shape=(64,)), r"laid out \(channels, height, width\)"),
    ("bit-depth", InputSpec(shape=(4,), lower=-1.0, upper=1.0), r"expects inputs in \[0, 1\]"),
    ("transform-chain", InputSpec(shape=(64,)), "'rescale' transforms images"),
])
def test_a_target_the_defense_cannot_transform_is_refused(name: str, spec: InputSpec, match: str) -> None:
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(np.prod(spec.shape)), 2))
    with pytest.raises(UsageError, match=match):
        make(name).wrap(TorchTarget(net, spec))


def test_inputs_outside_the_unit_range_and_bad_parameters_are_refused() -> None:
    with pytest.raises(DataError, match=r"outside \[0, 1\]"):
        make("jpeg").preprocess(images(1) + 1.5, np.random.default_rng(0))
    with pytest.raises(UsageError, match="quality"):
        DEFENSES.get_object("jpeg")(quality=0)
    with pytest.raises(UsageError, match="kind must be one of rescale"):
        DEFENSES.get_object("transform-chain")(steps=[{"kind": "inference-noise"}])


def test_noise_is_randomised_and_seeded() -> None:
    x = images(3)
    a = make("inference-noise").wrap(image_target(), seed=4)
    b = make("inference-noise").wrap(image_target(), seed=4)
    assert a.randomized
    np.testing.assert_array_equal(a.predict_proba(x), b.predict_proba(x))
    assert not np.array_equal(a.predict_proba(x), a.predict_proba(x))  # a fresh draw each call


def test_policy_accepts_the_flat_and_the_nested_form() -> None:
    from bastion.campaign.policy import DefenseSpec

    flat = DefenseSpec.model_validate({"kind": "jpeg", "quality": 50})
    assert flat == DefenseSpec.model_validate({"name": "jpeg", "params": {"quality": 50}})
    with pytest.raises(ValueError, match="name"):
        DefenseSpec.model_validate({"kind": "jpeg", "params": {"quality": 50}})  # mixed forms: refused
