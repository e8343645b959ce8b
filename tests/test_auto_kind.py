"""kind="auto": what it decides, from what, and that deciding never changes a result."""

from __future__ import annotations

import collections
import fcntl
import functools
import hashlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import conveyor as cv
from conveyor import _gil
from conveyor._gil import decide, shared_state_reason, static_choice
from conveyor._observe._progress import format_line, make_frame
from tests.helpers import mark, marks_named, wait_until

DECIDE_S = 60.0  # only reached if the measurement never ends


# -- stage functions (module level: processes can import them) ---------------------------


def python_cpu(x: int) -> int:
    s = 0
    for i in range(20_000):  # ~0.5 ms of bytecode, the GIL held throughout
        s += i * i
    return x * 2 + (s & 0)


def hashing(x: int) -> int:
    hashlib.sha256(b"x" * (1 << 20)).digest()  # C code that lets the GIL go
    return x * 2


def sleeping(x: int) -> int:
    time.sleep(0.002)
    return x * 2


def tiny(x: int) -> int:
    return x * 2


def marked_cpu(x: int, marks: str) -> int:
    """~4 ms of bytecode per item, and a marker file (whose system calls let the GIL go
    for a moment: rare enough next to the bytecode for the GIL to count as held)."""
    mark(marks, f"item-{x}-{os.getpid()}-{threading.get_ident()}")
    for _ in range(7):
        python_cpu(x)
    return python_cpu(x)


