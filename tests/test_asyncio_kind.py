"""kind="asyncio": stage functions are coroutines, run ``workers`` at a time on an event
loop of the stage, with the semantics of the other kinds (order, errors, retries,
timeouts, stopping, observation).

Concurrency is shown with barriers the coroutines wait on, never with sleeps; the
timeouts here only turn a hang into a failure.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

import conveyor as cv
from conveyor.testing import wait_until, wait_worker_state
from tests.helpers import Gate

HANG = 30.0  # seconds: only reached if something hangs


@pytest.fixture(autouse=True)
def no_asyncio_complaints(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """asyncio logs (it does not warn) tasks destroyed while pending and exceptions
    never retrieved; and an un-awaited coroutine warns only when it is collected."""
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        yield
        gc.collect()
    complaints = [r.getMessage() for r in caplog.records if r.name.startswith("asyncio")]
    assert complaints == []


def stage_threads(stage: str) -> list[str]:
    """The threads of a stage's loop (its loop, taker and engine threads) still alive."""
    return [t.name for t in threading.enumerate() if t.name.startswith(f"conveyor-{stage}-")]


class Barrier:
    """``n`` coroutines of one loop wait here until all ``n`` have come: proof that they
    run at once. Counts who is inside, and the most that ever were. With ``hold``, they
    stay until the test calls ``release()``."""

    def __init__(self, n: int, hold: bool = False) -> None:
        self.n = n
        self.hold = hold
        self.inside = 0
        self.peak = 0
        self.came = 0
        self.full = threading.Event()
        self._event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def wait(self) -> None:
        if self._event is None:
            self._event = asyncio.Event()
            self._loop = asyncio.get_running_loop()
        self.inside += 1
        self.came += 1
        self.peak = max(self.peak, self.inside)
        try:
            if self.came >= self.n:
                self.full.set()
                if not self.hold:
                    self._event.set()
            await asyncio.wait_for(self._event.wait(), HANG)
        finally:
            self.inside -= 1

    def release(self) -> None:
        """From the test's thread."""
        assert self._loop is not None
        assert self._event is not None
        self._loop.call_soon_threadsafe(self._event.set)


class Forever:
    """Coroutines that wait until cancelled, and record that they were."""

    def __init__(self) -> None:
        self.started: list[Any] = []
        self.cancelled: list[Any] = []

    async def __call__(self, x: Any) -> Any:
        self.started.append(x)
        try:
            await asyncio.sleep(HANG * 10)
        except asyncio.CancelledError:
            self.cancelled.append(x)
            raise
        return x


async def shuffled(x: int) -> int:
    """Finishes out of input order: later items often take fewer loop passes."""
    for _ in range((x * 7919) % 13):
        await asyncio.sleep(0)
    return x * 2


# -- ops and order -------------------------------------------------------------------------


def test_map_keeps_input_order() -> None:
    out = list(cv.Pipeline().source(range(2000)).map(shuffled, workers=16, kind="asyncio"))
    assert out == [x * 2 for x in range(2000)]


def test_unordered_passes_every_result_on() -> None:
    out = list(
        cv.Pipeline()
        .source(range(2000))
        .map(shuffled, workers=16, kind="asyncio", ordered=False, batch_size=1)
    )
    assert sorted(out) == [x * 2 for x in range(2000)]


def test_filter_flat_map_and_sink() -> None:
    async def even(x: int) -> bool:
        await asyncio.sleep(0)
        return x % 2 == 0

    async def pair(x: int) -> list[int]:
        await asyncio.sleep(0)
        return [x, -x]

    async def spread(x: int) -> Iterator[int]:
        await asyncio.sleep(0)
        return iter(range(x, x + 3))  # any iterable

    out = list(
        cv.Pipeline()
        .source(range(100))
        .filter(even, workers=4, kind="asyncio")
        .flat_map(pair, workers=4, kind="asyncio")
        .flat_map(spread, workers=3, kind="asyncio")
    )
    assert out == [y for x in range(0, 100, 2) for v in (x, -x) for y in range(v, v + 3)]

    seen: list[int] = []

    async def keep(x: int) -> int:
        await asyncio.sleep(0)
        seen.append(x)  # the stage's coroutines share one thread
        return -1  # dropped

    run = cv.Pipeline().source(range(500)).sink(keep, workers=8, kind="asyncio").run()
    run.wait()
    assert sorted(seen) == list(range(500))
    assert run.stats()["keep"].items_out == 500


