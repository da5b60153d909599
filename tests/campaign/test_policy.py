"""Policy validation: every error names the file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.campaign import DEMO_POLICIES, packaged_policy
from bastion.campaign.policy import load_policy
from bastion.errors import PolicyError

HEAD = "version: 1\ntarget:\n  model: demo:digits-cnn\ndata:\n  source: demo:digits\n"


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "policy.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("body, line, field, words", [
    ("checks:\n  - name: a\n    kind: evasion\n    epz: 0.1\n", 9, "checks[0].epz", "unknown field"),
    ("checks:\n  - name: a\n    kind: evasion\n    norm: l3\n", 9, "checks[0].norm", "'linf' or 'l2'"),
    ("checks:\n  - name: a\n    kind: evade\n", 8, "checks[0].kind", "unknown check kind"),
    ("checks:\n  - name: a\n    kind: evasion\n    attack: nope\n", 9, "checks[0].attack", "unknown attack"),
    ("checks:\n  - name: a\n    kind: evasion\n    eps: [-1]\n", 9, "checks[0].eps[0]", ">= 0"),
    ("checks:\n  - {name: a, kind: evasion}\ngates:\n  - 'robust_accuracy >> 3'\n", 9, "gates[0]", "cannot parse"),
    ("checks: []\n", 6, "checks", "at least 1"),
    ("checks:\n  - {name: a, kind: evasion}\n  - {name: a, kind: evasion}\n", None, None, "unique"),
    ("checks:\n  - {name: a, kind: evasion, params: {stepz: 3}}\n", 7, "checks[0].params.stepz", "stepz"),
    ("checks:\n  - name: a\n    kind: evasion\n    attack: pgd\n    params:\n      steps: -3\n", 11,
     "checks[0].params.steps", "steps"),
])
def test_invalid_policies(tmp_path: Path, body: str, line: int | None, field: str | None, words: str) -> None:
    path = _write(tmp_path, HEAD + body)
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    e = err.value
    assert e.file == str(path)
    if line is not None:
        assert e.line == line, str(e)
    if field is not None:
        assert e.field == field
    assert words in str(e)
    assert e.exit_code == 2


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "version: 1\nchecks:\n  - name: a\n    eps: [0.1\n")
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    assert "not valid YAML" in str(err.value) and err.value.line is not None


def test_missing_target_for_model_check(tmp_path: Path) -> None:
    path = _write(tmp_path, "version: 1\nchecks:\n  - {name: a, kind: evasion}\n")
    with pytest.raises(PolicyError, match="needs 'target' and 'data'"):
        load_policy(path)


@pytest.mark.parametrize("name", DEMO_POLICIES)
def test_packaged_policies_are_valid(name: str) -> None:
    loaded = load_policy(packaged_policy(name))
    assert loaded.checks and loaded.gates


# ------------------------------------------------------------------ bad input, clear errors (issue 7)
def test_policy_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_bytes("version: 1\nname: caf\xe9\n".encode("latin-1"))
    with pytest.raises(PolicyError, match="not UTF-8") as err:
        load_policy(path)
    assert err.value.line == 2 and err.value.file == str(path)


@pytest.mark.parametrize("body, field", [
    ("seed: -1\nchecks:\n  - {name: a, kind: evasion}\n", "seed"),
    ("data: {source: demo:digits, seed: -5}\nchecks:\n  - {name: a, kind: evasion}\n", "data.seed"),
])
def test_negative_seed_is_refused(tmp_path: Path, body: str, field: str) -> None:
    text = HEAD.replace("data:\n  source: demo:digits\n", "") if body.startswith("data") else HEAD
    with pytest.raises(PolicyError, match="greater than or equal to 0") as err:
        load_policy(_write(tmp_path, text + body))
    assert err.value.field == field


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    text = HEAD + "checks:\n  - {name: a, kind: evasion}\nchecks:\n  - {name: b, kind: evasion}\n"
    with pytest.raises(PolicyError, match="duplicate key 'checks' \\(first on line 6\\)") as err:
        load_policy(_write(tmp_path, text))
    assert err.value.line == 8


def test_scalar_eps_in_exponent_notation(tmp_path: Path) -> None:
    loaded = load_policy(_write(tmp_path, HEAD + "checks:\n  - name: a\n    kind: evasion\n    eps: 3e-2\n"))
    assert loaded.checks[0].params.eps == [0.03]
