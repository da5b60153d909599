"""Helpers for end-to-end CLI tests: run the installed ``bastion`` console script."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def cli_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("BASTION_CACHE_DIR", str(tmp_path_factory.mktemp("bastion-cache")))
    env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "2")
    env["COLUMNS"] = "200"
    return env


@pytest.fixture(scope="session")
def bastion_exe() -> list[str]:
    return bastion_cmd()


@pytest.fixture(scope="session")
def cli(cli_env: dict[str, str]):  # noqa: ANN201 - returns the runner
    """Run ``bastion ARGS`` and return the CompletedProcess."""
    return lambda args, cwd=None, timeout=240: run_cli(args, cli_env, cwd=cwd, timeout=timeout)


def bastion_cmd() -> list[str]:
    exe = shutil.which("bastion", path=str(Path(sys.executable).parent)) or shutil.which("bastion")
    return [exe] if exe else [sys.executable, "-m", "bastion"]


def run_cli(args: list[str], env: dict[str, str], cwd: Path | None = None,
            timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(bastion_cmd() + args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
