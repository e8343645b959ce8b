"""The channel contract, run against every channel kind."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import conveyor
from conveyor import Channel, Closed
from tests.channels.conftest import use_implementation
from tests.helpers import wait_until

# "process-python": the process channel without its C hot paths
KINDS = ["thread", "process", "process-python"]
JOIN = 30.0  # only reached if something hangs


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    name = str(request.param)
    if name.startswith("process"):
        use_implementation("python" if name == "process-python" else "native", monkeypatch)
        return "process"
    return name


@pytest.fixture
def make(kind: str) -> Iterator[Callable[[int], Channel[Any]]]:
    made: list[Channel[Any]] = []

    def factory(maxsize: int) -> Channel[Any]:
        ch: Channel[Any] = Channel(maxsize, kind=kind)
        made.append(ch)
        return ch

    yield factory
    for ch in made:
        ch.close()


class Worker(threading.Thread):
    """A thread whose result or exception the test collects with a bounded join."""

    def __init__(self, fn: Callable[[], object]) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.result: object = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:
            self.error = exc

    def outcome(self) -> object:
        self.join(JOIN)
        assert not self.is_alive(), "thread hung"
        if self.error is not None:
            raise self.error
        return self.result


def test_public_class_dispatches_on_kind(kind: str) -> None:
    ch: Channel[int] = Channel(2, kind=kind)
    assert isinstance(ch, Channel)
    assert ch.kind == kind
    assert ch.maxsize == 2
    ch.close()


@pytest.mark.parametrize("bad", [0, -1])
def test_maxsize_must_be_positive(kind: str, bad: int) -> None:
    with pytest.raises(ValueError, match="maxsize must be >= 1"):
        Channel(bad, kind=kind)


@pytest.mark.parametrize("bad", [1.5, "3", True, None])
def test_maxsize_must_be_an_int(kind: str, bad: object) -> None:
    with pytest.raises(TypeError, match="maxsize must be an int"):
        Channel(bad, kind=kind)  # type: ignore[arg-type]


def test_unknown_kind() -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        Channel(3, kind="carrier-pigeon")


def test_seed_queue_semantics(make: Callable[[int], Channel[Any]]) -> None:
    q = make(3)
    q.put("first")
    q.put({"second": None})
    q.put("三")
    assert q.full()
    with pytest.raises(queue.Full):
        q.put(4, block=False)
    with pytest.raises(queue.Full):
        q.put(4, timeout=0.05)
    assert q.get() == "first"
    assert q.get() == {"second": None}
    assert q.get() == "三"
    assert q.empty()
    with pytest.raises(queue.Empty):
        q.get(block=False)
    with pytest.raises(queue.Empty):
        q.get(timeout=0.05)


def test_negative_timeout_is_rejected(make: Callable[[int], Channel[Any]]) -> None:
    q = make(1)
    with pytest.raises(ValueError, match="timeout"):
        q.put(1, timeout=-1)
    with pytest.raises(ValueError, match="timeout"):
        q.get(timeout=-1)


def test_put_many_get_many_keep_order(make: Callable[[int], Channel[Any]]) -> None:
    q = make(10)
    q.put_many(range(7))
    assert q.qsize() == 7
    assert q.get_many(3) == [0, 1, 2]
    assert q.get() == 3
    # get_many returns what is there without waiting for max_items
    assert q.get_many(100) == [4, 5, 6]
    with pytest.raises(queue.Empty):
        q.get_many(5, block=False)
    with pytest.raises(queue.Empty):
        q.get_many(5, timeout=0.05)
    with pytest.raises(ValueError, match="max_items"):
        q.get_many(0)


def test_put_many_copies_its_input(make: Callable[[int], Channel[Any]]) -> None:
    q = make(10)
    items = [1, 2, 3]
    q.put_many(items)
    items.append(4)
    items[0] = 99
    assert q.get_many(10) == [1, 2, 3]


def test_put_many_bigger_than_maxsize_flows_through(
    make: Callable[[int], Channel[Any]],
) -> None:
    q = make(4)
    n = 1000
    producer = Worker(lambda: q.put_many(range(n)))
    got: list[int] = []
    while len(got) < n:
        chunk = q.get_many(7, timeout=JOIN)
        assert len(chunk) <= 7
        got.extend(chunk)
        assert q.qsize() <= 4
    producer.outcome()
    assert got == list(range(n))


def test_put_many_without_blocking_reports_what_went_in(
    make: Callable[[int], Channel[Any]],
) -> None:
    q = make(3)
    q.put("a")
    with pytest.raises(queue.Full) as info:
        q.put_many(["b", "c", "d", "e"], block=False)
    assert info.value.put_count == 2  # type: ignore[attr-defined]
    assert q.get_many(10) == ["a", "b", "c"]


def test_blocked_put_resumes_when_room_appears(make: Callable[[int], Channel[Any]]) -> None:
    q = make(1)
    q.put(1)
    putter = Worker(lambda: q.put(2))
    assert q.get(timeout=JOIN) == 1
    putter.outcome()
    assert q.get(timeout=JOIN) == 2


def test_blocked_get_resumes_when_an_item_arrives(make: Callable[[int], Channel[Any]]) -> None:
    q = make(1)
    getter = Worker(lambda: q.get())
    q.put("x")
    assert getter.outcome() == "x"


def test_close_drains_then_raises_closed(make: Callable[[int], Channel[Any]]) -> None:
    q = make(5)
    q.put_many([1, 2, 3])
    q.close()
    q.close()  # idempotent
    assert q.closed
    with pytest.raises(Closed):
        q.put(4)
    with pytest.raises(Closed):
        q.put_many([4])
    assert q.get() == 1
    assert q.get_many(10) == [2, 3]
    with pytest.raises(Closed):
        q.get()
    with pytest.raises(Closed):
        q.get(block=False)
    with pytest.raises(Closed):
        q.get_many(3, timeout=1)


def test_close_wakes_blocked_getters(make: Callable[[int], Channel[Any]]) -> None:
    q = make(2)
    getters = [Worker(q.get) for _ in range(3)]
    q.close()
    for g in getters:
        with pytest.raises(Closed):
            g.outcome()


def test_close_wakes_blocked_putters(make: Callable[[int], Channel[Any]]) -> None:
    q = make(1)
    q.put(0)
    putters = [Worker(lambda: q.put(1)) for _ in range(2)]
    q.close()
    for p in putters:
        with pytest.raises(Closed):
            p.outcome()
    assert q.get() == 0


def test_stats(make: Callable[[int], Channel[Any]]) -> None:
    q = make(4)
    q.put_many("abc")
    q.get()
    s = q.stats()
    assert (s.size, s.maxsize, s.closed, s.put_count, s.get_count) == (2, 4, False, 3, 1)
    assert "2/4" in repr(q)
    q.close()
    assert q.stats().closed


def test_many_producers_many_consumers(make: Callable[[int], Channel[Any]]) -> None:
    q = make(16)
    producers, consumers, per = 4, 4, 2000

    def produce(p: int) -> None:
        for i in range(0, per, 50):
            q.put_many([(p, j) for j in range(i, i + 50)])

    def consume() -> list[tuple[int, int]]:
        got = []
        while True:
            try:
                got.extend(q.get_many(13))
            except Closed:
                return got

    cons = [Worker(consume) for _ in range(consumers)]
    prods = [Worker(lambda p=p: produce(p)) for p in range(producers)]  # type: ignore[misc]
    for w in prods:
        w.outcome()
    q.close()
    results = [w.outcome() for w in cons]
    everything = [x for r in results for x in r]  # type: ignore[attr-defined]
    assert sorted(everything) == sorted((p, j) for p in range(producers) for j in range(per))
    for r in results:  # each producer's items arrive in its order at every consumer
        for p in range(producers):
            seq = [j for (pp, j) in r if pp == p]  # type: ignore[attr-defined]
            assert seq == sorted(seq)


def test_single_and_batch_putters_with_one_at_a_time_getters(
    make: Callable[[int], Channel[Any]],
) -> None:
    """A put_many waiting for room for part of its batch and a put waiting for one slot
    share the channel; getters that take one item at a time must wake both."""
    q = make(6)
    per = 600

    def put_singly() -> None:
        for i in range(per):
            q.put(("one", i))

    def put_batches() -> None:
        for i in range(0, per, 20):
            q.put_many([("many", j) for j in range(i, i + 20)])

    def take_singly() -> list[tuple[str, int]]:
        got = []
        while True:
            try:
                got.append(q.get())
            except Closed:
                return got

    getters = [Worker(take_singly) for _ in range(2)]
    putters = [Worker(put_singly), Worker(put_batches)]
    for w in putters:
        w.outcome()
    q.close()
    got = [x for w in getters for x in w.outcome()]  # type: ignore[attr-defined]
    assert sorted(got) == sorted((k, i) for k in ("one", "many") for i in range(per))


def test_a_waiting_put_many_goes_in_after_the_channel_shrinks() -> None:
    """The engine shrinks and grows its channels while putters wait; a put_many that
    waits for more room than the shrunk channel has must still go in."""
    from conveyor._channels._memory import MemoryChannel

    q: MemoryChannel[int] = MemoryChannel(8)
    q.put_many(range(8))
    putter = Worker(lambda: q.put_many(range(8, 16)))
    wait_until(lambda: q._putters == 1, "the put_many waits")
    q._set_maxsize(2)
    got = [q.get(timeout=JOIN) for _ in range(16)]
    putter.outcome()
    assert got == list(range(16))


def test_exported() -> None:
    assert conveyor.Channel is Channel
    assert conveyor.Closed is Closed


# -- batches: put_many of small items shares records; getters take them partly ----------


def rows(n: int, tag: str = "r") -> list[dict[str, object]]:
    return [{"tag": tag, "i": i, "name": f"row-{i}", "ok": i % 2 == 0} for i in range(n)]


def test_get_one_at_a_time_from_batches(make: Callable[[int], Channel[Any]]) -> None:
    q = make(1000)
    items = rows(300)
    q.put_many(items)
    got = []
    for k in range(300):
        assert q.qsize() == 300 - k
        got.append(q.get())
    assert got == items
    assert q.qsize() == 0
    with pytest.raises(queue.Empty):
        q.get(block=False)


def test_get_many_smaller_and_larger_than_batches(make: Callable[[int], Channel[Any]]) -> None:
    q = make(1000)
    items = rows(500)
    q.put_many(items[:250])
    q.put_many(items[250:])
    got: list[Any] = []
    sizes = [1, 3, 7, 50, 200, 1000]
    k = 0
    while len(got) < len(items):
        size = sizes[k % len(sizes)]
        chunk = q.get_many(size)
        assert 1 <= len(chunk) <= size
        got.extend(chunk)
        assert q.qsize() == len(items) - len(got)
        k += 1
    assert got == items


def test_batch_and_single_putters_keep_each_producers_order(
    make: Callable[[int], Channel[Any]],
) -> None:
    q = make(64)
    per = 400

    def put_batches(p: int) -> None:
        for i in range(0, per, 25):
            q.put_many([{"p": p, "i": j, "pad": "x" * (j % 50)} for j in range(i, i + 25)])

    def put_singly(p: int) -> None:
        for i in range(per):
            q.put({"p": p, "i": i})

    def put_mixed(p: int) -> None:
        for i in range(0, per, 10):
            batch: list[Any] = [{"p": p, "i": j} for j in range(i, i + 10)]
            batch[3] = {"p": p, "i": i + 3, "big": b"z" * 20_000}  # alone, out of band
            batch[6] = {"p": p, "i": i + 6, "set": {1, 2}}  # not plain data: alone
            q.put_many(batch)

    def take(step: int) -> list[Any]:
        got: list[Any] = []
        while True:
            try:
                got.extend([q.get()] if step == 1 else q.get_many(step))
            except Closed:
                return got

    getters = [Worker(lambda s=s: take(s)) for s in (1, 5, 40)]  # type: ignore[misc]
    putters = [
        Worker(lambda: put_batches(0)),
        Worker(lambda: put_singly(1)),
        Worker(lambda: put_mixed(2)),
        Worker(lambda: put_batches(3)),
    ]
    for w in putters:
        w.outcome()
    q.close()
    results: list[list[Any]] = [w.outcome() for w in getters]  # type: ignore[misc]
    everything = sorted((x["p"], x["i"]) for r in results for x in r)
    assert everything == [(p, i) for p in range(4) for i in range(per)]
    for r in results:
        for p in range(4):
            seq = [x["i"] for x in r if x["p"] == p]
            assert seq == sorted(seq)


def test_close_with_a_batch_partly_taken(make: Callable[[int], Channel[Any]]) -> None:
    q = make(100)
    one = Worker(q.get)
    some = Worker(lambda: q.get_many(3))
    items = rows(40)
    q.put_many(items)
    first: list[Any] = [one.outcome(), *some.outcome()]  # type: ignore[misc]
    assert 2 <= len(first) <= 4
    q.close()
    with pytest.raises(Closed):
        q.put_many(rows(3))
    rest: list[Any] = []
    while True:
        try:
            rest.extend(q.get_many(7))
        except Closed:
            break
    assert sorted(first + rest, key=lambda x: x["i"]) == items
    assert q.qsize() == 0
    with pytest.raises(Closed):
        q.get()


def test_close_wakes_getters_of_an_empty_channel_after_batches(
    make: Callable[[int], Channel[Any]],
) -> None:
    q = make(100)
    q.put_many(rows(10))
    assert len(q.get_many(10)) == 10
    getters = [Worker(q.get), Worker(lambda: q.get_many(5))]
    q.close()
    for w in getters:
        with pytest.raises(Closed):
            w.outcome()
