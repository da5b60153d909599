"""docs/api.md: every Python example runs, top to bottom, in one namespace, and prints what the
page says it prints (full-line ``# ...`` comments are expected output; ``...`` matches anything)."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def _blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def _expected(block: str) -> list[str]:
    return [line[2:] for line in block.splitlines() if line.startswith("# ")]


def test_api_doc_examples_run_and_print_what_they_say(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      digits_target) -> None:
    import torch

    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)
    blocks = _blocks(DOC.read_text())
    assert len(blocks) >= 10
    namespace: dict = {"__name__": "__docs__"}
    for i, block in enumerate(blocks):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block, f"{DOC.name}[block {i}]", "exec"), namespace)  # noqa: S102 - our own docs
        want = _expected(block)
        if not want:
            continue
        got = out.getvalue().splitlines()
        assert len(got) == len(want), (i, got, want)
        for g, w in zip(got, want):
            pattern = ".*".join(re.escape(part) for part in w.split("..."))
            assert re.fullmatch(pattern, g), (i, g, w)
