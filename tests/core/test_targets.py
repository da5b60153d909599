"""Every target adapter on real models: PyTorch, TorchScript, scikit-learn (skops), ONNX, callable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bastion.attacks import FGSM, PGD
from bastion.core.data import Dataset
from bastion.core.loader import load_target
from bastion.core.spec import InputSpec
from bastion.core.targets.base import check_probabilities
from bastion.core.targets.callable_target import CallableTarget
from bastion.core.targets.sklearn_target import DifferentiableSklearnTarget, SklearnTarget
from bastion.core.targets.torch_target import TorchTarget
from bastion.core.threat import ThreatModel
from bastion.errors import QueryBudgetExceeded, TargetError, UnsafeFileError, UsageError

torch.set_num_threads(1)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture
def table(rng: np.random.Generator) -> Dataset:
    x = rng.normal(size=(120, 4)).astype(np.float32) * [1, 2, 3, 4] + [0, 1, 2, 3]
    y = np.where(x[:, 0] - x[:, 1] / 2 > -0.5, "yes", "no")
    return Dataset(x, y, name="table", feature_names=["a", "b", "c", "d"])


# ----------------------------------------------------------------------------------- PyTorch
def test_torch_target_probabilities_queries_and_logits(mlp_factory, rng: np.random.Generator) -> None:
    module = mlp_factory(6, 3)
    target = TorchTarget(module, InputSpec(shape=(6,)))
    assert target.white_box and target.classes == [0, 1, 2] and target.n_classes == 3
    x = rng.random((7, 6)).astype(np.float32)
    p = target.predict_proba(x)
    with torch.no_grad():
        want = torch.softmax(module(torch.from_numpy(x)), 1).numpy()
    np.testing.assert_allclose(p, want, atol=1e-6)
    assert target.queries == 7
    target.logits(torch.from_numpy(x[:3]))
    assert target.queries == 10
    assert not any(q.requires_grad for q in target.module.parameters())  # its private copy is frozen
    assert all(q.requires_grad for q in module.parameters())  # the caller's module is not
    d = target.describe()
    assert d["kind"] == "pytorch" and d["output"] == "logits" and d["input"]["shape"] == [6]


def test_torch_model_returning_probabilities_where_logits_are_declared_is_refused(mlp_factory) -> None:
    module = torch.nn.Sequential(mlp_factory(4, 3), torch.nn.Softmax(dim=1))
    with pytest.raises(TargetError, match="already probabilities") as err:
        TorchTarget(module, InputSpec(shape=(4,)), output="logits")
    assert "output='probabilities'" in err.value.hint


def test_torch_model_returning_logits_where_probabilities_are_declared_is_refused(mlp_factory) -> None:
    with pytest.raises(TargetError, match="not probabilities") as err:
        TorchTarget(mlp_factory(4, 3), InputSpec(shape=(4,)), output="probabilities")
    assert "output='logits'" in err.value.hint


def test_torch_output_auto_and_attacks_through_a_softmax_model(mlp_factory, rng: np.random.Generator) -> None:
    base = mlp_factory(4, 3, seed=5)
    soft = TorchTarget(torch.nn.Sequential(base, torch.nn.Softmax(dim=1)), InputSpec(shape=(4,)), output="auto")
    plain = TorchTarget(base, InputSpec(shape=(4,)), output="auto")
    assert soft.output == "probabilities" and plain.output == "logits"
    x = rng.random((30, 4)).astype(np.float32)
    np.testing.assert_allclose(soft.predict_proba(x), plain.predict_proba(x), atol=1e-6)
    y = plain.predict(x)
    # log-probabilities differ from logits by a per-sample constant: identical CE gradients
    a, b = FGSM(eps=0.2).run(soft, x, y), FGSM(eps=0.2).run(plain, x, y)
    np.testing.assert_allclose(a.x_adv, b.x_adv, atol=1e-5)


def test_torch_target_wrong_shape_and_wrong_output_width(mlp_factory) -> None:
    with pytest.raises(TargetError, match="failed on a probe batch") as err:
        TorchTarget(mlp_factory(4, 3), InputSpec(shape=(5,)))
    assert "input shape" in err.value.hint
    with pytest.raises(TargetError, match="expected \\(batch, 5\\)"):
        TorchTarget(mlp_factory(4, 3), InputSpec(shape=(4,)), classes=list("abcde"))
    with pytest.raises(TargetError, match="at least two classes"):
        TorchTarget(mlp_factory(4, 1), InputSpec(shape=(4,)))
    with pytest.raises(TargetError, match="expected a torch.nn.Module"):
        TorchTarget(lambda t: t, InputSpec(shape=(4,)))


def test_torchscript_archive_loads_white_box_and_matches_the_module(tmp_path: Path, cnn_factory,
                                                                    rng: np.random.Generator) -> None:
    module = cnn_factory(1, 5, 3)
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(module), str(path))
    x = rng.random((10, 1, 5, 5)).astype(np.float32)
    data = Dataset(x, np.zeros(10, int))
    target = load_target(f"torchscript:{path}", data=data)
    assert target.white_box and target.input_spec.shape == (1, 5, 5)
    with torch.no_grad():
        want = torch.softmax(module(torch.from_numpy(x)), 1).numpy()
    np.testing.assert_allclose(target.predict_proba(x), want, atol=1e-6)
    assert load_target(str(path), data=data).white_box  # recognised by its suffix
    res = PGD(eps=0.1, steps=5).run(target, x, target.predict(x))
    assert res.norms["linf"].max() <= 0.1 + 1e-6


def test_broken_torchscript_file_is_a_target_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.pt"
    path.write_bytes(b"not a zip archive")
    with pytest.raises(TargetError, match="cannot load TorchScript"):
        load_target(f"torchscript:{path}", input_shape=(3,))


# ------------------------------------------------------------------------------ scikit-learn
@pytest.mark.parametrize("kind", ["logreg", "mlp", "minmax-logreg"])
def test_sklearn_pipelines_saved_with_skops_get_an_exact_torch_twin(kind: str, tmp_path: Path,
                                                                   table: Dataset) -> None:
    import skops.io
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    final = MLPClassifier((8,), max_iter=300, random_state=0) if kind == "mlp" else LogisticRegression()
    scaler = MinMaxScaler() if kind.startswith("minmax") else StandardScaler()
    est = make_pipeline(scaler, final).fit(table.x, table.y)
    path = tmp_path / "model.skops"
    skops.io.dump(est, path)
    target = load_target(f"sklearn:{path}", data=table)
    assert isinstance(target, DifferentiableSklearnTarget) and target.white_box
    assert target.classes == ["no", "yes"] and target.input_spec.kind == "tabular"
    np.testing.assert_allclose(target.predict_proba(table.x), est.predict_proba(table.x), atol=1e-5)
    with torch.no_grad():
        twin = torch.softmax(target.logits(torch.from_numpy(table.x)), 1).numpy()
    np.testing.assert_allclose(twin, est.predict_proba(table.x), atol=1e-4)


def test_sklearn_without_a_twin_is_a_black_box_and_gradient_attacks_say_so(tmp_path: Path,
                                                                          table: Dataset) -> None:
    import skops.io
    from sklearn.ensemble import RandomForestClassifier

    est = RandomForestClassifier(n_estimators=5, random_state=0).fit(table.x, table.y)
    path = tmp_path / "forest.skops"
    skops.io.dump(est, path)
    target = load_target(str(path), data=table)
    assert type(target) is SklearnTarget and not target.white_box
    np.testing.assert_allclose(target.predict_proba(table.x), est.predict_proba(table.x))
    with pytest.raises(TargetError, match="needs gradients.*black box"):
        FGSM().run(target, table.x, np.zeros(len(table), int))


class NotSklearnScaler:  # a type skops must not trust
    def fit(self, x, y=None):  # noqa: ANN001, ANN201
        return self

    def transform(self, x):  # noqa: ANN001, ANN201
        return x


def test_skops_file_with_untrusted_types_is_refused(tmp_path: Path, table: Dataset) -> None:
    import skops.io
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    est = make_pipeline(NotSklearnScaler(), LogisticRegression()).fit(table.x, table.y)
    path = tmp_path / "custom.skops"
    skops.io.dump(est, path)
    with pytest.raises(UnsafeFileError, match="NotSklearnScaler"):
        load_target(f"sklearn:{path}", data=table)


def test_sklearn_estimator_without_predict_proba_is_refused(table: Dataset) -> None:
    from sklearn.svm import LinearSVC

    with pytest.raises(TargetError, match="no predict_proba") as err:
        SklearnTarget(LinearSVC().fit(table.x, table.y), InputSpec(shape=(4,), lower=-99, upper=99))
    assert "CalibratedClassifierCV" in err.value.hint


# -------------------------------------------------------------------------------------- ONNX
def _onnx_linear(path: Path, w: np.ndarray, b: np.ndarray, softmax: bool) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Gemm", ["x", "W", "B"], ["logits"], transB=1)]
    out = "logits"
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1))
        out = "probs"
    graph = helper.make_graph(
        nodes, "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", w.shape[1]])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", w.shape[0]])],
        initializer=[numpy_helper.from_array(w.astype(np.float32), "W"),
                     numpy_helper.from_array(b.astype(np.float32), "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.mark.parametrize("softmax", [True, False])
def test_onnx_target_auto_detects_probabilities_or_logits(softmax: bool, tmp_path: Path,
                                                          rng: np.random.Generator) -> None:
    w, b = rng.normal(size=(3, 5)), rng.normal(size=3)
    path = tmp_path / "linear.onnx"
    _onnx_linear(path, w, b, softmax)
    x = rng.random((9, 5)).astype(np.float32)
    target = load_target(str(path), data=Dataset(x, np.zeros(9, int)), query_budget=9)
    assert target.output == ("probabilities" if softmax else "logits") and not target.white_box
    assert target.classes == [0, 1, 2] and target.input_spec.shape == (5,)
    np.testing.assert_allclose(target.predict_proba(x), _softmax(x @ w.T + b), atol=1e-5)
    assert target.queries == 9  # the probe at load time is not an attacker query
    with pytest.raises(QueryBudgetExceeded):
        target.predict_proba(x[:1])


def test_onnx_logits_declared_as_probabilities_is_refused_with_a_hint(tmp_path: Path,
                                                                     rng: np.random.Generator) -> None:
    path = tmp_path / "logits.onnx"
    _onnx_linear(path, rng.normal(size=(3, 5)) * 5, np.zeros(3), softmax=False)
    x = rng.random((4, 5)).astype(np.float32)
    with pytest.raises(TargetError, match="not probabilities") as err:  # found on the probe, when it loads
        load_target(f"onnx:{path}", data=Dataset(x, np.zeros(4, int)), output="probabilities")
    assert "output='logits'" in err.value.hint


def test_onnx_garbage_file_and_dynamic_shape(tmp_path: Path, rng: np.random.Generator) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(TargetError, match="cannot load ONNX model"):
        load_target(str(bad), input_shape=(5,))
    path = tmp_path / "linear.onnx"
    _onnx_linear(path, rng.normal(size=(3, 5)), np.zeros(3), softmax=True)
    target = load_target(f"onnx:{path}")  # the static feature dimension is read from the graph
    assert target.input_spec.shape == (5,)


# ---------------------------------------------------------------------------------- callable
def test_callable_target_probabilities_logits_and_queries(rng: np.random.Generator) -> None:
    w = rng.normal(size=(4, 3))
    x = rng.random((6, 4)).astype(np.float32)
    spec = InputSpec(shape=(4,))
    probs = CallableTarget(lambda a: _softmax(a @ w), ["a", "b", "c"], spec, query_budget=10)
    np.testing.assert_allclose(probs.predict_proba(x), _softmax(x @ w), atol=1e-6)
    assert probs.queries == 6
    with pytest.raises(QueryBudgetExceeded):
        probs.predict_proba(x)
    assert probs.queries == 6  # a refused batch is not counted
    logits = CallableTarget(lambda a: a @ w, ["a", "b", "c"], spec, output="logits")
    np.testing.assert_allclose(logits.predict_proba(x), _softmax(x @ w), atol=1e-6)
    undeclared = CallableTarget(lambda a: a @ w * 10, ["a", "b", "c"], spec)
    with pytest.raises(TargetError, match="not probabilities") as err:
        undeclared.predict_proba(x)
    assert "output='logits'" in err.value.hint


def test_callable_bad_outputs() -> None:
    spec = InputSpec(shape=(2,))
    x = np.zeros((3, 2), np.float32)
    with pytest.raises(TargetError, match=r"shape \(3, 3\); expected \(batch, 2\)"):
        CallableTarget(lambda a: np.full((len(a), 3), 1 / 3), [0, 1], spec).predict_proba(x)
    with pytest.raises(TargetError, match="NaN"):
        CallableTarget(lambda a: np.full((len(a), 2), np.nan), [0, 1], spec).predict_proba(x)
    later = CallableTarget(lambda a: np.full((len(a), 2), np.nan if len(a) == 3 else 0.5), [0, 1], spec)
    later.predict_proba(x[:2])
    with pytest.raises(TargetError, match="NaN"):
        later.predict_proba(x)
    with pytest.raises(TargetError, match="callable"):
        CallableTarget("not callable", [0, 1], spec)  # type: ignore[arg-type]
    with pytest.raises(TargetError, match="output must be"):
        CallableTarget(lambda a: a, [0, 1], spec, output="scores")


def test_check_probabilities_clips_tiny_rounding_errors() -> None:
    p = np.array([[1.0 + 1e-6, -1e-6]])
    out = check_probabilities(p, 1, 2, source="m")
    assert out.min() >= 0 and out.max() <= 1


def test_wrap_model_python_factory_and_plain_callable(tmp_path: Path, rng: np.random.Generator) -> None:
    src = tmp_path / "factory.py"
    src.write_text("import torch\n"
                   "def make():\n"
                   "    torch.manual_seed(0)\n"
                   "    return torch.nn.Linear(3, 2)\n"
                   "def fn():\n"
                   "    import numpy as np\n"
                   "    return lambda a: np.tile([0.25, 0.75], (len(a), 1))\n"
                   "def weird():\n"
                   "    return 42\n")
    data = Dataset(rng.random((5, 3)), np.array([0, 1, 0, 1, 1]))
    t = load_target(f"python:{src}:make", data=data)
    assert isinstance(t, TorchTarget) and t.input_spec.shape == (3,)
    c = load_target(f"python:{src}:fn", data=data)
    assert isinstance(c, CallableTarget) and c.classes == [0, 1]
    np.testing.assert_allclose(c.predict_proba(data.x)[:, 1], 0.75)
    with pytest.raises(TargetError, match="cannot use an object of type int"):
        load_target(f"python:{src}:weird", data=data)
    with pytest.raises(UsageError, match="has no attribute 'nope'"):
        load_target(f"python:{src}:nope", data=data)
    with pytest.raises(UsageError, match="input shape is unknown"):
        load_target(f"python:{src}:make")


def test_threat_budget_on_a_black_box_target_reports_partial_results(rng: np.random.Generator) -> None:
    """The budget machinery is the same for every adapter; run a gradient attack on a torch twin."""
    from sklearn.linear_model import LogisticRegression

    x = rng.normal(size=(60, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int)
    target = load_target(LogisticRegression().fit(x, y), data=Dataset(x, y))
    assert target.white_box
    res = FGSM(eps=0.5, batch_size=20).run(target, x, target.predict(x), ThreatModel(eps=0.5, query_budget=80))
    assert not res.complete and res.queries == 80
