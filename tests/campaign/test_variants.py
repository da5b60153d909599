"""The ``variants`` check: a model and its deployment variants side by side (int8 in PyTorch and ONNX
Runtime, a distilled student, the user's files): a markedly weaker variant is found with its test,
a quantised variant is attacked through the full model's gradients (never its own, which are
missing), transfer is measured both ways, and bad variants are refused by name (exit 2)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bastion.campaign.policy import load_policy
from bastion.campaign.runner import scan
from bastion.campaign.variants import build_variants, evaluate_variants
from bastion.cli.main import main
from bastion.core.spec import InputSpec
from bastion.core.targets.torch_target import TorchTarget
from bastion.core.targets.variants import StandInTarget, torch_int8
from bastion.errors import PolicyError, TargetError, UsageError

SPEC = InputSpec(shape=(1, 4, 4), lower=0.0, upper=1.0, kind="image")


class Linear2(torch.nn.Module):
    """Two classes decided by pixel 0 (0.1 or 0.9 in the data); ``leak`` adds the sum of the other pixels
    minus their clean value 0.5: the same answers on the data, but an L∞ attacker moving those 15 pixels
    by ε changes the margin by 15·leak·ε."""

    def __init__(self, leak: float = 0.0) -> None:
        super().__init__()
        self.leak = leak

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        m = (flat[:, 0] - 0.5) + self.leak * (flat[:, 1:] - 0.5).sum(1) * torch.where(flat[:, 0] > 0.5, -1.0, 1.0)
        return torch.stack([-m, m], dim=1) * 4


def data(n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    y = np.arange(n) % 2
    x = np.full((n, 1, 4, 4), 0.5, np.float32)
    x[:, 0, 0, 0] = np.where(y == 1, 0.9, 0.1)
    return x, y


def target(leak: float = 0.0) -> TorchTarget:
    return TorchTarget(Linear2(leak), SPEC)


PGD = {"name": "pgd", "params": {"steps": 10}}


def test_a_markedly_less_robust_variant_is_flagged_with_its_paired_test() -> None:
    x, y = data()
    full = target()
    weak = build_variants(full, quantize=[], distilled=Linear2(leak=0.2))
    res = evaluate_variants(full, x, y, weak, attacks=[PGD], eps=0.1)
    f, d = res.row("full"), res.row("distilled")
    assert (f.clean_accuracy, f.robust_accuracy) == (1.0, 1.0)
    assert (d.clean_accuracy, d.agreement, d.robust_accuracy) == (1.0, 1.0, 0.0)  # same answers, no robustness
    assert d.gradients == "own" and d.only_full_robust == 40 and d.only_variant_robust == 0
    assert d.p_value == pytest.approx(0.5 ** 40) and d.flagged and res.weaker == [d]
    assert d.transfer_to_full == 0.0  # its adversarial inputs move the leak pixels, which the full model ignores
    assert d.transfer_from_full is None  # nothing fooled the full model


def test_an_equally_robust_variant_is_not_flagged() -> None:
    x, y = data()
    full = target(leak=0.2)
    res = evaluate_variants(full, x, y, build_variants(full, quantize=[], distilled=Linear2(leak=0.2)),
                            attacks=[PGD], eps=0.1)
    d = res.row("distilled")
    assert d.robust_accuracy == res.row("full").robust_accuracy == 0.0
    assert not d.flagged and d.p_value == 1.0 and d.transfer_from_full == d.transfer_to_full == 1.0


def test_the_threshold_holds_back_a_significant_but_small_drop() -> None:
    x, y = data()
    full = target()
    variants = build_variants(full, quantize=[], distilled=Linear2(leak=0.2))
    res = evaluate_variants(full, x, y, variants, attacks=[PGD], eps=0.1, threshold=1.0)
    assert res.row("distilled").drop == 1.0 and res.row("distilled").flagged  # drop >= threshold
    res = evaluate_variants(full, x[:4], y[:4], variants, attacks=[PGD], eps=0.1)
    assert not res.row("distilled").flagged  # 4 of 4 inputs: p = 1/16, not below alpha = 0.01


class Mlp(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 32), torch.nn.ReLU(),
                                       torch.nn.Linear(32, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_the_int8_variant_predicts_with_int8_weights_and_takes_the_full_models_gradients() -> None:
    full = TorchTarget(Mlp(), SPEC)
    q = torch_int8(full)
    assert isinstance(q, StandInTarget) and not q.white_box
    x = np.random.default_rng(0).random((16, 1, 4, 4)).astype(np.float32)
    assert not np.array_equal(q.predict_proba(x), full.predict_proba(x))  # int8 weights answer
    np.testing.assert_allclose(q.predict_proba(x), full.predict_proba(x), atol=0.05)
    # the quantised module itself passes no gradient (autograd finds no path): attacking it directly masks
    xt = torch.from_numpy(x).requires_grad_(True)
    (g,) = torch.autograd.grad(q.inner.logits(xt).sum(), xt, allow_unused=True)
    assert g is None
    # its adaptive view: the variant's own outputs, the full model's gradient
    view = q.adaptive_view()
    xt = torch.from_numpy(x).requires_grad_(True)
    out = view.logits(xt)
    np.testing.assert_allclose(out.detach().numpy(), np.log(q.predict_proba(x)), atol=1e-5)
    (g,) = torch.autograd.grad(out[:, 1].sum(), xt)
    xf = torch.from_numpy(x).requires_grad_(True)
    (gf,) = torch.autograd.grad(torch.log_softmax(full.module(xf), 1)[:, 1].sum(), xf)
    torch.testing.assert_close(g, gf)


class Rounded(torch.nn.Module):
    """A white-box model with a rounding step: zero input gradients everywhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return Linear2(0.2)(torch.round(x * 10) / 10)


