"""The README's code blocks run as written, and its Python example prints the figures it claims.

Run through the same runner as the docs (``docs_blocks``): one fresh directory, the blocks in order,
the session's demo models. The API example takes about 30 s on 2 loaded cores (a PGD run, a
robustness curve and a scan of the breast-cancer demo).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from docs_blocks import ROOT, run_doc

README = ROOT / "README.md"
_CLAIM = re.compile(r"print\(result\.clean_accuracy, result\.robust_accuracy\)\s+# ([\d.]+) ([\d.]+)")


def test_readme_blocks_run_and_print_what_they_claim(tmp_path: Path, bastion_cache_dir: Path) -> None:
    blocks, outcome = run_doc(README, tmp_path, bastion_cache_dir)
    api = [b for b in blocks if b.runnable and b.lang == "python" and _CLAIM.search(b.code)]
    assert len(api) == 1, "the README no longer states the accuracies its API example prints"
    claimed = _CLAIM.search(api[0].code)
    printed = outcome.output.split(f">>> block {api[0].where} (python)", 1)[1].strip().splitlines()[0]
    clean, robust = map(float, printed.split())
    assert (clean, robust) == pytest.approx((float(claimed[1]), float(claimed[2])), abs=0.02)
    assert (tmp_path / "work" / "report" / "report.html").is_file()
