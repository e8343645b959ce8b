"""Both implementations of ``conveyor.sync``'s Lock and RLock run every lock test: the
C types (when built) and the pure-Python classes they fall back to. A test module
takes part by importing ``lock_implementation`` (an autouse fixture)."""

from __future__ import annotations

import pytest

from conveyor import sync
from conveyor.sync import _locks

IMPLEMENTATIONS = ["native", "python"]


def classes(name: str) -> tuple[type[sync.Lock], type[sync.RLock]]:
    """(Lock, RLock) of implementation ``name``; skips the test when it is not here."""
    if name == "python":
        return _locks.PyLock, _locks.PyRLock
    if not _locks.NATIVE:
        pytest.skip("conveyor.sync._native is not built (or CONVEYOR_PURE_PYTHON is set)")
    return _locks.NativeLock, _locks.NativeRLock  # type: ignore[return-value]


@pytest.fixture(params=IMPLEMENTATIONS, autouse=True)
def lock_implementation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """``sync.Lock`` and ``sync.RLock`` (and the RLock a Condition makes) are this
    implementation's for the test."""
    lock, rlock = classes(request.param)
    for module in (sync, _locks):
        monkeypatch.setattr(module, "Lock", lock)
        monkeypatch.setattr(module, "RLock", rlock)
    return str(request.param)
