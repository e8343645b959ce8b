"""Helpers for testing code that uses conveyor: wait for state, never for time.

A test that sleeps "long enough" fails on a loaded machine and wastes time on an
idle one. These helpers poll a condition and return as soon as it holds; their
timeout only exists to turn a hang into a failure that says what it waited for.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._run import Run

__all__ = ["wait_all_workers_blocked", "wait_until", "wait_worker_state"]

DEFAULT_TIMEOUT = 30.0


def wait_until(
    predicate: Callable[[], object], timeout: float = DEFAULT_TIMEOUT, what: str = ""
) -> None:
    """Return as soon as ``predicate()`` is true; raise ``TimeoutError`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout}s for {what or predicate!r}")
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


def wait_worker_state(
    run: Run[object], worker: str, states: str | tuple[str, ...], timeout: float = DEFAULT_TIMEOUT
) -> None:
    """Wait until the named worker (such as ``"parse-1"``) is in one of ``states``."""
    wanted = (states,) if isinstance(states, str) else states

    def check() -> bool:
        return any(w.name == worker and w.state in wanted for w in run.workers())

    wait_until(check, timeout, f"worker {worker} to be {' or '.join(wanted)}")


def wait_all_workers_blocked(run: Run[object], timeout: float = DEFAULT_TIMEOUT) -> None:
    """Wait until no worker of the run is busy or starting: each one waits for input,
    for room downstream, or has ended."""

    def check() -> bool:
        return all(w.state in ("idle", "blocked", "done") for w in run.workers())

    wait_until(check, timeout, "every worker to be idle, blocked or done")