@pytest.fixture(params=[False, True], ids=["quiet", "busy-core"])
def load(request: pytest.FixtureRequest) -> Iterator[bool]:
    """Run the test as is, and again while another process keeps a core busy (one
    core: the busy-core runs of parallel test processes take turns)."""
    if not request.param:
        yield False
        return
    with open(os.path.join(tempfile.gettempdir(), "conveyor-tests-busy-core.lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            yield True
        finally:
            spinner.kill()
            spinner.wait()


def decision_for(fn: Callable[[int], int], workers: int = 2) -> str:
    """Run ``fn`` with kind='auto' on an endless input until it chose, then cancel
    (as a sink: nobody reads the output)."""
    run = cv.Pipeline().source(range(10**9)).sink(fn, workers=workers).run()
    try:
        wait_until(
            lambda: bool(run.stats().stages[1].decision) or run.state != "running",
            "the stage chose its kind",
            DECIDE_S,
            every=0.02,  # not too often: this thread competes for the GIL too
        )
        return run.stats().stages[1].decision
    finally:
        run.cancel()
        with pytest.raises(cv.Cancelled):
            run.wait(timeout=60)


# -- measuring -------------------------------------------------------------------------------


def test_pure_python_cpu_goes_to_processes(load: bool) -> None:
    decision = decision_for(python_cpu)
    assert decision.startswith("process: "), decision
    assert "gil held" in decision


def test_hashing_stays_on_threads(load: bool) -> None:
    decision = decision_for(hashing)
    assert decision.startswith("thread: "), decision
    # on a busy machine its thread may wait for a CPU or the GIL so much that its CPU
    # share looks low; either way the GIL was found free
    assert "gil released" in decision or "gil free" in decision


def test_sleeping_stays_on_threads(load: bool) -> None:
    decision = decision_for(sleeping)
    assert decision.startswith("thread: "), decision
    assert "I/O-bound" in decision


def test_tiny_items_stay_on_threads(load: bool) -> None:
    decision = decision_for(tiny)
    assert decision.startswith("thread: "), decision
    # on a busy machine its thread may wait (for a CPU, for the GIL) more than it works
    assert "processes would not gain" in decision or "I/O-bound" in decision


def test_one_worker_stays_on_threads() -> None:
    decision = decision_for(python_cpu, workers=1)  # decided without measuring
    assert decision.startswith("thread: ")
    assert "one worker" in decision


def test_probe_items_run_once_and_their_outputs_are_kept(marks: Path) -> None:
    n = 300
    fn = functools.partial(marked_cpu, marks=str(marks))
    run = cv.Pipeline().source(range(n)).map(fn, workers=2).run()
    assert list(run) == [x * 2 for x in range(n)]  # in order, each once
    assert run.stats().stages[1].decision.startswith("process: ")
    seen = collections.Counter(name.split("-")[1] for name in marks_named(marks, "item-"))
    assert sorted(seen) == sorted(str(x) for x in range(n))
    assert set(seen.values()) == {1}
    # some items ran on the probing thread of this process, the rest in workers
    pids = {name.split("-")[2] for name in marks_named(marks, "item-")}
    assert str(os.getpid()) in pids
    assert len(pids) > 1


def test_explicit_kind_wins() -> None:
    run = cv.Pipeline().source(range(50)).map(python_cpu, workers=2, kind="thread").run()
    run.wait()
    stage = run.stats().stages[1]
    assert (stage.kind, stage.decision) == ("thread", "")


def test_the_decision_shows_in_stats_workers_and_progress() -> None:
    run = cv.Pipeline().source(range(20)).map(sleeping, workers=3).run()
    run.wait()
    stats = run.stats()
    stage = stats.stages[1]
    assert stage.kind == "thread"
    assert stage.decision.startswith("thread: ")
    assert f"kind of sleeping: {stage.decision}" in stats.render()
    assert {w.decision for w in run.workers() if w.stage == "sleeping"} == {stage.decision}
    assert f"[{stage.decision}]" in format_line(make_frame(stats, {}, final=True))


# -- deciding before running -----------------------------------------------------------------

_RESULTS: list[int] = [0]
_TOTAL = 0


def _appends_to_a_global(x: int) -> int:
    _RESULTS.append(x)
    return x


def _assigns_a_global(x: int) -> int:
    global _TOTAL
    _TOTAL += x
    return x


def _stores_into_a_global(x: int) -> int:
    _RESULTS[0] = x
    return x


class _Tally:
    def __init__(self) -> None:
        self.n = 0

    def add(self, x: int) -> int:
        self.n += x
        return x


_TALLY = _Tally()


def _sets_an_attribute_of_a_global(x: int) -> int:
    _TALLY.n = x
    return x


def _closure_over(value: Any) -> Callable[[int], int]:
    def fn(x: int) -> int:
        return x + 0 * len(str(value))

    return fn


def _first_of_two(d: dict[str, int], x: int) -> int:
    return x


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ([].append, "method of a list"),
        (_Tally().add, "bound method of a _Tally"),
        (_closure_over([]), "closure over the list 'value'"),
        (_closure_over({}), "closure over the dict 'value'"),
        (_closure_over(set()), "closure over the set 'value'"),
        (functools.partial(_first_of_two, {}), "partial over a dict"),
        (_appends_to_a_global, "changes the global list '_RESULTS' (append)"),
        (_assigns_a_global, "assigns the global '_TOTAL'"),
        (_stores_into_a_global, "changes the global list '_RESULTS' (item assignment)"),
        (_sets_an_attribute_of_a_global, "changes the global _Tally '_TALLY' (.n =)"),
    ],
)
def test_state_writers_stay_on_threads(target: Any, reason: str) -> None:
    found = shared_state_reason(target)
    assert found is not None
    assert reason in found
    run = cv.Pipeline().source(range(5)).map(target, workers=2).run()
    run.wait()
    stage = run.stats().stages[1]
    assert stage.kind == "thread"
    assert stage.decision.startswith("thread: writes this process's state: ")


_SHARED_COUNTS = cv.shared.Dict({"num": 0})
_SHARED_DONE = cv.shared.Counter(0)


def _updates_shared_state(x: int) -> int:
    _SHARED_COUNTS.update("num", lambda v: v + 1)
    return _SHARED_DONE.add(1)


def test_conveyor_shared_objects_are_not_this_process_s_state() -> None:
    """Their writes reach every process: no reason to stay on threads."""
    assert shared_state_reason(_updates_shared_state) is None
    assert shared_state_reason(_SHARED_DONE.add) is None
    assert shared_state_reason(functools.partial(_first_of_two, _SHARED_COUNTS)) is None
    assert static_choice(_updates_shared_state, is_async=False, sendable_error=None) is None


def test_nonlocal_assignment_is_a_state_write() -> None:
    count = 0

    def bump(x: int) -> int:
        nonlocal count
        count += 1
        return x

    assert "nonlocal" in (shared_state_reason(bump) or "")


