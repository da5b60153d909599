"""Bad input on the target side gets a clear error naming what to change (exit 2), or the right
behaviour: ONNX fixed batch sizes and ranks, feature counts, output kinds, (batch, 1, k) outputs,
state dicts given as TorchScript, complex inputs, and the demo targets' fixed contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bastion.core.data import Dataset
from bastion.core.loader import load_target
from bastion.core.spec import InputSpec
from bastion.core.targets.callable_target import CallableTarget
from bastion.errors import DataError, TargetError, UsageError


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _onnx_linear(path: Path, w: np.ndarray, *, batch: int | str = "batch", out_3d: bool = False) -> None:
    """x (batch, d) -> softmax(x W^T), optionally reshaped to (batch, 1, k)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Gemm", ["x", "W"], ["logits"], transB=1),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=1)]
    out, shape = "probs", [batch, w.shape[0]]
    if out_3d:
        nodes.append(helper.make_node("Unsqueeze", ["probs", "axes"], ["probs3"]))
        out, shape = "probs3", [batch, 1, w.shape[0]]
    inits = [numpy_helper.from_array(w.astype(np.float32), "W"), numpy_helper.from_array(np.array([1]), "axes")]
    graph = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, w.shape[1]])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, shape)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.fixture
def w(rng: np.random.Generator) -> np.ndarray:
    return rng.normal(size=(3, 5))


def test_an_onnx_model_exported_with_batch_size_1_runs_in_batches_of_1(tmp_path: Path, w: np.ndarray,
                                                                        rng: np.random.Generator) -> None:
    pytest.importorskip("onnxruntime")
    path = tmp_path / "b1.onnx"
    _onnx_linear(path, w, batch=1)
    x = rng.random((7, 5)).astype(np.float32)
    target = load_target(f"onnx:{path}", data=Dataset(x, np.zeros(7, int)))
    np.testing.assert_allclose(target.predict_proba(x), _softmax(x @ w.T), atol=1e-5)
    assert target.queries == 7


def test_onnx_wrong_input_rank_names_both_shapes(tmp_path: Path, w: np.ndarray, rng: np.random.Generator) -> None:
    pytest.importorskip("onnxruntime")
    path = tmp_path / "m.onnx"
    _onnx_linear(path, w)
    x = rng.random((4, 1, 5)).astype(np.float32)
    with pytest.raises(TargetError, match=r"takes input 'x' of shape \(batch, 5\), but the inputs have per-sample "
                                          r"shape \(1, 5\)") as err:
        load_target(f"onnx:{path}", data=Dataset(x, np.zeros(4, int)))
    assert "reshape" in err.value.hint


def test_outputs_of_shape_batch_1_k_are_read_as_batch_k(tmp_path: Path, w: np.ndarray, rng: np.random.Generator) -> None:
    x = rng.random((6, 5)).astype(np.float32)
    want = _softmax(x @ w.T)
    fn = CallableTarget(lambda a: _softmax(a @ w.T)[:, None, :], [0, 1, 2], InputSpec(shape=(5,)))
    np.testing.assert_allclose(fn.predict_proba(x), want, atol=1e-6)
    with pytest.raises(TargetError, match=r"shape \(6, 2, 3\); expected one score per class"):
        CallableTarget(lambda a: np.stack([_softmax(a @ w.T)] * 2, 1), [0, 1, 2], InputSpec(shape=(5,))).predict(x)
    if pytest.importorskip("onnxruntime"):
        path = tmp_path / "3d.onnx"
        _onnx_linear(path, w, out_3d=True)
        np.testing.assert_allclose(load_target(f"onnx:{path}", input_shape=(5,)).predict_proba(x), want, atol=1e-5)
    torch = pytest.importorskip("torch")
    from bastion.core.targets.torch_target import TorchTarget

    class Wide(torch.nn.Module):
        def forward(self, a):  # noqa: ANN001, ANN202
            return (a @ torch.tensor(w.T, dtype=torch.float32))[:, None, :]

    target = TorchTarget(Wide(), InputSpec(shape=(5,)))
    np.testing.assert_allclose(target.predict_proba(x), want, atol=1e-5)
    assert tuple(target.logits(torch.from_numpy(x)).shape) == (6, 3)


def test_logits_declared_for_a_model_returning_probabilities_is_refused(w: np.ndarray) -> None:
    """Before, softmax was applied to probabilities: every confidence flattened towards 1/k."""
    x = np.full((3, 5), 0.5, np.float32)
    wrong = CallableTarget(lambda a: _softmax(a @ w.T), [0, 1, 2], InputSpec(shape=(5,)), output="logits")
    with pytest.raises(TargetError, match="already probabilities") as err:
        wrong.predict_proba(x)
    assert "output='probabilities'" in err.value.hint
    auto = CallableTarget(lambda a: a @ w.T, [0, 1, 2], InputSpec(shape=(5,)), output="auto")
    auto.predict_proba(x)
    assert auto.output == "logits"


def test_onnx_probabilities_declared_as_logits_is_refused(tmp_path: Path, w: np.ndarray) -> None:
    pytest.importorskip("onnxruntime")
    path = tmp_path / "p.onnx"
    _onnx_linear(path, w)
    with pytest.raises(TargetError, match="already probabilities"):
        load_target(f"onnx:{path}", input_shape=(5,), output="logits")


def test_a_skops_model_fitted_on_other_features_is_refused(tmp_path: Path, rng: np.random.Generator) -> None:
    sio = pytest.importorskip("skops.io")
    from sklearn.linear_model import LogisticRegression

    x = rng.random((40, 6))
    sio.dump(LogisticRegression().fit(x, (x[:, 0] > 0.5).astype(int)), tmp_path / "m.skops")
    data = Dataset(rng.random((5, 4)).astype(np.float32), np.zeros(5, int))
    with pytest.raises(TargetError, match="fitted on 6 features but the inputs have 4") as err:
        load_target(f"sklearn:{tmp_path / 'm.skops'}", data=data)
    assert "same columns" in err.value.hint


def test_a_state_dict_given_as_torchscript_says_what_it_is(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    path = tmp_path / "weights.pt"
    torch.save(torch.nn.Linear(5, 3).state_dict(), path)
    with pytest.raises(TargetError, match="written by torch.save .* not a TorchScript archive") as err:
        load_target(f"torchscript:{path}", input_shape=(5,))
    assert "load_state_dict" in err.value.hint and "torch.jit.script" in err.value.hint


def test_complex_inputs_are_refused_not_silently_cast(w: np.ndarray) -> None:
    target = CallableTarget(lambda a: a @ w.T, [0, 1, 2], InputSpec(shape=(5,)), output="logits")
    with pytest.raises(DataError, match="complex"):
        target.predict_proba(np.ones((2, 5), np.complex64) * (1 + 1j))


@pytest.mark.parametrize(("override", "words"), [
    ({"input_shape": (10,)}, "takes inputs of shape (30,), not input_shape (10,)"),
    ({"bounds": (0.0, 1.0)}, "per-feature bounds"),
    ({"output": "logits"}, "returns probabilities, not output='logits'"),
    ({"classes": ["a", "b", "c"]}, "has 2 classes; 'classes' lists 3"),
])
def test_demo_targets_refuse_policy_values_they_would_ignore(override: dict, words: str) -> None:
    with pytest.raises(UsageError) as err:
        load_target("demo:breast-cancer", **override)
    assert words in str(err.value)


def test_demo_targets_take_class_names() -> None:
    target = load_target("demo:breast-cancer", classes=["malignant", "benign"], output="auto")
    assert target.classes == ["malignant", "benign"]
