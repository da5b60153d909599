"""The README's Python example runs as written and prints what it claims."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = _python_blocks()
    assert blocks, "the README has no Python example"
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(blocks[0], "README.md", "exec"), {})  # noqa: S102 - our own documentation
    lines = out.getvalue().splitlines()
    clean, robust = map(float, lines[0].split())
    claimed = re.search(r"print\(result.clean_accuracy, result.robust_accuracy\)\s+# ([\d.]+) ([\d.]+)", blocks[0])
    assert claimed, "the README no longer states the accuracies it expects"
    assert (clean, robust) == pytest.approx((float(claimed[1]), float(claimed[2])), abs=0.02)
    assert (tmp_path / "report" / "report.html").is_file()
