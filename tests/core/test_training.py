"""The training contract: TrainRequest -> Target through scikit-learn clones and bastion's
TorchTrainingProcedure (reproducible from the seed without touching torch's global generator;
batch and step hooks run where training defenses need them)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bastion.core.spec import InputSpec
from bastion.core.targets.base import Target
from bastion.core.training import TorchTrainingProcedure, TrainRequest, TrainStep, adam, sklearn_train_fn
from bastion.errors import DataError

torch.set_num_threads(1)


def _data(n: int = 120) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    return x, (x[:, 0] + x[:, 1] > 0).astype(np.int64)


def _mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def _weights(module: torch.nn.Module) -> np.ndarray:
    return torch.cat([p.detach().flatten() for p in module.parameters()]).numpy()


def test_torch_procedure_is_a_train_fn_reproducible_without_the_global_generator() -> None:
    x, y = _data()
    proc = TorchTrainingProcedure(model=_mlp, optimizer=adam(1e-2), epochs=15, batch_size=16)
    torch.manual_seed(1)
    state = torch.get_rng_state()
    target = proc(TrainRequest(x, y, seed=3, input_spec=InputSpec(shape=(4,), lower=-np.inf, upper=np.inf)))
    assert torch.equal(torch.get_rng_state(), state)  # library code never draws from or seeds it
    assert isinstance(target, Target) and target.white_box and target.classes == [0, 1]
    with target.uncounted():
        assert np.mean(target.predict(x) == y) > 0.9
    torch.manual_seed(999)  # another global state: the same model
    again = proc.fit(TrainRequest(x, y, seed=3))
    np.testing.assert_array_equal(_weights(again), _weights(target.module))
    other = proc.fit(TrainRequest(x, y, seed=4))
    assert not np.array_equal(_weights(other), _weights(again))


def test_batch_and_step_hooks_run_where_training_defenses_need_them() -> None:
    x, y = _data(64)
    seen: list[tuple[int, int, int]] = []

    def flip_labels(step: TrainStep) -> tuple[torch.Tensor, torch.Tensor]:  # a batch hook rewrites the batch
        seen.append((step.epoch, step.step, len(step.x)))
        return step.x, 1 - step.y

    def no_update(step: TrainStep) -> None:  # a step hook sees the gradients before the optimiser step
        assert step.losses is not None and step.losses.shape == (len(step.x),)
        for p in step.module.parameters():
            assert p.grad is not None
            p.grad.zero_()

    base = TorchTrainingProcedure(model=_mlp, epochs=20, batch_size=32)
    frozen = base.with_hooks(step=[no_update])
    assert base.step_hooks == () and len(frozen.step_hooks) == 1
    init = TorchTrainingProcedure(model=_mlp, epochs=0).fit(TrainRequest(x, y, seed=0))
    np.testing.assert_array_equal(_weights(frozen.fit(TrainRequest(x, y, seed=0))), _weights(init))
    flipped = base.with_hooks(batch=[flip_labels]).fit(TrainRequest(x, y, seed=0))
    assert seen[:4] == [(0, 0, 32), (0, 1, 32), (1, 2, 32), (1, 3, 32)] and len(seen) == 40
    with torch.no_grad():
        assert np.mean(flipped(torch.from_numpy(x)).argmax(1).numpy() != y) > 0.5  # learnt the flipped labels


def test_sample_weights_of_zero_mean_no_update() -> None:
    x, y = _data(64)
    proc = TorchTrainingProcedure(model=_mlp, epochs=1, batch_size=64)
    trained = proc.fit(TrainRequest(x, y, seed=0, sample_weight=np.zeros(64)))
    init = TorchTrainingProcedure(model=_mlp, epochs=0).fit(TrainRequest(x, y, seed=0))
    np.testing.assert_array_equal(_weights(trained), _weights(init))


def test_sklearn_estimator_becomes_a_train_fn_by_cloning() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    x, y = _data()
    est = LogisticRegression()
    train = sklearn_train_fn(est)
    target = train(TrainRequest(x, y, input_spec=InputSpec(shape=(4,), lower=-np.inf, upper=np.inf)))
    assert not hasattr(est, "coef_")  # the caller's estimator is never fitted
    with target.uncounted():
        assert np.mean(target.predict(x) == y) > 0.9
    # sample weights reach the estimator: zero weight on half the data = training on the other half
    w = np.r_[np.ones(60), np.zeros(60)]
    weighted = train(TrainRequest(x, y, sample_weight=w))
    half = train(TrainRequest(x[:60], y[:60]))
    np.testing.assert_allclose(weighted.estimator.coef_, half.estimator.coef_, rtol=1e-4, atol=1e-6)
    # random_state comes from the request's seed
    mlp = sklearn_train_fn(MLPClassifier(hidden_layer_sizes=(4,), max_iter=30))
    a, b = (mlp(TrainRequest(x, y, seed=s)).estimator.coefs_[0] for s in (1, 1))
    np.testing.assert_array_equal(a, b)


def test_bad_requests_are_data_errors() -> None:
    x, y = _data(10)
    with pytest.raises(DataError, match="10 inputs and 9 labels"):
        TrainRequest(x, y[:9])
    with pytest.raises(DataError, match="sample weights"):
        TrainRequest(x, y, sample_weight=np.ones(3))
    with pytest.raises(DataError, match="x_val and y_val"):
        TrainRequest(x, y, x_val=x)


def test_trainer_identity_keys_the_shadow_model_cache() -> None:
    """Equal for trainers that train alike, different otherwise, None where nothing is stable."""
    import pickle

    from sklearn.linear_model import LogisticRegression

    from bastion.core.demo import digits_cnn_module
    from bastion.core.training import trainer_identity

    a, b = sklearn_train_fn(LogisticRegression(C=1.0)), sklearn_train_fn(LogisticRegression(C=1.0))
    assert trainer_identity(a) == trainer_identity(b) != trainer_identity(sklearn_train_fn(LogisticRegression(C=2.0)))
    proc = TorchTrainingProcedure(model=digits_cnn_module, optimizer=adam(1e-3), epochs=3)
    assert trainer_identity(proc) == trainer_identity(TorchTrainingProcedure(model=digits_cnn_module,
                                                                             optimizer=adam(1e-3), epochs=3))
    assert trainer_identity(proc) != trainer_identity(TorchTrainingProcedure(model=digits_cnn_module,
                                                                             optimizer=adam(1e-3), epochs=4))
    width = 8
    closure = TorchTrainingProcedure(model=lambda: torch.nn.Linear(4, width))
    assert trainer_identity(closure) is None  # what it captured (width) is not in its source
    assert pickle.loads(pickle.dumps(proc)) == proc and pickle.loads(pickle.dumps(a)).estimator.C == 1.0
