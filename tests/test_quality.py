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


@pytest.mark.skipif(sys.platform != "linux", reason="the C hot paths are for Linux")
def test_the_c_extension_is_built() -> None:
    """``pip install`` builds the process channel's C hot paths (the pure-Python fallback
    is for machines without a C compiler, and runs when CONVEYOR_PURE_PYTHON is set)."""
    import os

    from conveyor._channels import _shm

    if os.environ.get("CONVEYOR_PURE_PYTHON"):
        pytest.skip("CONVEYOR_PURE_PYTHON is set")
    assert _shm._native is not None, (
        "conveyor._channels._ring was not built: is a C compiler installed? "
        "(pip install -e . prints why with -v)"
    )


def test_the_locks_c_extension_is_built() -> None:
    """``pip install`` builds conveyor.sync's C locks too, and Lock and RLock use them
    (except on a free-threaded build, where they would turn the GIL back on)."""
    import os
    import sysconfig

    from conveyor import sync

    if os.environ.get("CONVEYOR_PURE_PYTHON"):
        pytest.skip("CONVEYOR_PURE_PYTHON is set")
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        assert not sync.NATIVE
        pytest.skip("free-threaded build: the pure-Python locks")
    assert sync.NATIVE, (
        "conveyor.sync._native was not built: is a C compiler installed? "
        "(pip install -e . prints why with -v)"
    )