@pytest.mark.parametrize(
    "target", [python_cpu, functools.partial(marked_cpu, marks="/nowhere"), _closure_over(3)]
)
def test_pure_functions_are_measured(target: Any) -> None:
    assert shared_state_reason(target) is None
    assert static_choice(target, is_async=False, sendable_error=None) is None


def test_a_function_that_cannot_go_to_a_process_warns_and_stays_on_threads() -> None:
    lock = threading.Lock()

    def locked(x: int) -> int:
        with lock:
            return x

    with pytest.warns(cv.KindWarning, match="cannot send it to a process .*lock"):
        pipeline = cv.Pipeline().source(range(5)).map(locked, workers=2)
    run = pipeline.run()
    assert list(run) == list(range(5))
    assert run.stats().stages[1].decision.startswith("thread: cannot be sent to a process: ")


def test_async_functions_go_to_asyncio() -> None:
    async def fetch(x: int) -> int:
        return x

    decision = static_choice(fetch, is_async=True, sendable_error=None)
    assert decision is not None
    assert (decision.kind, decision.evidence) == ("asyncio", "async def")


# -- free-threaded CPython -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("built", "enabled", "off"),
    [(1, False, True), (1, True, False), (0, None, False), (None, None, False)],
)
def test_free_threading_detection(
    monkeypatch: pytest.MonkeyPatch, built: int | None, enabled: bool | None, off: bool
) -> None:
    monkeypatch.setattr(
        _gil.sysconfig,
        "get_config_var",
        lambda name: built if name == "Py_GIL_DISABLED" else None,
    )
    if enabled is None:
        monkeypatch.delattr(sys, "_is_gil_enabled", raising=False)
    else:
        monkeypatch.setattr(sys, "_is_gil_enabled", lambda: enabled, raising=False)
    assert _gil.gil_disabled() is off
    decision = static_choice(python_cpu, is_async=False, sendable_error=None)
    if off:
        assert decision is not None
        assert decision.kind == "thread"
        assert "GIL off" in decision.evidence
    else:
        assert decision is None


def test_with_the_gil_off_everything_runs_on_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_gil, "gil_disabled", lambda: True)
    run = cv.Pipeline().source(range(20)).map(python_cpu, workers=2).run()
    assert list(run) == [x * 2 for x in range(20)]
    assert run.stats().stages[1].decision == "thread: free-threaded CPython with the GIL off"


# -- the decision from measurements (numbers injected) -----------------------------------------

MS = 1e-3
US = 1e-6


@pytest.mark.parametrize(
    ("share", "per_item", "blocked", "workers", "cost", "kind", "says"),
    [
        (0.05, 2 * MS, None, 8, 5 * US, None, ""),  # low CPU: is the GIL free?
        (0.05, 2 * MS, 0.02, 8, 5 * US, "thread", "I/O-bound"),
        (0.2, 2 * MS, 0.9, 8, 5 * US, "process", "gil held"),  # starved of the GIL
        (0.99, 1 * US, None, 8, 5 * US, "thread", "processes would not gain"),
        (0.99, 2 * MS, None, 8, 5 * US, None, ""),  # CPU-bound: measure the GIL
        (0.99, 2 * MS, 0.05, 8, 5 * US, "thread", "gil released"),
        (0.99, 2 * MS, 0.35, 8, 5 * US, None, ""),  # too close to call
        (0.99, 2 * MS, 0.9, 8, 5 * US, "process", "gil held"),
        (0.99, 30 * US, 0.9, 8, 25 * US, "thread", "processes would not gain"),
        (0.99, 2 * MS, 0.9, 8, float("inf"), "thread", "unpicklable results"),
    ],
)
def test_decide(
    share: float,
    per_item: float,
    blocked: float | None,
    workers: int,
    cost: float,
    kind: str | None,
    says: str,
) -> None:
    decision = decide(share, per_item, blocked, workers, cost, cpus=4)
    if kind is None:
        assert decision is None
    else:
        assert decision is not None
        assert decision.kind == kind
        assert says in decision.evidence


def test_decide_on_one_cpu_keeps_threads() -> None:
    decision = decide(0.99, 2 * MS, 0.9, 8, 5 * US, cpus=1)
    assert decision is not None
    assert decision.kind == "thread"
    assert "one CPU" in decision.evidence
