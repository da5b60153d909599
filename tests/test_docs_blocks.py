"""The code blocks of the docs (docs/*.md) run as written; README.md's are run by test_readme.py.

Each file's bash and python blocks run in order in a fresh directory (see ``docs_blocks``), with the
demo models from this session's shared cache. A block that cannot run here carries
``<!-- no-test: reason -->`` on the line before its fence; nothing else is skipped. A block that
takes more than ``SLOW_S`` seconds must say how long it takes, in the block or the lines above it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from docs_blocks import ROOT, MarkerError, parse, run_blocks, run_doc

DOCS = sorted((ROOT / "docs").glob("*.md"))


def test_markers_are_well_formed() -> None:
    """Every no-test marker has a reason and sits right before a runnable block, and no block that
    runs installs packages into the test environment."""
    problems = []
    for path in [ROOT / "README.md", *DOCS]:
        try:
            blocks = parse(path, str(path.relative_to(ROOT)))
        except MarkerError as exc:
            problems.append(str(exc))
            continue
        problems += [f"{b.where}: installs packages; mark it <!-- no-test: reason -->" for b in blocks
                     if b.runnable and re.search(r"\b(pip|apt-get|apt|conda)\s+install\b", b.code)]
        problems += [f"{path.name}:{n}: a code fence indented 4+ spaces is not run; indent it at most 3"
                     for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                     if re.match(r"^\s{4,}(```|~~~)", line)]
    assert not problems, problems


def test_the_runner_fails_a_failing_block_and_keeps_shell_state(tmp_path: Path) -> None:
    """The runner itself: state crosses blocks, an error stops the run and names the block."""
    doc = tmp_path / "doc.md"
    doc.write_text("```bash\nexport GREETING=hi\nmkdir sub && cd sub\n```\n\n"
                   "```python\nimport os\nassert os.environ['GREETING'] == 'hi' and os.getcwd().endswith('sub')\n"
                   "x = 41\n```\n\n<!-- no-test: shows a failure -->\n```bash\nfalse\n```\n\n"
                   "```python\nassert x + 1 == 42\n```\n\n```sh\nfalse && true\necho unreachable\n```\n")
    blocks = parse(doc)
    assert [b.runnable for b in blocks] == [True, True, False, True, True]
    outcome = run_blocks(blocks, tmp_path, dict(os.environ), timeout=120)
    assert not outcome.ok and outcome.failed is not None and outcome.failed.line == 21
    assert "unreachable" not in outcome.output  # a failure inside an && list stops the block too
    pipe = tmp_path / "pipe.md"
    pipe.write_text("```bash\nfalse | cat\necho unreachable\n```\n")
    assert not run_blocks(parse(pipe), tmp_path, dict(os.environ), timeout=60).ok
    bad = tmp_path / "bad.md"
    bad.write_text("<!-- no-test -->\n```bash\ntrue\n```\n")
    with pytest.raises(MarkerError, match="needs a reason"):
        parse(bad)


@pytest.mark.parametrize("path", DOCS, ids=[p.name for p in DOCS])
def test_doc_blocks_run_as_written(path: Path, tmp_path: Path, bastion_cache_dir: Path) -> None:
    if any(b.runnable for b in parse(path)):
        run_doc(path, tmp_path, bastion_cache_dir)
