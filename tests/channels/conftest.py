"""Both implementations of the process channel run every channel test: the C hot paths
(when built) and the pure-Python code they fall back to."""

from __future__ import annotations

import pytest

from conveyor._channels._shm import ProcessChannel

IMPLEMENTATIONS = ["native", "python"]


def use_implementation(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the process channels this test creates use ``name``'s code (children follow)."""
    monkeypatch.setattr(ProcessChannel, "_use_native", name == "native")


@pytest.fixture(params=IMPLEMENTATIONS)
def implementation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    use_implementation(request.param, monkeypatch)
    return str(request.param)
