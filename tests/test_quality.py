"""Static checks run as tests, so that the README's one test command covers them:
mypy --strict on the package, ruff lint and format on the tree."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    return found


def check(*cmd: str) -> None:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_strict() -> None:
    check(tool("mypy"))


def test_ruff_lint() -> None:
    check(tool("ruff"), "check", "src", "tests", "examples", "bench")


def test_ruff_format() -> None:
    check(tool("ruff"), "format", "--check", "src", "tests", "examples", "bench")