def test_flat_map_streams_large_outputs_in_order() -> None:
    # outputs past a chunk (1,024) go on while the batch runs, each batch in its turn
    async def many(x: int) -> list[int]:
        await shuffled(x)
        return list(range(x * 10_000, x * 10_000 + (5_000 if x % 3 == 0 else 3)))

    out = list(cv.Pipeline().source(range(12)).flat_map(many, workers=4, kind="asyncio"))
    assert out == [
        y for x in range(12) for y in range(x * 10_000, x * 10_000 + (5_000 if x % 3 == 0 else 3))
    ]


def test_mixed_kinds_and_one_loop_per_stage() -> None:
    loops: dict[str, set[threading.Thread]] = {"a": set(), "b": set()}  # not idents: reused

    async def a(x: int) -> int:
        loops["a"].add(threading.current_thread())
        await asyncio.sleep(0)
        return x + 1

    def middle(x: int) -> int:
        return x * 10

    got: list[int] = []

    async def b(x: int) -> None:
        loops["b"].add(threading.current_thread())
        got.append(x)

    cv.Pipeline().source(range(300)).map(a, workers=5, kind="asyncio").map(middle, workers=2).sink(
        b, workers=3, kind="asyncio"
    ).run().wait()
    assert sorted(got) == [(x + 1) * 10 for x in range(300)]
    assert len(loops["a"]) == len(loops["b"]) == 1  # each stage on one loop thread
    assert loops["a"] != loops["b"]  # of its own
    assert threading.current_thread() not in loops["a"]


def test_sync_producers_given_the_asyncio_kind_run_on_threads() -> None:
    def first() -> Iterator[int]:
        yield from range(100)

    def second() -> list[int]:
        return list(range(100, 150))

    out = list(cv.Pipeline().source(first, second, kind="asyncio").map(shuffled, kind="asyncio"))
    assert sorted(out) == [x * 2 for x in range(150)]


def test_a_pipeline_runs_again_on_a_new_loop() -> None:
    pipeline = cv.Pipeline().source(range(50)).map(shuffled, workers=3, kind="asyncio")
    assert list(pipeline) == list(pipeline) == [x * 2 for x in range(50)]


# -- stage classes -------------------------------------------------------------------------


class SyncHooks:
    setups: ClassVar[list[str]] = []
    teardowns: ClassVar[list[str]] = []

    def setup(self) -> None:
        self.me = cv.current_worker().name
        SyncHooks.setups.append(self.me)

    async def process(self, x: int) -> tuple[str, int]:
        await asyncio.sleep(0)
        return self.me, x

    def teardown(self) -> None:
        SyncHooks.teardowns.append(self.me)


class AsyncHooks:
    def __init__(self) -> None:
        self.log: list[str] = []
        self.offset = 0

    async def setup(self) -> None:
        await asyncio.sleep(0)
        self.offset = 1000
        self.log.append("setup")

    async def process(self, x: int) -> int:
        await asyncio.sleep(0)
        return x + self.offset

    async def teardown(self) -> None:
        await asyncio.sleep(0)
        self.log.append("teardown")
        AsyncHooks.logs.append(self.log)

    logs: ClassVar[list[list[str]]] = []


def test_stage_class_with_sync_setup_and_teardown() -> None:
    SyncHooks.setups, SyncHooks.teardowns = [], []
    out = list(cv.Pipeline().source(range(200)).map(SyncHooks, workers=4, kind="asyncio"))
    assert [x for _, x in out] == list(range(200))
    names = {f"SyncHooks-{i}" for i in range(1, 5)}
    assert {me for me, _ in out} <= names
    # one instance per worker, set up and torn down once, in its own task
    assert sorted(SyncHooks.setups) == sorted(SyncHooks.teardowns) == sorted(names)


def test_stage_instance_with_async_setup_and_teardown() -> None:
    AsyncHooks.logs = []
    template = AsyncHooks()
    out = list(cv.Pipeline().source(range(100)).map(template, workers=3, kind="asyncio"))
    assert out == [x + 1000 for x in range(100)]
    assert AsyncHooks.logs == [["setup", "teardown"]] * 3  # a copy per worker
    assert template.log == []


