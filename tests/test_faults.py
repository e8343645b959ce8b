"""Crash-proof runs: dead workers, failing items, timeouts, pickling trouble.

Every input item ends up in the output or in ``run.failures``; nothing hangs.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import conveyor as cv
from conveyor.testing import wait_until
from tests.helpers import Gate, mark, marks_named

HANG = 60  # bounds every run: only reached if something hangs


def crash_on(bad: set[int], how: str = "exit"):  # type: ignore[no-untyped-def]
    def work(x: int) -> int:
        if x in bad:
            if how == "exit":
                os._exit(13)
            elif how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            else:
                ctypes.string_at(0)  # segmentation fault
        return x * 10

    return work


def raise_on(bad: set[int]):  # type: ignore[no-untyped-def]
    def work(x: Any) -> Any:
        if (x if isinstance(x, int) else x[0]) in bad:
            raise ValueError(f"bad {x}")
        return x

    return work


# -- dead workers ----------------------------------------------------------------------


def test_killed_worker_is_replaced_and_its_items_delivered_again(marks: Path) -> None:
    gate = Gate(marks / "gate")
    d = str(marks)

    def work(x: int) -> int:
        if x == 3:
            mark(d, f"started-{os.getpid()}")
            gate.wait()
        return x * 10

    run = cv.Pipeline().source(range(10)).map(work, kind="process", name="w").run()
    try:
        wait_until(lambda: marks_named(d, "started-"), HANG)
        pid = int(marks_named(d, "started-")[0].split("-")[1])
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)  # not the item's fault: it must go again, and pass
        wait_until(lambda: run.stats()["w"].restarts == 1, HANG)
        replaced_after = time.monotonic() - t0
        assert replaced_after < 5, replaced_after  # "noticed within a second" with slack
        gate.open()
        assert list(run) == [x * 10 for x in range(10)]
    finally:
        gate.open()
    assert run.failures == []
    st = run.stats()["w"]
    assert (st.items_out, st.failed, st.restarts) == (10, 0, 1)
    assert st.retried >= 1


@pytest.mark.parametrize("how", ["exit", "kill", "segfault"])
def test_item_that_kills_its_worker_fails_with_worker_crashed(how: str) -> None:
    with pytest.raises(cv.WorkerCrashed) as info:
        list(cv.Pipeline().source(range(20)).map(crash_on({7}, how), kind="process", name="c"))
    err = info.value
    assert err.stage == "c"
    assert err.item == "7"  # the item, found by delivering the batch item by item
    expected = {"exit": 13, "kill": -signal.SIGKILL, "segfault": -signal.SIGSEGV}[how]
    assert err.exitcode == expected


def test_crashing_items_are_skipped_and_recorded() -> None:
    run = (
        cv.Pipeline()
        .source(range(30))
        .map(crash_on({4, 17}), kind="process", workers=2, name="c", on_error="skip")
        .run()
    )
    out = list(run)
    assert out == [x * 10 for x in range(30) if x not in (4, 17)]
    failures = run.failures
    assert sorted(f.item for f in failures) == [4, 17]
    for f in failures:
        assert isinstance(f.error, cv.WorkerCrashed)
        assert f.attempts == 2  # the default max_crashes
        assert f.stage == "c"
    st = run.stats()["c"]
    assert st.failed == 2
    assert st.restarts >= 4  # each bad item killed two workers


def test_max_crashes_is_per_stage() -> None:
    run = (
        cv.Pipeline()
        .source(range(6))
        .map(crash_on({2}), kind="process", on_error="skip", max_crashes=3, name="c")
        .run()
    )
    assert list(run) == [0, 10, 30, 40, 50]
    (f,) = run.failures
    assert f.attempts == 3
    assert run.stats()["c"].restarts == 3


def test_worker_that_dies_while_starting() -> None:
    class DiesInSetup:
        def setup(self) -> None:
            os._exit(3)

        def process(self, item: int) -> int:
            return item

    with pytest.raises(cv.WorkerCrashed, match="while starting"):
        list(cv.Pipeline().source(range(3)).map(DiesInSetup, kind="process"))


def test_streamed_outputs_of_a_crashed_worker_are_counted_as_duplicates(marks: Path) -> None:
    d = str(marks)

    def expand(n: int):  # type: ignore[no-untyped-def]
        for i in range(n):
            yield (n, i)
            if n == 3000 and i == 2000 and not marks_named(d, "crashed"):
                mark(d, "crashed")
                os._exit(1)  # after 2000 outputs went downstream

    run = cv.Pipeline().source([10, 3000, 20]).flat_map(expand, kind="process", name="x").run()
    out = list(run)
    # at least once: every output is there, and the repeats are counted
    assert set(out) == {(n, i) for n in (10, 3000, 20) for i in range(n)}
    st = run.stats()["x"]
    assert len(out) == 3030 + st.duplicates
    assert st.duplicates > 0
    assert run.failures == []


# -- exceptions: retries, skip, callbacks ------------------------------------------------


def flaky(directory: str, fails: int):  # type: ignore[no-untyped-def]
    """Fails the first ``fails`` attempts of every item (counted in files, so that it
    works across processes)."""

    def work(x: int) -> int:
        tried = len(marks_named(directory, f"a{x}-"))
        mark(directory, f"a{x}-{tried}")
        if tried < fails:
            raise ConnectionError(f"attempt {tried} of {x}")
        return x

    return work


def test_retries_with_backoff(kind: str, marks: Path) -> None:
    run = (
        cv.Pipeline()
        .source(range(5))
        .map(flaky(str(marks), 2), kind=kind, retries=2, backoff=0.001, name="f")
        .run()
    )
    assert list(run) == list(range(5))
    assert run.failures == []
    assert run.stats()["f"].retried == 10


def test_retries_run_out(kind: str, marks: Path) -> None:
    run = (
        cv.Pipeline()
        .source(range(3))
        .map(flaky(str(marks), 5), kind=kind, retries=1, backoff=0.001, on_error="skip", name="f")
        .run()
    )
    assert list(run) == []
    assert sorted(f.item for f in run.failures) == [0, 1, 2]
    for f in run.failures:
        assert f.attempts == 2
        assert isinstance(f.error, ConnectionError)
        assert "ConnectionError" in f.traceback


def test_retries_then_raise(kind: str, marks: Path) -> None:
    with pytest.raises(cv.StageError, match="attempt 1 of 0"):
        list(cv.Pipeline().source([0]).map(flaky(str(marks), 5), kind=kind, retries=1, backoff=0))


def test_skip_records_the_items_themselves(kind: str) -> None:
    items = [(i, f"payload {i}") for i in range(40)]
    run = (
        cv.Pipeline()
        .source(items)
        .map(raise_on({3, 10, 39}), kind=kind, workers=3, on_error="skip", name="s")
        .run()
    )
    out = list(run)
    assert out == [x for x in items if x[0] not in (3, 10, 39)]
    failures = sorted(run.failures, key=lambda f: f.item[0])
    assert [f.item[0] for f in failures] == [3, 10, 39]
    for f in failures:
        assert f.item is items[f.item[0]]  # the object the stage received, not a copy
        assert isinstance(f.error, ValueError)
        assert (f.stage, f.attempts) == ("s", 1)
        assert f.worker.startswith("s-")
        assert "raise_on" in f.traceback or "work" in f.traceback
    st = run.stats()["s"]
    assert (st.items_in, st.items_out, st.failed) == (40, 37, 3)


def test_skip_in_filter_flat_map_and_sink(kind: str) -> None:
    bad = raise_on({2})
    out = list(
        cv.Pipeline()
        .source(range(6))
        .filter(lambda x: bad(x) is not None, kind=kind, on_error="skip", name="f")
        .flat_map(lambda x: [bad(x + 1)] * 2, kind=kind, on_error="skip", name="m")
    )
    # 2 fails in the filter; 1 + 1 == 2 fails in the flat_map
    assert out == [x + 1 for x in (0, 3, 4, 5) for _ in range(2)]
    run = cv.Pipeline().source(range(6)).sink(bad, kind=kind, on_error="skip", name="k").run()
    run.wait()
    assert [f.item for f in run.failures] == [2]
    assert run.stats()["k"].items_out == 5


def test_on_error_callback(kind: str) -> None:
    seen: list[cv.Failure] = []
    lock = threading.Lock()

    def note(failure: cv.Failure) -> None:
        with lock:
            seen.append(failure)

    out = list(
        cv.Pipeline().source(range(10)).map(raise_on({1, 5}), kind=kind, workers=2, on_error=note)
    )
    assert out == [0, 2, 3, 4, 6, 7, 8, 9]
    assert sorted(f.item for f in seen) == [1, 5]


def test_on_error_callback_that_raises_stops_the_run(kind: str) -> None:
    def refuse(failure: cv.Failure) -> None:
        raise RuntimeError(f"giving up on {failure.item}")

    with pytest.raises(cv.StageError, match="giving up on 5") as info:
        list(cv.Pipeline().source(range(10)).map(raise_on({5}), kind=kind, on_error=refuse))
    assert isinstance(info.value.__cause__, RuntimeError)


def test_raise_records_the_failure_too(kind: str) -> None:
    run = cv.Pipeline().source(range(10)).map(raise_on({5}), kind=kind).run()
    with pytest.raises(cv.StageError):
        run.wait()
    assert [f.item for f in run.failures] == [5]


# -- timeouts ----------------------------------------------------------------------------


def sleepy(bad: set[int], seconds: float = 120):  # type: ignore[no-untyped-def]
    def work(x: int) -> int:
        if x in bad:
            time.sleep(seconds)
        return x

    return work


def test_process_worker_past_its_timeout_is_killed_and_replaced() -> None:
    t0 = time.monotonic()
    run = (
        cv.Pipeline()
        .source(range(8))
        .map(sleepy({3}), kind="process", timeout=0.5, on_error="skip", name="t")
        .run()
    )
    assert list(run) == [0, 1, 2, 4, 5, 6, 7]
    assert time.monotonic() - t0 < HANG / 2
    (f,) = run.failures
    assert f.item == 3
    assert isinstance(f.error, cv.ItemTimeout)
    assert isinstance(f.error, TimeoutError)
    assert f.attempts == 1
    assert run.stats()["t"].restarts == 1


def test_timeout_with_retries(kind: str, marks: Path) -> None:
    d = str(marks)

    def slow_first(x: int) -> int:
        if x == 1 and not marks_named(d, "slept"):
            mark(d, "slept")
            time.sleep(120)
        return x

    run = cv.Pipeline().source(range(4)).map(slow_first, kind=kind, timeout=0.5, retries=1).run()
    assert list(run) == [0, 1, 2, 3]  # the second attempt of item 1 is quick
    assert run.failures == []
    assert run.stats()["slow_first"].restarts == 1


def test_timeout_then_raise(kind: str) -> None:
    with pytest.raises(cv.ItemTimeout, match=r"timeout=0\.3"):
        list(cv.Pipeline().source(range(5)).map(sleepy({2}, 5), kind=kind, timeout=0.3))


def test_thread_worker_past_its_timeout_is_abandoned(gate: Gate) -> None:
    def stuck(x: int) -> int:
        if x == 2:
            gate.wait()
        return x

    try:
        run = (
            cv.Pipeline()
            .source(range(6))
            .map(stuck, workers=1, timeout=0.3, on_error="skip", name="s")
            .run()
        )
        # the run goes on, and ends, without the stuck thread
        assert list(run) == [0, 1, 3, 4, 5]
        (f,) = run.failures
        assert f.item == 2
        assert isinstance(f.error, cv.ItemTimeout)
        assert "gate.wait" in f.traceback or "in wait" in f.traceback  # its stack then
        workers = {w.name: w for w in run.workers()}
        assert workers["s-1"].abandoned
        assert workers["s-1"].alive  # still stuck: a thread cannot be killed
        assert "s-1.2" in workers  # the one that took over
        assert not workers["s-1.2"].alive
        assert run.stats()["s"].restarts == 1
    finally:
        gate.open()


# -- pickling trouble ------------------------------------------------------------------------


class Unloadable:
    """Pickles, but cannot be unpickled on the other side."""

    def __init__(self, where: int) -> None:
        self.where = where  # the pid where unpickling fails

    def __reduce__(self) -> tuple[Any, ...]:
        return (_refuse_in, (self.where,))


def _refuse_in(where: int) -> Any:
    if where in (0, os.getpid()):
        raise RuntimeError("cannot rebuild me here")
    return "rebuilt"


def test_unpicklable_item_and_result_are_skipped() -> None:
    def work(x: Any) -> Any:
        return threading.Lock() if x == 3 else x

    items: list[Any] = [0, threading.Lock(), 2, 3, 4]
    run = cv.Pipeline().source(items).map(work, kind="process", on_error="skip", name="p").run()
    assert list(run) == [0, 2, 4]
    failures = sorted(run.failures, key=lambda f: str(f.item))
    assert {str(type(f.error).__name__) for f in failures} == {"TypeError"}
    assert any("cannot be pickled to go to a worker" in str(f.error) for f in failures)
    assert any("result cannot be pickled" in str(f.error) for f in failures)


def test_item_that_cannot_be_unpickled_in_the_worker_is_skipped() -> None:
    items: list[Any] = [0, 1, Unloadable(0), 3]
    run = cv.Pipeline().source(items).map(lambda x: x, kind="process", on_error="skip").run()
    assert list(run) == [0, 1, 3]
    (f,) = run.failures
    assert f.item is items[2]
    assert "cannot rebuild me here" in str(f.error)


def test_result_that_cannot_be_unpickled_here() -> None:
    main = os.getpid()

    def work(x: int) -> Any:
        return Unloadable(main) if x == 2 else x

    run = cv.Pipeline().source(range(5)).map(work, kind="process", on_error="skip").run()
    assert list(run) == [0, 1, 3, 4]
    (f,) = run.failures
    assert f.item == 2
    assert "cannot be unpickled in the main process" in str(f.error)
    with pytest.raises(cv.StageError, match="cannot be unpickled in the main process"):
        list(cv.Pipeline().source(range(5)).map(work, kind="process"))


# -- validation ---------------------------------------------------------------------------------


def test_policy_validation() -> None:
    p = cv.Pipeline().source([1])
    with pytest.raises(ValueError, match="on_error must be"):
        p.map(abs, on_error="ignore")
    with pytest.raises(ValueError, match="retries must be"):
        p.map(abs, retries=-1)
    with pytest.raises(ValueError, match="timeout must be"):
        p.map(abs, timeout=0)
    with pytest.raises(ValueError, match="backoff must be"):
        p.map(abs, backoff=-1)
    with pytest.raises(ValueError, match="max_crashes must be"):
        p.map(abs, max_crashes=0)
