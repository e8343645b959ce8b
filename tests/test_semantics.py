"""The semantics that must hold on every worker kind: back-pressure, end of stream,
fail-fast, cancellation."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

import conveyor as cv
from conveyor.testing import wait_until, wait_worker_state
from tests.helpers import Gate


class Endless:
    """An endless source that counts what it has produced."""

    def __init__(self) -> None:
        self.produced = 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        for i in itertools.count():
            self.produced += 1
            yield i


# -- back-pressure ------------------------------------------------------------------


@pytest.mark.parametrize("maxsize", [None, 5])
def test_endless_source_reads_only_a_bounded_amount_ahead(
    kind: str, gate: Gate, maxsize: int | None
) -> None:
    src = Endless()

    def stuck(x: int) -> int:
        gate.wait()
        return x

    run = cv.Pipeline().source(src).map(stuck, workers=2, kind=kind, maxsize=maxsize).run()
    try:
        # the feeder fills the stage's input and then has to wait for room
        wait_worker_state(run, "source-1", "blocked")
        ahead = src.produced
        st = run.stats()["stuck"]
        assert st.queue_size <= st.queue_maxsize
        if maxsize is not None:
            assert st.queue_maxsize == maxsize
        # input queue + what the feeder holds + one batch per worker and in flight
        assert ahead <= 2 * st.queue_maxsize + 2 * 2 * 2 + 2, ahead
    finally:
        run.cancel()
        gate.open()
    with pytest.raises(cv.Cancelled):
        run.wait()


def test_queue_bound_holds_between_stages(kind: str, gate: Gate) -> None:
    def stuck(x: int) -> int:
        gate.wait()
        return x

    n = 400_000  # more than any input conveyor sizes by itself (AUTO_CAPACITY_CAP)
    run = (
        cv.Pipeline()
        .source(range(n))
        .map(lambda x: x, workers=2, kind=kind, name="fast")
        .map(stuck, kind=kind, maxsize=7, name="slow")
        .run()
    )
    try:
        wait_worker_state(run, "fast-1", "blocked")
        wait_worker_state(run, "fast-2", "blocked")
        st = run.stats()["slow"]
        assert st.queue_maxsize == 7
        assert st.queue_size <= 7
        assert run.stats()["fast"].items_in < n
    finally:
        run.cancel()
        gate.open()
    with pytest.raises(cv.Cancelled):
        run.wait()


def _fails_on_multiples_of_9973(x: int) -> int:
    if x % 9973 == 0:
        raise ValueError(x)
    return x * 2


def test_range_source_batches(kind: str) -> None:
    # a range feeding process workers travels as slices of itself: same results, same
    # order, and a failed item is named as the item itself
    src = range(7, 200_007, 2)
    run = (
        cv.Pipeline()
        .source(src)
        .map(_fails_on_multiples_of_9973, workers=2, kind=kind, on_error="skip")
        .run()
    )
    out = list(run)
    bad = [x for x in src if x % 9973 == 0]
    assert out == [x * 2 for x in src if x % 9973]
    assert sorted(f.item for f in run.failures) == bad


@pytest.mark.parametrize("ordered", [True, False])
def test_chunks_larger_than_the_next_input_get_through(kind: str, ordered: bool) -> None:
    # the first stage's batches (40 items) do not fit the second's input (3): it waits
    # for room a few items at a time, and nothing is lost or reordered
    n = 2_000
    out = list(
        cv.Pipeline()
        .source(range(n))
        .map(lambda x: x * 2, workers=2, kind=kind, batch_size=40, ordered=ordered)
        .map(lambda x: x + 1, workers=3, kind="thread", maxsize=3, ordered=ordered)
    )
    expected = [2 * x + 1 for x in range(n)]
    assert (out if ordered else sorted(out)) == expected


@pytest.mark.parametrize("batch_size", [None, 50])
def test_slow_consumer_holds_back_the_pipeline(kind: str, batch_size: int | None) -> None:
    src = Endless()
    run = (
        cv.Pipeline()
        .source(src)
        .map(lambda x: x + 1, kind=kind, workers=2, batch_size=batch_size)
        .run()
    )
    it = iter(run)
    assert [next(it) for _ in range(10)] == list(range(1, 11))
    # nobody reads: everything upstream fills up and stops
    wait_worker_state(run, "source-1", "blocked")
    first = src.produced
    if batch_size is None:
        # batches may have grown to their largest (32,768 items) before the output
        # filled up: what is held is bounded by the sizes' caps, not by a small number
        assert first < 1_000_000
    else:
        # input (3 batches a worker) + what the source holds + the reorder window
        # (8 batches) + the output (64): a few thousand at most
        assert first < 3_000
    it.close()  # leaving the loop cancels the run
    assert run.state == "cancelled"
    assert run.done()


# -- end of stream ------------------------------------------------------------------


def test_run_ends_by_itself(kind: str) -> None:
    run = (
        cv.Pipeline()
        .source(range(1000))
        .map(lambda x: x, workers=3, kind=kind)
        .filter(lambda x: x % 2, workers=2, kind=kind)
        .sink(lambda x: None, workers=2, kind=kind)
        .run()
    )
    run.wait(timeout=60)
    assert run.done()
    assert run.state == "finished"
    assert run.error is None
    assert not any(w.alive for w in run.workers())


def test_iteration_ends_when_the_run_is_over(kind: str) -> None:
    run = cv.Pipeline().source(range(100)).map(lambda x: x, workers=2, kind=kind).run()
    assert sum(run) == sum(range(100))
    assert run.done()
    assert not any(w.alive for w in run.workers())


# -- fail-fast ----------------------------------------------------------------------


def fails_on_ten(x: int) -> int:
    if x == 10:
        raise ValueError(f"bad item {x}")
    return x


def test_first_error_stops_an_endless_run(kind: str) -> None:
    run = (
        cv.Pipeline().source(Endless()).map(fails_on_ten, workers=2, kind=kind, name="parse").run()
    )
    t0 = time.monotonic()
    with pytest.raises(cv.StageError) as info:
        run.wait(timeout=60)
    assert time.monotonic() - t0 < 10  # hang guard; the run stops within milliseconds
    err = info.value
    assert isinstance(err, cv.PipelineError)
    assert err.stage == "parse"
    assert err.worker in ("parse-1", "parse-2")
    assert err.item == "10"
    assert isinstance(err.__cause__, ValueError)
    assert str(err.__cause__) == "bad item 10"
    assert "fails_on_ten" in err.traceback
    assert "_apply.py" not in err.traceback  # starts at the user's code, not conveyor's loop
    assert "bad item 10" in str(err)
    assert run.state == "failed"
    assert not any(w.alive for w in run.workers())


def test_error_surfaces_in_iteration(kind: str) -> None:
    got = []
    with pytest.raises(cv.StageError, match="bad item 10"):
        for x in cv.Pipeline().source(range(100)).map(fails_on_ten, kind=kind):
            got.append(x)
    # what came out before the error is an in-order prefix that stops before item 10
    assert got == list(range(len(got)))
    assert len(got) <= 10


def test_error_stops_other_stages_promptly(kind: str, gate: Gate) -> None:
    # a slow stage downstream must not keep the run alive after an error upstream
    def slow(x: int) -> int:
        gate.wait()
        return x

    run = (
        cv.Pipeline()
        .source(range(1000))
        .map(slow, workers=2, kind=kind, name="slow")
        .map(fails_on_ten, kind=kind, name="fails")
        .run(grace=0.5)
    )
    try:
        wait_worker_state(run, "slow-1", "busy")
        wait_worker_state(run, "slow-2", "busy")
        gate.open()
        with pytest.raises(cv.StageError) as info:
            run.wait(timeout=60)
        assert info.value.stage == "fails"
    finally:
        gate.open()


def test_long_running_thread_worker_is_abandoned_after_grace(gate: Gate) -> None:
    def hold(x: int) -> int:
        if x == 0:
            gate.wait()  # stuck in user code
        return x

    run = (
        cv.Pipeline()
        .source(range(100))
        .map(hold, workers=2, name="hold", ordered=False)
        .map(fails_on_ten, name="fails")
        .run(grace=0.2)
    )
    try:
        with pytest.raises(cv.StageError):
            run.wait(timeout=30)
        stuck = [w for w in run.workers() if w.abandoned]
        assert [w.name for w in stuck] == ["hold-1"] or [w.name for w in stuck] == ["hold-2"]
        assert stuck[0].alive
    finally:
        gate.open()


def test_exception_in_source_iterable(kind: str) -> None:
    def source():  # type: ignore[no-untyped-def]
        yield 1
        raise OSError("disk gone")

    with pytest.raises(cv.StageError, match="disk gone") as info:
        list(cv.Pipeline().source(source()).map(lambda x: x, kind=kind))
    assert info.value.stage == "source"
    # the traceback starts at the user's generator, not in conveyor's feeder
    frames = [ln for ln in info.value.traceback.splitlines() if ln.startswith('  File "')]
    assert "in source" in frames[0]


def test_exception_in_a_producer(kind: str) -> None:
    def good():  # type: ignore[no-untyped-def]
        yield from range(5)

    def bad():  # type: ignore[no-untyped-def]
        yield 1
        raise KeyError("producer broke")

    with pytest.raises(cv.StageError, match="producer broke") as info:
        list(cv.Pipeline().source(good, bad, kind=kind).map(lambda x: x))
    assert info.value.stage == "source"


def test_setup_failure(kind: str) -> None:
    class BadSetup:
        def setup(self) -> None:
            raise RuntimeError("no database")

        def process(self, item: int) -> int:
            return item

    with pytest.raises(cv.StageError, match="no database") as info:
        list(cv.Pipeline().source(range(3)).map(BadSetup, kind=kind, name="db"))
    assert info.value.stage == "db"
    assert info.value.item is None


def test_teardown_failure(kind: str) -> None:
    class BadTeardown:
        def process(self, item: int) -> int:
            return item

        def teardown(self) -> None:
            raise RuntimeError("flush failed")

    with pytest.raises(cv.StageError, match="flush failed"):
        list(cv.Pipeline().source(range(3)).map(BadTeardown, kind=kind))


class Unpicklable(Exception):
    def __init__(self, a: int, b: int) -> None:  # pickling loses the arguments
        super().__init__(f"{a}-{b}")


def test_exception_that_cannot_be_rebuilt(kind: str) -> None:
    def boom(x: int) -> int:
        raise Unpicklable(1, 2)

    with pytest.raises(cv.StageError, match="1-2") as info:
        list(cv.Pipeline().source([1]).map(boom, kind=kind))
    cause = info.value.__cause__
    assert isinstance(cause, (Unpicklable, cv.RemoteError))


# -- cancellation -----------------------------------------------------------------


def test_cancel_stops_an_endless_run(kind: str) -> None:
    src = Endless()
    run = (
        cv.Pipeline().source(src).map(lambda x: x, workers=2, kind=kind).sink(lambda x: None).run()
    )
    wait_until(lambda: run.stats()["sink"].items_out > 100)
    run.cancel()
    with pytest.raises(cv.Cancelled):
        run.wait(timeout=60)
    assert run.state == "cancelled"
    assert not any(w.alive for w in run.workers())
    produced = src.produced
    time.sleep(0.05)  # nothing reads the source once the run is over
    assert src.produced == produced


def test_cancel_from_another_thread_while_iterating(kind: str) -> None:
    run = cv.Pipeline().source(Endless()).map(lambda x: x, kind=kind).run()
    seen = 0
    with pytest.raises(cv.Cancelled):
        for _ in run:
            seen += 1
            if seen == 50:
                threading.Thread(target=run.cancel).start()
    assert seen >= 50


def test_cancel_after_the_end_changes_nothing(kind: str) -> None:
    run = cv.Pipeline().source(range(10)).map(lambda x: x, kind=kind).run()
    run.wait()
    run.cancel()
    run.wait()
    assert run.state == "finished"


def test_cancel_waits_for_the_current_item(kind: str, marks) -> None:  # type: ignore[no-untyped-def]
    gate = Gate(marks / "gate")
    done_dir = str(marks)

    def work(x: int) -> int:
        open(f"{done_dir}/started-{x}", "w").close()
        gate.wait()
        open(f"{done_dir}/done-{x}", "w").close()
        return x

    run = cv.Pipeline().source(range(100)).map(work, kind=kind, name="work").run(grace=30)
    # "busy" only says a batch was handed over: wait until the item has started
    wait_until(lambda: (marks / "started-0").exists())
    run.cancel()
    gate.open()
    with pytest.raises(cv.Cancelled):
        run.wait()
    done = [p.name for p in marks.iterdir() if p.name.startswith("done-")]
    assert done == ["done-0"]  # finished its current item, took no other


def test_break_out_of_iteration_cancels(kind: str) -> None:
    run = cv.Pipeline().source(Endless()).map(lambda x: x, kind=kind, workers=2).run()
    for x in run:
        if x == 20:
            break
    # CPython closes the generator at once; the run is cancelled and its workers gone
    wait_until(run.done)
    assert run.state == "cancelled"
    assert not any(w.alive for w in run.workers())