def test_setup_that_fails_stops_the_run() -> None:
    class Broken:
        async def setup(self) -> None:
            raise OSError("no database")

        async def process(self, x: int) -> int:
            return x

    with pytest.raises(cv.StageError, match="no database") as info:
        list(cv.Pipeline().source(range(10)).map(Broken, workers=2, kind="asyncio"))
    assert info.value.stage == "Broken"
    assert info.value.item is None


# -- concurrency, observation ---------------------------------------------------------------


def test_workers_run_at_once_and_are_observable() -> None:
    n = 40
    barrier = Barrier(n, hold=True)

    async def fetch(x: int) -> int:
        await barrier.wait()
        return x

    run = cv.Pipeline().source(range(3 * n)).map(fetch, workers=n, kind="asyncio").run()
    try:
        # all n coroutines are in the barrier at once
        assert barrier.full.wait(HANG)
        workers = [w for w in run.workers() if w.stage == "fetch"]
        assert sorted(w.name for w in workers) == sorted(f"fetch-{i}" for i in range(1, n + 1))
        assert {w.kind for w in workers} == {"asyncio"}
        assert len({w.thread_id for w in workers}) == 1  # one loop thread
        assert all(w.alive for w in workers)
        assert {w.state for w in workers} == {"busy"}
        barrier.release()
        out = list(run)
    finally:
        run.cancel()
    assert out == list(range(3 * n))
    assert barrier.peak == n  # never more than the stage's workers
    st = run.stats()["fetch"]
    assert (st.kind, st.workers, st.items_in, st.items_out, st.failed) == (
        "asyncio",
        n,
        3 * n,
        3 * n,
        0,
    )
    workers = [w for w in run.workers() if w.stage == "fetch"]
    assert sum(w.items_done for w in workers) == 3 * n
    assert {w.state for w in workers} == {"done"}
    assert not any(w.alive or w.abandoned for w in workers)
    assert stage_threads("fetch") == []


def test_current_worker_is_the_task_own() -> None:
    n = 6
    barrier = Barrier(n)

    async def who(x: int) -> tuple[str, str, str, str]:
        before = cv.current_worker()
        await barrier.wait()  # the others run in between
        after = cv.current_worker()

        async def child() -> str:
            return cv.current_worker().name

        in_task = await asyncio.create_task(child())
        in_thread = await asyncio.to_thread(lambda: cv.current_worker().name)
        assert before == after
        assert after.kind == "asyncio"
        assert after.stage == "who"
        return before.name, after.name, in_task, in_thread

    out = list(cv.Pipeline().source(range(n)).map(who, workers=n, kind="asyncio", batch_size=1))
    assert {row[0] for row in out} == {f"who-{i}" for i in range(1, n + 1)}
    assert all(len(set(row)) == 1 for row in out)
    with pytest.raises(RuntimeError, match="outside a conveyor worker"):
        cv.current_worker()


def test_a_function_that_blocks_the_loop_still_completes() -> None:
    async def blocking(x: int) -> int:
        time.sleep(0.001)  # noqa: ASYNC251 (on purpose: slow, not wrong)
        return x

    out = list(cv.Pipeline().source(range(60)).map(blocking, workers=4, kind="asyncio"))
    assert out == list(range(60))


class Endless:
    def __init__(self) -> None:
        self.produced = 0

    def __iter__(self) -> Iterator[int]:
        for i in itertools.count():
            self.produced += 1
            yield i


def test_back_pressure_from_a_stuck_asyncio_stage() -> None:
    src = Endless()
    stuck = Forever()
    run = (
        cv.Pipeline()
        .source(src)
        .map(stuck, workers=3, kind="asyncio", maxsize=5, name="stuck")
        .run()
    )
    try:
        wait_worker_state(run, "source-1", "blocked")
        st = run.stats()["stuck"]
        assert st.queue_maxsize == 5
        # the input, the chunk the feeder holds, a batch per worker
        assert src.produced <= 2 * 5 + 3 * 2 + 2, src.produced
    finally:
        run.cancel()
    with pytest.raises(cv.Cancelled):
        run.wait()


