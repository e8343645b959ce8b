from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import Gate

KINDS = ["thread", "process"]


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    """Run the test once per worker kind."""
    return str(request.param)


@pytest.fixture
def gate(tmp_path: Path) -> Gate:
    return Gate(tmp_path / "gate")


@pytest.fixture
def marks(tmp_path: Path) -> Path:
    """A directory where stage code (in any process) leaves marker files."""
    d = tmp_path / "marks"
    d.mkdir()
    return d