def test_a_variant_whose_own_gradients_are_zero_is_attacked_through_the_full_models() -> None:
    x, y = data()
    full = target(leak=0.2)
    variants = build_variants(full, quantize=[], distilled=Rounded())
    assert variants[0].gradients == "own"  # declared white-box: the probe decides
    res = evaluate_variants(full, x, y, variants, attacks=[PGD], eps=0.1)
    d = res.row("distilled")
    assert d.gradients == "full model (BPDA)" and "own gradients unusable" in d.notes[0]
    assert d.robust_accuracy == 0.0  # not the 100% its zero gradients would have given


def test_build_variants_quantises_in_torch_and_onnx_runtime() -> None:
    full = TorchTarget(Mlp(), SPEC)
    variants = build_variants(full)
    assert [(v.name, v.gradients) for v in variants] == [("torch-int8", "full model (BPDA)"),
                                                          ("onnx-int8", "full model (BPDA)")]
    onnx = variants[1].target
    assert isinstance(onnx, StandInTarget) and onnx.inner.kind == "onnx"
    x = np.random.default_rng(1).random((8, 1, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(onnx.predict_proba(x), full.predict_proba(x), atol=0.05)


# --- the check in a scan, and bad input ------------------------------------------------------------
def _policy(tmp_path: Path, **check: object) -> dict:
    return {"version": 1, "name": "t", "target": {"model": "demo:digits-cnn"},
            "data": {"source": "demo:digits", "limit": 16},
            "checks": [{"name": "edge", "kind": "variants", "attacks": [{"name": "pgd", "params": {"steps": 3}}],
                        "blackbox": {"name": "square", "params": {"max_queries": 30}}, "samples": 16, **check}],
            "gates": ["robust_accuracy[edge, variant=torch-int8, attack=all] >= 0"],
            "output": {"dir": str(tmp_path / "r"), "formats": ["json", "html"]}}


def test_the_check_reports_a_table_and_a_plot_and_gates_read_it(tmp_path: Path) -> None:
    result = scan(_policy(tmp_path), out_dir=tmp_path / "r")
    res = result.checks[0]
    assert res.status == "complete", res.reason
    assert [r["variant"] for r in res.metrics["variants"]] == ["full", "torch-int8", "onnx-int8"]
    assert res.values("agreement", variant="torch-int8")[0] >= 0.9
    assert res.values("robust_accuracy", variant="full", attack="all")[0] <= \
        res.values("robust_accuracy", variant="full", attack="pgd")[0]
    assert result.gates[0].passed and result.gates[0].where["variant"] == "torch-int8"
    html = (tmp_path / "r" / "report.html").read_text(encoding="utf-8")
    assert "agrees with full" in html and "data:image/svg" in html and "torch-int8" in html


def test_a_scan_builds_the_variants_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bastion.campaign.variants as variants_module

    calls = []
    real = variants_module.build_variants
    monkeypatch.setattr(variants_module, "build_variants", lambda *a, **k: calls.append(1) or real(*a, **k))
    policy = _policy(tmp_path, quantize=["torch-int8"], samples=8, blackbox=None)
    result = scan({**policy, "data": {"source": "demo:digits", "limit": 8}}, out_dir=tmp_path / "r")
    assert result.checks[0].status == "complete", result.checks[0].reason
    assert len(calls) == 1  # in prepare (a bad variant file stops the scan there); run reuses them


@pytest.mark.parametrize("check,words", [
    ({"quantize": ["tflite"]}, ["checks[0].quantize[0]", "torch-int8"]),
    ({"quantize": []}, ["no variant to compare"]),
    ({"attacks": ["nope"]}, ["unknown attack 'nope'"]),
    ({"models": [{"name": "edge", "model": "onnx:missing.onnx"}]}, ["checks[0].models[0].model", "no such model"]),
    ({"attacks": [{"name": "pgd", "params": {"eps": 1}}]}, ["set 'eps' on the check"]),
])
def test_a_bad_policy_is_refused_naming_the_field(tmp_path: Path, check: dict, words: list[str]) -> None:
    with pytest.raises(PolicyError) as err:
        load_policy(_policy(tmp_path, **check))
    for w in words:
        assert w in str(err.value), err.value


def _cli(args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["bastion", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    return int(exit_.value.code or 0), " ".join(capsys.readouterr().err.split())


def test_a_variant_that_is_not_a_model_or_has_other_classes_is_refused_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    (tmp_path / "edge.onnx").write_bytes(b"this is not an ONNX model")
    (tmp_path / "three.py").write_text("import torch\n\ndef build():\n    return torch.nn.Sequential("
                                       "torch.nn.Flatten(), torch.nn.Linear(64, 3))\n")
    for model, words in [("onnx:edge.onnx", ["checks[0]", "edge.onnx"]),
                         ("python:three.py:build", ["checks[0]", "variant 'edge'", "(batch, 10)"])]:
        policy = {**_policy(tmp_path, quantize=[], models=[{"name": "edge", "model": model}]), "gates": []}
        (tmp_path / "p.yaml").write_text(yaml.safe_dump(policy))
        code, err = _cli(["scan", str(tmp_path / "p.yaml")], capsys, monkeypatch)
        assert code == 2, err
        for w in words:
            assert w in err, err


def test_a_variant_with_other_classes_is_refused_in_python() -> None:
    with pytest.raises(TargetError, match="variant 'distilled'.*expected \\(batch, 2\\)"):
        build_variants(target(), quantize=[], distilled=torch.nn.Sequential(torch.nn.Flatten(),
                                                                            torch.nn.Linear(16, 3)))


def test_a_black_box_attack_joins_for_every_model_when_a_variant_borrows_gradients() -> None:
    x, y = data(12)
    full = target(leak=0.2)
    variants = build_variants(full, quantize=[], distilled=Rounded())
    res = evaluate_variants(full, x, y, variants, attacks=[PGD], eps=0.1,
                            blackbox={"name": "square", "params": {"max_queries": 20}})
    assert res.attacks == ["pgd", "square"] and set(res.by_attack["full"]) == {"pgd", "square"}
    assert not res.row("distilled").notes[1:]
    res = evaluate_variants(full, x, y, variants, attacks=[PGD], eps=0.1, blackbox=None)
    assert res.attacks == ["pgd"] and "an upper bound" in res.row("distilled").notes[-1]
    assert not res.row("full").notes
    with pytest.raises(UsageError, match="blackbox: 'pgd' uses gradients"):
        evaluate_variants(full, x, y, variants, attacks=[PGD], eps=0.1, blackbox="pgd")


def test_ctrl_c_keeps_the_models_measured_in_full(monkeypatch: pytest.MonkeyPatch) -> None:
    from bastion.attacks.evasion.pgd import PGD as Pgd

    real = Pgd._attack_batch

    def stop_on_the_student(self, target, x, goal, rows, run):  # noqa: ANN001, ANN202
        if target.name == "distilled":
            raise KeyboardInterrupt
        return real(self, target, x, goal, rows, run)

    monkeypatch.setattr(Pgd, "_attack_batch", stop_on_the_student)
    x, y = data(12)
    full = target()
    variants = build_variants(full, quantize=[], distilled=Linear2(leak=0.2))
    variants[0].target.name = "distilled"
    res = evaluate_variants(full, x, y, variants, attacks=[PGD], eps=0.1)
    assert res.interrupted and not res.complete and "interrupted during pgd on 'distilled'" in res.reason
    assert [r.variant for r in res.rows] == ["full"] and list(res.by_attack) == ["full"]


def test_the_finding_points_to_its_rule_with_the_evasion_threat_ids_and_its_test() -> None:
    from bastion.campaign.checks.variants import VariantsCheck, VariantsParams

    x, y = data()
    full = target()
    res = evaluate_variants(full, x, y, build_variants(full, quantize=[], distilled=Linear2(leak=0.2)),
                            attacks=[PGD], eps=0.1)
    check = VariantsCheck("edge", VariantsParams(quantize=[], distilled="python:student.py:make", attacks=["pgd"]))
    out = check._result(res, 1.0)
    (finding,) = out.findings
    assert finding.rule_id == "BASTION-VA-001" and finding.atlas == ["AML.T0015", "AML.T0043"]
    assert finding.owasp == ["ML01"] and finding.severity.value == "critical"  # a 100-point drop
    assert finding.metrics["p_value"] == pytest.approx(0.5 ** 40) and finding.metrics["only_full_robust"] == 40
    assert "40 withstand every attack on the full model" in finding.description
    assert out.values("robustness_drop", variant="distilled") == [1.0]
    assert out.values("robust_accuracy", variant="full", attack="all") == [1.0]
    table = out.artifacts[0]
    assert table.type == "variant_table" and [r.flagged for r in table.rows] == [False, True]


def test_user_onnx_files_are_loaded_as_variants_and_quantised(tmp_path: Path) -> None:
    from bastion.core.targets.variants import onnx_export

    full = TorchTarget(Mlp(), SPEC)
    onnx_export(full, tmp_path / "edge.onnx")
    variants = build_variants(full, quantize=["onnx-int8"], onnx="edge.onnx", base_dir=tmp_path,
                              models=[{"name": "phone", "model": "onnx:edge.onnx"}])
    assert [(v.name, v.source, v.gradients) for v in variants] == [
        ("onnx-int8", "onnx-int8", "full model (BPDA)"), ("phone", "file", "full model (BPDA)")]
    assert "given ONNX file" in variants[0].notes[0]
    x = np.random.default_rng(2).random((8, 1, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(variants[1].target.predict_proba(x), full.predict_proba(x), atol=1e-5)
    with pytest.raises(UsageError, match="differentiable"):
        build_variants(full, quantize=[], base_dir=tmp_path,
                       models=[{"name": "phone", "model": "onnx:edge.onnx", "differentiable": True}])