def test_a_slow_consumer_holds_the_workers_back(gate: Gate) -> None:
    def slow(x: int) -> None:
        gate.wait()

    run = (
        cv.Pipeline()
        .source(range(20_000))
        .map(shuffled, workers=8, kind="asyncio", name="fast")
        .sink(slow, maxsize=4, name="slow")
        .run()
    )
    try:
        # every asyncio worker ends up waiting: for room downstream, or for input
        wait_until(
            lambda: all(w.state in ("idle", "blocked") for w in run.workers() if w.stage == "fast")
        )
        assert run.stats()["fast"].items_in < 20_000
    finally:
        gate.open()
    run.wait()
    assert run.stats()["slow"].items_out == 20_000


# -- errors, retries, timeouts -------------------------------------------------------------


async def fails_on_7(x: int) -> int:
    await asyncio.sleep(0)
    if x % 10 == 7:
        raise ValueError(f"bad {x}")
    return x


def test_first_error_stops_the_run_and_names_stage_worker_item() -> None:
    with pytest.raises(cv.StageError) as info:
        list(cv.Pipeline().source(range(5, 100)).map(fails_on_7, workers=1, kind="asyncio"))
    err = info.value
    assert (err.stage, err.worker, err.item) == ("fails_on_7", "fails_on_7-1", "7")
    assert isinstance(err.__cause__, ValueError)
    assert "fails_on_7" in err.traceback
    assert "bad 7" in err.traceback


def test_a_failing_item_cancels_the_other_workers() -> None:
    waiting = Forever()

    async def work(x: int) -> int:
        if x == 0:
            await asyncio.sleep(0)
            raise KeyError("poison")
        return await waiting(x)

    run = cv.Pipeline().source(range(20)).map(work, workers=10, kind="asyncio").run(grace=HANG * 2)
    t0 = time.monotonic()
    with pytest.raises(cv.StageError, match="poison"):
        run.wait()
    assert time.monotonic() - t0 < HANG  # not the grace period: they were cancelled
    assert sorted(waiting.cancelled) == sorted(waiting.started)
    assert not any(w.abandoned or w.alive for w in run.workers())
    assert stage_threads("work") == []


def test_skip_records_failures_and_goes_on() -> None:
    items = [(i, f"payload {i}") for i in range(40)]

    async def check(item: tuple[int, str]) -> tuple[int, str]:
        await asyncio.sleep(0)
        if item[0] in (3, 10, 39):
            raise ValueError(item[0])
        return item

    run = cv.Pipeline().source(items).map(check, workers=5, kind="asyncio", on_error="skip").run()
    assert list(run) == [x for x in items if x[0] not in (3, 10, 39)]
    failures = sorted(run.failures, key=lambda f: f.item[0])
    assert [f.item[0] for f in failures] == [3, 10, 39]
    for f in failures:
        assert f.item is items[f.item[0]]
        assert isinstance(f.error, ValueError)
        assert (f.stage, f.attempts) == ("check", 1)
        assert f.worker.startswith("check-")
        assert "in check" in f.traceback
    st = run.stats()["check"]
    assert (st.items_in, st.items_out, st.failed) == (40, 37, 3)


def test_on_error_callback_in_filter_flat_map_and_sink() -> None:
    seen: list[cv.Failure] = []

    async def pred(x: int) -> bool:
        return await fails_on_7(x) >= 0

    async def twice(x: int) -> list[int]:
        return [await fails_on_7(x + 1)] * 2

    out = list(
        cv.Pipeline()
        .source(range(20))
        .filter(pred, kind="asyncio", on_error=seen.append, name="f")
        .flat_map(twice, kind="asyncio", workers=2, on_error="skip", name="m")
    )
    # 7 and 17 fail in the filter; 6 and 16 fail in the flat_map (6 + 1 == 7)
    assert out == [x + 1 for x in range(20) if x not in (6, 7, 16, 17) for _ in range(2)]
    assert sorted(f.item for f in seen) == [7, 17]
    run = cv.Pipeline().source(range(20)).sink(fails_on_7, kind="asyncio", on_error="skip").run()
    run.wait()
    assert sorted(f.item for f in run.failures) == [7, 17]
    assert run.stats()["fails_on_7"].items_out == 18


def test_retries_with_backoff() -> None:
    attempts: dict[int, int] = {}

    async def flaky(x: int) -> int:
        attempts[x] = attempts.get(x, 0) + 1
        if attempts[x] <= 2:
            raise ConnectionError(f"attempt {attempts[x]} of {x}")
        return x

    run = (
        cv.Pipeline()
        .source(range(10))
        .map(flaky, workers=3, kind="asyncio", retries=2, backoff=0.001)
        .run()
    )
    assert list(run) == list(range(10))
    assert run.failures == []
    assert run.stats()["flaky"].retried == 20


