"""``bastion harden --dp``: DP-SGD on a tiny model through the real entry point; the accountant's ε
in the result and the report, BatchNorm converted with a note, bad ε / δ refused with exit 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("opacus")

from bastion.cli.main import main  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

MODELS = '''
import torch


def build():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                               torch.nn.Linear(8, 3))
'''

POLICY = """version: 2
seed: 0
target: {model: python:models.py:build}
datasets:
  eval: {source: npz:eval.npz}
  train: {source: npz:train.npz}
threat: {norm: linf, eps: 0.1}
harden:
  method: pgd-at
  epochs: 2
  batch_size: 16
  holdout: 8
  evaluate: {stages: [apgd-ce], steps: 2}
output: {dir: out, formats: [json]}
"""


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    (tmp_path / "models.py").write_text(MODELS)
    for name, n, seed in (("train", 48, 0), ("eval", 12, 1)):
        rng = np.random.default_rng(seed)
        y = np.arange(n) % 3
        x = rng.uniform(0, 0.3, (n, 1, 4, 4)).astype(np.float32)
        x[:, 0, y, :] += 0.6
        np.savez(tmp_path / f"{name}.npz", x=x.clip(0, 1), y=y)
    (tmp_path / "harden.yaml").write_text(POLICY)
    return tmp_path


def _main(args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
          cwd: Path) -> tuple[int, str, str]:
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["bastion", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    out, err = capsys.readouterr()
    return int(exit_.value.code or 0), out, " ".join(err.split())


def test_dp_reports_the_spent_epsilon_and_the_converted_layer(project: Path, capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = _main(["harden", "harden.yaml", "--dp", "--epsilon", "4", "--delta", "1e-3", "--json"],
                           capsys, monkeypatch, project)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["method"] == "dp-sgd" and doc["defenses"][0]["params"]["epsilon"] == 4
    p = doc["privacy"]
    assert 0 < p["epsilon"] <= 4 + 1e-6 and p["delta"] == 1e-3 and p["steps"] > 0 and p["noise_multiplier"] > 0
    assert any("BatchNorm1d -> GroupNorm" in n for n in doc["notes"])
    report = json.loads((project / "out" / "report.json").read_text())
    training = next(c for c in report["checks"] if c["name"] == "harden")
    assert [m["value"] for m in training["measurements"] if m["name"] == "dp_epsilon"] == [p["epsilon"]]


@pytest.mark.parametrize("args, words", [
    (["--dp", "--epsilon", "0"], ["epsilon", "greater than 0"]),
    (["--dp", "--epsilon", "1", "--delta", "1.5"], ["delta", "less than 1"]),
    (["--dp", "--epsilon", "1", "--delta", "0.1"], ["delta=0.1 must be below 1/n", "n = 40"]),
    (["--epsilon", "1"], ["--epsilon is a DP-SGD setting", "--dp"]),
    (["--dp", "--method", "trades"], ["--dp", "--method trades"]),
])
def test_bad_dp_input_exit_2_naming_the_field(project: Path, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch, args: list[str],
                                              words: list[str]) -> None:
    code, _, err = _main(["harden", "harden.yaml", *args], capsys, monkeypatch, project)
    assert code == 2, err
    for w in words:
        assert w in err, err
    assert not (project / "out").exists()


PRIVACY_POLICY = """version: 2
seed: 0
target: {model: python:models.py:build}
datasets:
  eval: {source: npz:eval.npz}
  train: {source: npz:train.npz}
  non_members: {source: npz:outside.npz}
harden:
  method: dp-sgd
  params: {epsilon: 8, delta: 1e-3, accountant: rdp}
  epochs: 2
  batch_size: 16
  holdout: 8
output: {dir: out, formats: [json]}
"""


@pytest.fixture()
def privacy_project(project: Path) -> Path:
    rng = np.random.default_rng(2)
    y = np.arange(100) % 3
    x = rng.uniform(0, 0.3, (100, 1, 4, 4)).astype(np.float32)
    x[:, 0, y, :] += 0.6
    np.savez(project / "outside.npz", x=x.clip(0, 1), y=y)
    (project / "privacy.yaml").write_text(PRIVACY_POLICY)
    return project


def test_dp_without_threat_eps_measures_membership_before_and_after(
        privacy_project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """No threat section: no evasion attack runs (robust accuracy 'not measured', not a failure);
    with datasets.non_members the report holds the membership check on the target (members: the
    train role) and on the DP model (members: the 40 records it trained on, holdout excluded)."""
    code, out, err = _main(["harden", "privacy.yaml", "--json"], capsys, monkeypatch, privacy_project)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["eps"] is None and doc["privacy"]["epsilon"] <= 8 + 1e-6
    for side in ("before", "after"):
        assert doc[side]["status"] == "not measured" and doc[side]["robust_accuracy"] is None
        assert 0 <= doc[side]["clean_accuracy"] <= 1
    assert [e["robust_accuracy"] for e in doc["epochs"]] == [None, None]
    [mi] = doc["membership"]
    assert mi["attack"] == "loss-threshold" and mi["members_before"] == 48 and mi["members_after"] == 40
    assert mi["non_members"] == 100
    for key in ("auc_before", "auc_after", "tpr_at_1pct_fpr_before", "tpr_at_1pct_fpr_after"):
        assert 0 <= mi[key] <= 1, key
    report = json.loads((privacy_project / "out" / "report.json").read_text())
    assert [c["name"] for c in report["checks"]] == ["membership (before)", "harden", "membership (after)"]
    assert report["status"] == "complete"
    after = report["checks"][2]
    aucs = [m["value"] for m in after["measurements"] if m["name"] == "membership_auc"]
    assert aucs == [mi["auc_after"]]


def test_dp_summary_says_robustness_not_measured(privacy_project: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    (privacy_project / "privacy.yaml").write_text(PRIVACY_POLICY.replace("  non_members: {source: npz:outside.npz}\n",
                                                                         "").replace("epochs: 2", "epochs: 1"))
    code, out, err = _main(["harden", "privacy.yaml", "--quiet"], capsys, monkeypatch, privacy_project)
    assert code == 0, err
    code, out, err = _main(["harden", "privacy.yaml"], capsys, monkeypatch, privacy_project)
    assert code == 0, err
    text = " ".join(out.split())
    assert "no evasion ε" in text and "not measured" in text and "membership" not in text


def test_an_evasion_defense_without_threat_eps_is_still_refused(project: Path, capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (project / "harden.yaml").write_text(POLICY.replace("threat: {norm: linf, eps: 0.1}\n", ""))
    code, _, err = _main(["harden", "harden.yaml", "--method", "gaussian-noise"], capsys, monkeypatch, project)
    assert code == 2 and "has no ε: set threat.eps" in err, err


def test_bad_membership_parameters_are_refused_before_training(privacy_project: Path,
                                                               capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (privacy_project / "privacy.yaml").write_text(PRIVACY_POLICY.replace("  holdout: 8\n",
                                                                         "  holdout: 8\n  membership: {attacks: [nope]}\n"))
    code, _, err = _main(["harden", "privacy.yaml"], capsys, monkeypatch, privacy_project)
    assert code == 2 and "membership" in err and "nope" in err, err
    assert not (privacy_project / "out").exists()
