"""Fixtures for the inspect tests: the generated corpus, built once per session in a temp dir."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import corpus  # noqa: E402


@pytest.fixture(scope="session")
def malicious_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[corpus.Item]]:
    root = tmp_path_factory.mktemp("malicious")
    return root, corpus.build_malicious(root)


@pytest.fixture(scope="session")
def benign_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[corpus.Item]]:
    root = tmp_path_factory.mktemp("benign")
    return root, corpus.build_benign(root)