def test_retries_run_out() -> None:
    async def never(x: int) -> int:
        raise ConnectionError(f"down for {x}")

    run = (
        cv.Pipeline()
        .source(range(3))
        .map(never, workers=2, kind="asyncio", retries=2, backoff=0, on_error="skip")
        .run()
    )
    assert list(run) == []
    assert sorted(f.item for f in run.failures) == [0, 1, 2]
    assert {f.attempts for f in run.failures} == {3}
    with pytest.raises(cv.StageError, match="down for 0"):
        list(cv.Pipeline().source([0]).map(never, kind="asyncio", retries=1, backoff=0))


def test_backoff_waits_without_blocking_the_loop_and_a_cancel_ends_it() -> None:
    others: list[int] = []

    async def work(x: int) -> int:
        if x == 0:
            raise ConnectionError("retry me much later")
        others.append(x)
        return x

    run = (
        cv.Pipeline()
        .source(range(50))
        .map(work, workers=4, kind="asyncio", retries=1, backoff=HANG * 10, ordered=False)
        .run(grace=HANG * 2)
    )
    # item 0 waits out its backoff while the other workers, on the same loop, go on
    wait_until(lambda: len(others) == 49)
    t0 = time.monotonic()
    run.cancel()
    with pytest.raises(cv.Cancelled):
        run.wait()
    assert time.monotonic() - t0 < HANG
    assert not any(w.abandoned for w in run.workers())


def test_an_item_past_its_timeout_is_cancelled() -> None:
    stuck = Forever()

    async def work(x: int) -> int:
        if x == 2:
            return int(await stuck(x))
        return x

    run = (
        cv.Pipeline()
        .source(range(6))
        .map(work, workers=1, kind="asyncio", timeout=0.2, on_error="skip")
        .run()
    )
    assert list(run) == [0, 1, 3, 4, 5]  # the worker went on after cancelling it
    assert stuck.cancelled == [2]
    (f,) = run.failures
    assert f.item == 2
    assert isinstance(f.error, cv.ItemTimeout)
    assert isinstance(f.error, TimeoutError)
    assert (f.error.stage, f.error.worker, f.attempts) == ("work", "work-1", 1)
    assert "timeout=0.2" in str(f.error)
    # where it waited when it was cancelled
    assert "in work" in f.traceback
    assert "in __call__" in f.traceback
    st = run.stats()["work"]
    assert (st.failed, st.restarts) == (1, 0)


def test_timeout_with_retries() -> None:
    hung: list[int] = []

    async def slow_first(x: int) -> int:
        if x == 1 and not hung:
            hung.append(x)
            await asyncio.sleep(HANG * 10)
        return x

    run = (
        cv.Pipeline()
        .source(range(4))
        .map(slow_first, kind="asyncio", timeout=0.2, retries=1, backoff=0)
        .run()
    )
    assert list(run) == [0, 1, 2, 3]  # the second attempt of item 1 is quick
    assert run.failures == []
    assert run.stats()["slow_first"].retried == 1


def test_timeout_then_raise() -> None:
    with pytest.raises(cv.ItemTimeout, match=r"timeout=0\.2"):
        list(cv.Pipeline().source(range(5)).map(Forever(), workers=2, kind="asyncio", timeout=0.2))


def test_a_timeout_leaves_no_cancellation_behind() -> None:
    # after an item of a worker timed out, its task is not left marked as cancelled
    # (Python 3.11+ counts it), and the next items' own timeouts work as usual
    async def careful(x: int) -> tuple[str, int]:
        if x == 0:
            await asyncio.sleep(HANG * 10)
        task = asyncio.current_task()
        pending = task.cancelling() if hasattr(task, "cancelling") else 0
        try:
            await asyncio.wait_for(asyncio.sleep(HANG * 10), 0.01)
        except asyncio.TimeoutError:
            return "own timeout", pending
        return "slept", pending

    run = (
        cv.Pipeline()
        .source(range(3))
        .map(careful, kind="asyncio", timeout=0.3, on_error="skip")
        .run()
    )
    assert list(run) == [("own timeout", 0)] * 2
    assert [f.item for f in run.failures] == [0]


