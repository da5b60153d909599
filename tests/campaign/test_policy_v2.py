"""Policy v2: datasets by role, a trainer, a threat that checks may override, target defenses,
and requirements refused before anything runs (issue 8, item 7). v1 policies load unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest

from bastion.campaign import DEMO_POLICIES, packaged_policy
from bastion.campaign.checks.base import CHECKS, Check, CheckContext, register_check
from bastion.campaign.policy import load_policy
from bastion.core.results import CheckResult
from bastion.errors import PolicyError

V2 = """version: 2
name: v2
target:
  model: demo:breast-cancer
datasets:
  eval: {source: demo:breast-cancer, limit: 50}
  train: {source: demo:breast-cancer}
trainer: sklearn:sklearn.linear_model:LogisticRegression
threat:
  knowledge: white
  norm: linf
  eps: [0.05, 0.1]
checks:
  - {name: pgd, kind: evasion, attack: pgd}
  - name: pgd-l2
    kind: evasion
    attack: pgd
    threat: {norm: l2, eps: 0.5}
  - {name: own, kind: evasion, attack: fgsm, eps: [0.3]}
  - {name: gm, kind: gradient-masking}
gates:
  - robust_accuracy[pgd, eps=0.1] >= 0.1
  - robust_accuracy[pgd-l2, norm=l2, eps=0.5] >= 0.1
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "policy.yaml"
    p.write_text(text)
    return p


def test_v2_threat_is_inherited_and_overridden(tmp_path: Path) -> None:
    loaded = load_policy(_write(tmp_path, V2))
    pol = loaded.policy
    assert pol.data is not None and pol.data.limit == 50                 # datasets.eval is what attacks run on
    assert set(pol.datasets.given()) == {"eval", "train"}
    assert pol.trainer.spec.startswith("sklearn:")
    by_name = {c.name: c.params for c in loaded.checks}
    assert by_name["pgd"].eps == [0.05, 0.1] and by_name["pgd"].norm == "linf"
    assert by_name["pgd-l2"].eps == [0.5] and by_name["pgd-l2"].norm == "l2"
    assert by_name["own"].eps == [0.3]                                   # the check's own field wins
    assert by_name["gm"].eps == 0.1                                      # one ε: the threat's largest


@pytest.mark.parametrize("edit, line, field, words", [
    (("  - {name: pgd, kind: evasion, attack: pgd}\n", "  - {name: pgd, kind: evasion, attack: pgd, params: {steps: 0}}\n"),
     14, "checks[0].params.steps", "steps"),
    (("  eps: [0.05, 0.1]\n", "  eps: [-1]\n"), 12, "threat.eps", "eps"),
    (("    threat: {norm: l2, eps: 0.5}\n", "    threat: {norm: l3}\n"), 18, "checks[1].threat.norm", "l3"),
    (("  knowledge: white\n", "  knowledge: black\n"), 14, "checks[0]", "needs gradients"),
    (("trainer: sklearn:sklearn.linear_model:LogisticRegression\n", "trainer: train.py\n"), 8, "trainer.spec",
     "python:FILE.py:FUNCTION"),
    (("datasets:\n", "data: {source: demo:breast-cancer}\ndatasets:\n"), None, None, "datasets: {eval"),
    (("  model: demo:breast-cancer\n", "  model: demo:breast-cancer\n  defenses: [{name: jpeg2000}]\n"), 5,
     "target.defenses[0].name", "unknown defense 'jpeg2000'"),
    (("  model: demo:breast-cancer\n", "  model: demo:breast-cancer\n  defenses: [{kind: jpeg, quality: 0}]\n"),
     5, "target.defenses[0].quality", "quality=0 is not allowed"),
    (("  model: demo:breast-cancer\n", "  model: demo:breast-cancer\n  defenses: [{name: pgd-at}]\n"), 5,
     "target.defenses[0].name", "'pgd-at' is a training defense"),
])
def test_v2_errors_point_at_the_line_and_field(tmp_path: Path, edit: tuple[str, str], line: int | None,
                                               field: str | None, words: str) -> None:
    assert edit[0] in V2
    with pytest.raises(PolicyError) as err:
        load_policy(_write(tmp_path, V2.replace(edit[0], edit[1], 1)))
    e = err.value
    assert words in str(e), str(e)
    if line is not None:
        assert (e.line, e.field) == (line, field), str(e)


def test_v1_refuses_v2_sections(tmp_path: Path) -> None:
    text = V2.replace("version: 2", "version: 1")
    with pytest.raises(PolicyError, match="need 'version: 2'"):
        load_policy(_write(tmp_path, text))


class _NeedsTraining(Check):
    """A check that trains shadow models: it needs a trainer and training data."""

    kind = "needs-training-test"
    requires: ClassVar[frozenset[str]] = frozenset({"trainer", "train", "holdout"})

    def run(self, ctx: CheckContext) -> CheckResult:  # pragma: no cover - never runs here
        raise AssertionError


@pytest.fixture()
def needs_training():
    register_check(_NeedsTraining)
    yield
    CHECKS.remove(_NeedsTraining.kind)


@pytest.mark.parametrize("remove, words, line", [
    ("trainer: sklearn:sklearn.linear_model:LogisticRegression\n", "needs a trainer", 18),
    ("", "needs the dataset(s) holdout", 19),
])
def test_requirements_are_refused_before_anything_runs(tmp_path: Path, needs_training, remove: str,
                                                        words: str, line: int) -> None:
    text = V2.replace(remove, "") if remove else V2
    text = text.replace("  - {name: own, kind: evasion, attack: fgsm, eps: [0.3]}\n",
                        "  - {name: shadow, kind: needs-training-test}\n")
    with pytest.raises(PolicyError, match=words.replace("(", r"\(").replace(")", r"\)")) as err:
        load_policy(_write(tmp_path, text))
    assert err.value.line == line and err.value.field == "checks[2]"


def test_examples_and_packaged_policies_load() -> None:
    root = Path(__file__).resolve().parents[2] / "examples"
    for p in [*root.glob("*.yaml"), *(packaged_policy(n) for n in DEMO_POLICIES)]:
        loaded = load_policy(p)
        assert loaded.checks or loaded.policy.harden is not None, p  # a harden policy runs with bastion harden
    assert load_policy(root / "bastion-v2.yaml").policy.version == 2
