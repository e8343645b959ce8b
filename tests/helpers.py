"""Helpers shared by the tests (importable by worker processes too)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path


class Gate:
    """A one-way latch that works across threads and processes: a file appears.

    Stage code waits on it (polling is the stage's business, not the test's); the
    test opens it when it has checked the state it wanted to see.
    """

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def open(self) -> None:
        Path(self.path).touch()

    def is_open(self) -> bool:
        return os.path.exists(self.path)

    def wait(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.path):
            if time.monotonic() > deadline:
                raise TimeoutError(f"gate {self.path} never opened")
            time.sleep(0.002)


def mark(directory: str | Path, name: str) -> None:
    """Leave a marker file (safe from any process)."""
    fd = os.open(os.path.join(directory, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    os.close(fd)


def marks_named(directory: str | Path, prefix: str) -> list[str]:
    return sorted(p for p in os.listdir(directory) if p.startswith(prefix))


def wait_until(
    predicate: Callable[[], bool], what: str, timeout: float = 30.0, every: float = 0.002
) -> None:
    """Poll a state that another thread or process changes; fail only if it never comes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(every)