# -- stopping ------------------------------------------------------------------------------


class Guarded:
    """A stage class that records its teardown, and waits until cancelled."""

    torn_down: ClassVar[list[str]] = []
    waiting = Forever()

    async def process(self, x: int) -> int:
        return int(await Guarded.waiting(x))

    async def teardown(self) -> None:
        await asyncio.sleep(0)  # a stop does not cancel the teardown
        Guarded.torn_down.append(cv.current_worker().name)


def test_cancel_stops_the_loop_promptly() -> None:
    Guarded.torn_down, Guarded.waiting = [], Forever()
    n = 20
    run = (
        cv.Pipeline()
        .source(range(1000))
        .map(Guarded, workers=n, kind="asyncio", name="g")
        .run(grace=HANG * 2)
    )
    wait_until(lambda: len(Guarded.waiting.started) == n)
    t0 = time.monotonic()
    run.cancel()
    with pytest.raises(cv.Cancelled):
        run.wait()
    assert time.monotonic() - t0 < HANG  # not the grace period: they were cancelled
    assert sorted(Guarded.waiting.cancelled) == sorted(Guarded.waiting.started)
    assert sorted(Guarded.torn_down) == sorted(f"g-{i}" for i in range(1, n + 1))
    workers = [w for w in run.workers() if w.stage == "g"]
    assert {w.state for w in workers} == {"done"}
    assert not any(w.alive or w.abandoned for w in workers)
    assert stage_threads("g") == []


def test_leaving_the_loop_early_cancels_the_run() -> None:
    stuck = Forever()

    async def work(x: int) -> int:
        if x >= 10:
            return int(await stuck(x))
        return x

    run = cv.Pipeline().source(range(100)).map(work, workers=5, kind="asyncio", batch_size=1).run()
    for x in run:
        if x == 5:
            break
    assert run.done()
    assert run.state == "cancelled"
    assert sorted(stuck.cancelled) == sorted(stuck.started)
    assert stage_threads("work") == []


def test_tasks_left_behind_by_the_stage_are_cancelled_at_the_end() -> None:
    background: list[asyncio.Task[None]] = []
    cancelled: list[int] = []

    async def lingering(x: int) -> None:
        try:
            await asyncio.sleep(HANG * 10)
        except asyncio.CancelledError:
            cancelled.append(x)
            raise

    async def spawn(x: int) -> int:
        background.append(asyncio.create_task(lingering(x)))
        return x

    out = list(cv.Pipeline().source(range(5)).map(spawn, workers=2, kind="asyncio"))
    assert out == list(range(5))
    assert sorted(cancelled) == list(range(5))
    assert all(t.cancelled() for t in background)
    assert stage_threads("spawn") == []


class SlowStart:
    """A stage class whose setup() waits until cancelled."""

    waiting = Forever()
    torn_down: ClassVar[list[str]] = []

    async def setup(self) -> None:
        await SlowStart.waiting("setup")

    async def process(self, x: int) -> int:
        return x

    def teardown(self) -> None:
        SlowStart.torn_down.append(cv.current_worker().name)


def test_a_worker_stuck_in_setup_past_the_grace_is_abandoned_then_cancelled() -> None:
    SlowStart.waiting, SlowStart.torn_down = Forever(), []
    run = cv.Pipeline().source(range(10)).map(SlowStart, kind="asyncio", name="s").run(grace=0.2)
    wait_until(lambda: SlowStart.waiting.started == ["setup"])
    run.cancel()  # does not cancel setup(): the grace is for it to finish
    with pytest.raises(cv.Cancelled):
        run.wait()
    (worker,) = [w for w in run.workers() if w.stage == "s"]
    assert worker.abandoned  # still in setup() when the grace ran out
    # then cancelled: it ends, without a teardown (its setup never finished), and so
    # does its loop
    wait_until(lambda: stage_threads("s") == [])
    assert SlowStart.waiting.cancelled == ["setup"]
    assert SlowStart.torn_down == []


def test_async_def_runs_on_the_asyncio_kind_by_default() -> None:
    async def fetch(x: int) -> str:
        await asyncio.sleep(0)
        return cv.current_worker().kind

    run = cv.Pipeline().source(range(20)).map(fetch, workers=4).run()
    assert list(run) == ["asyncio"] * 20
    assert run.stats()["fetch"].kind == "asyncio"
