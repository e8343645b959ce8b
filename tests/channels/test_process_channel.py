"""ProcessChannel across processes: what the contract tests (threads only) cannot show."""

from __future__ import annotations

import gc
import os
import pickle
import queue
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from conveyor import Channel, Closed
from conveyor._channels._shm import _GET_WAITERS, _PUT_WAITERS, _W_ACTIVE, ProcessChannel

JOIN = 30.0  # only reached if something hangs
BIG = 20 * 1024 * 1024
FORK_WARNING = "ignore:This process .* is multi-threaded, use of fork:DeprecationWarning"
DEV_SHM = "/dev/shm"

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="shared memory tests need Linux")


# -- helpers ------------------------------------------------------------------------


def _report(conn: Any, fn: Callable[..., object], args: tuple[object, ...]) -> None:
    """Body of every child: run ``fn`` and send back its result or its exception."""
    try:
        result = fn(*args)
    except BaseException as exc:
        try:
            conn.send(("error", exc))
        except Exception:
            conn.send(("error", RuntimeError(repr(exc))))
    else:
        conn.send(("ok", result))
    conn.close()


class Child:
    """A process running ``fn(*args)``; ``outcome()`` returns its result or raises its error."""

    def __init__(
        self, ctx: Any, fn: Callable[..., object], *args: object, daemon: bool = True
    ) -> None:
        self._conn, send_end = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=_report, args=(send_end, fn, args), daemon=daemon)
        self.proc.start()
        send_end.close()

    def outcome(self) -> Any:
        assert self._conn.poll(JOIN), "child process hung"
        status, value = self._conn.recv()
        self.proc.join(JOIN)
        assert self.proc.exitcode == 0
        self._conn.close()
        if status == "error":
            raise value
        return value

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(JOIN)
        self._conn.close()


@pytest.fixture
def spawn_child() -> Iterator[Callable[..., Child]]:
    """Start children in a forkserver context; any still running at the end is killed."""
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    children: list[Child] = []

    def start(fn: Callable[..., object], *args: object, daemon: bool = True) -> Child:
        child = Child(ctx, fn, *args, daemon=daemon)
        children.append(child)
        return child

    yield start
    for child in children:
        child.kill()


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    """Poll a state that another process changes; fail only if it never comes."""
    deadline = time.monotonic() + JOIN
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.002)


def big_item(seed: int) -> bytes:
    return seed.to_bytes(4, "little") * (BIG // 4)


# -- child bodies (module level, so that every start method can import them) ---------------


def produce(ch: Channel[Any], p: int, per: int) -> None:
    # put, put_many and put with a timeout, so that all three meet across processes
    i = 0
    while i < per:
        if i % 3 == 0:
            ch.put((p, i))
            i += 1
        elif i % 3 == 1:
            n = min(7, per - i)
            ch.put_many([(p, j) for j in range(i, i + n)])
            i += n
        else:
            ch.put((p, i), timeout=JOIN)
            i += 1


def consume(ch: Channel[Any]) -> list[Any]:
    got: list[Any] = []
    while True:
        try:
            if len(got) % 2:
                got.append(ch.get())
            else:
                got.extend(ch.get_many(5))
        except Closed:
            return got


def echo(inbox: Channel[Any], outbox: Channel[Any]) -> str:
    item = inbox.get(timeout=JOIN)
    outbox.put(("echo", item), timeout=JOIN)
    return "done"


def echo_through_grandchild(inbox: Channel[Any], outbox: Channel[Any]) -> str:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    grandchild = Child(ctx, echo, inbox, outbox)
    result: str = grandchild.outcome()
    return result


def get_expecting_closed(ch: Channel[Any]) -> str:
    try:
        item = ch.get()
    except Closed:
        return "closed"
    return f"got {item!r}"


def put_expecting_closed(ch: Channel[Any], item: object) -> str:
    try:
        ch.put(item)
    except Closed:
        return "closed"
    return "put"


def put_one(ch: Channel[Any], item: object) -> str:
    ch.put(item)
    return "put"


def get_one(ch: Channel[Any]) -> Any:
    return ch.get(timeout=JOIN)


def put_big_items(ch: Channel[Any], seeds: list[int]) -> None:
    for seed in seeds:
        ch.put(("small", seed))
        ch.put(big_item(seed))
    ch.put_many([("small", -1), big_item(seeds[0]), ("small", -2)])


def get_checksums(ch: Channel[Any], n: int) -> list[object]:
    """Take ``n`` items; return small ones as they are and big ones as (length, crc)."""
    out: list[object] = []
    while len(out) < n:
        for item in ch.get_many(3, timeout=JOIN):
            out.append((len(item), zlib.crc32(item)) if isinstance(item, bytes) else item)
    return out


_KEEP: list[object] = []


def checksums_until_closed(ch: Channel[Any]) -> list[object]:
    out: list[object] = []
    while True:
        try:
            item = ch.get()
        except Closed:
            return out
        out.append((len(item), zlib.crc32(item)) if isinstance(item, bytes) else item)


def make_channel_and_exit() -> list[str]:
    """Make a channel and leave without dropping it: exiting must unlink its semaphores."""
    ch: ProcessChannel[int] = ProcessChannel(2)
    ch.put(1)
    _KEEP.append(ch)  # alive until the process exits
    return sem_names(ch)


def sem_names(ch: ProcessChannel[Any]) -> list[str]:
    sems: tuple[Any, ...] = (ch._lock, ch._get_sem, ch._put_sem, ch._w_sem, ch._r_sem)
    return ["sem." + s._semlock.name.lstrip("/") for s in sems]


def die_holding_the_lock(ch: ProcessChannel[Any]) -> None:
    ch._lock.acquire()
    os._exit(0)


def fail_channel_later(ch: ProcessChannel[Any]) -> str:
    wait_until(lambda: ch._ctl[_GET_WAITERS] == 1, "the parent's getter sleeps")
    ch._fail(ValueError("the run stopped"))
    return "failed"


# -- across processes --------------------------------------------------------------------


def test_many_producer_and_consumer_processes(spawn_child: Callable[..., Child]) -> None:
    # through the public class: keyword arguments reach ProcessChannel
    ch: Channel[tuple[int, int]] = Channel(8, kind="process", buffer_bytes=4096)  # type: ignore[abstract]
    producers, consumers, per = 3, 3, 1500
    cons = [spawn_child(consume, ch) for _ in range(consumers)]
    prods = [spawn_child(produce, ch, p, per) for p in range(producers)]
    for child in prods:
        child.outcome()
    ch.close()
    results: list[list[tuple[int, int]]] = [c.outcome() for c in cons]
    everything = sorted(x for r in results for x in r)
    assert everything == sorted((p, i) for p in range(producers) for i in range(per))
    for r in results:  # each producer's items arrive in its order at every consumer
        for p in range(producers):
            seq = [i for (pp, i) in r if pp == p]
            assert seq == sorted(seq)
    s = ch.stats()
    assert (s.size, s.put_count, s.get_count) == (0, producers * per, producers * per)


@pytest.mark.parametrize(
    "method",
    [
        pytest.param("fork", marks=pytest.mark.filterwarnings(FORK_WARNING)),
        "forkserver",
        "spawn",
    ],
)
def test_passed_to_a_child_with_each_start_method(method: str) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context(method)
    inbox: Channel[object] = ProcessChannel(2)
    outbox: Channel[object] = ProcessChannel(2)
    child = Child(ctx, echo, inbox, outbox)
    inbox.put({"hello": [1, 2, 3]})
    assert outbox.get(timeout=JOIN) == ("echo", {"hello": [1, 2, 3]})
    assert child.outcome() == "done"


def test_a_child_passes_it_on_to_a_grandchild(spawn_child: Callable[..., Child]) -> None:
    inbox: Channel[object] = ProcessChannel(2)
    outbox: Channel[object] = ProcessChannel(2)
    child = spawn_child(echo_through_grandchild, inbox, outbox, daemon=False)
    inbox.put("from the grandparent")
    assert outbox.get(timeout=JOIN) == ("echo", "from the grandparent")
    assert child.outcome() == "done"


def test_pickling_outside_process_start_is_refused() -> None:
    ch: Channel[int] = ProcessChannel(1)
    with pytest.raises(RuntimeError, match="inheritance"):
        pickle.dumps(ch)
    ch.close()


def test_close_wakes_a_getter_blocked_in_another_process(
    spawn_child: Callable[..., Child],
) -> None:
    ch: ProcessChannel[int] = ProcessChannel(2)
    getter = spawn_child(get_expecting_closed, ch)
    wait_until(lambda: ch._ctl[_GET_WAITERS] == 1, "the child's get() sleeps")
    ch.close()
    assert getter.outcome() == "closed"


def test_close_wakes_a_putter_blocked_in_another_process(
    spawn_child: Callable[..., Child],
) -> None:
    ch: ProcessChannel[int] = ProcessChannel(1)
    ch.put(0)
    putter = spawn_child(put_expecting_closed, ch, 1)
    wait_until(lambda: ch._ctl[_PUT_WAITERS] == 1, "the child's put() sleeps")
    ch.close()
    assert putter.outcome() == "closed"
    assert ch.get() == 0
    with pytest.raises(Closed):
        ch.get()


def test_put_blocked_in_another_process_resumes_when_room_appears(
    spawn_child: Callable[..., Child],
) -> None:
    ch: ProcessChannel[int] = ProcessChannel(1)
    ch.put(1)
    putter = spawn_child(put_one, ch, 2)
    wait_until(lambda: ch._ctl[_PUT_WAITERS] == 1, "the child's put() sleeps")
    assert ch.get(timeout=JOIN) == 1
    assert putter.outcome() == "put"
    assert ch.get(timeout=JOIN) == 2


def test_get_blocked_in_another_process_resumes_when_an_item_arrives(
    spawn_child: Callable[..., Child],
) -> None:
    ch: ProcessChannel[str] = ProcessChannel(1)
    getter = spawn_child(get_one, ch)
    wait_until(lambda: ch._ctl[_GET_WAITERS] == 1, "the child's get() sleeps")
    ch.put("x")
    assert getter.outcome() == "x"


def test_fail_reaches_a_getter_in_another_process(spawn_child: Callable[..., Child]) -> None:
    ch: ProcessChannel[int] = ProcessChannel(1)
    failer = spawn_child(fail_channel_later, ch)
    with pytest.raises(ValueError, match="the run stopped"):
        ch.get(timeout=JOIN)
    assert failer.outcome() == "failed"
    with pytest.raises(ValueError, match="the run stopped"):
        ch.put(1)


def test_fail_still_works_after_a_process_died_holding_the_lock(
    spawn_child: Callable[..., Child], monkeypatch: pytest.MonkeyPatch
) -> None:
    from conveyor._channels import _shm

    monkeypatch.setattr(_shm, "_FAIL_WAIT", 0.2)
    ch: ProcessChannel[int] = ProcessChannel(1)
    dying = spawn_child(die_holding_the_lock, ch)
    dying.proc.join(JOIN)
    assert dying.proc.exitcode == 0
    outcome: list[BaseException] = []

    def getter() -> None:
        try:
            ch.get()
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=getter, daemon=True)
    thread.start()
    ch._fail(ValueError("a worker crashed"))
    thread.join(JOIN)
    assert not thread.is_alive()
    assert [type(e) for e in outcome] == [ValueError]
    with pytest.raises(ValueError, match="a worker crashed"):
        ch.put(1)


def test_set_maxsize_is_seen_by_every_process(spawn_child: Callable[..., Child]) -> None:
    ch: ProcessChannel[int] = ProcessChannel(1)
    ch.put(1)
    putter = spawn_child(put_one, ch, 2)
    wait_until(lambda: ch._ctl[_PUT_WAITERS] == 1, "the child's put() sleeps")
    ch._set_maxsize(2)  # the sleeping putter gets the new room
    assert putter.outcome() == "put"
    assert ch.maxsize == 2
    assert ch.get_many(5) == [1, 2]


# -- large items ------------------------------------------------------------------------


def test_items_far_larger_than_the_buffer_cross_processes(
    spawn_child: Callable[..., Child],
) -> None:
    ch: Channel[Any] = ProcessChannel(3, buffer_bytes=1 << 16)
    seeds = [1, 2]
    producer = spawn_child(put_big_items, ch, seeds)
    expected: list[object] = []
    for seed in seeds:
        expected += [("small", seed), (BIG, zlib.crc32(big_item(seed)))]
    expected += [("small", -1), (BIG, zlib.crc32(big_item(seeds[0]))), ("small", -2)]
    assert get_checksums(ch, len(expected)) == expected
    producer.outcome()
    # and the other way round: the child takes what the parent streams
    consumer = spawn_child(get_checksums, ch, len(expected))
    put_big_items(ch, seeds)
    assert consumer.outcome() == expected
    assert ch.qsize() == 0


def test_large_items_with_several_streaming_producers_and_consumers(
    spawn_child: Callable[..., Child],
) -> None:
    ch: Channel[Any] = ProcessChannel(2, buffer_bytes=1 << 15)
    prods = [spawn_child(put_big_items, ch, [p]) for p in (5, 6)]
    cons = [spawn_child(checksums_until_closed, ch) for _ in range(2)]
    for child in prods:
        child.outcome()
    ch.close()
    got = sorted((x for c in cons for x in c.outcome()), key=repr)
    expected: list[object] = []
    for p in (5, 6):
        crc = (BIG, zlib.crc32(big_item(p)))
        expected += [("small", p), crc, ("small", -1), crc, ("small", -2)]
    assert got == sorted(expected, key=repr)


def test_large_item_without_a_reader_gives_up_cleanly() -> None:
    ch: ProcessChannel[Any] = ProcessChannel(4, buffer_bytes=4096)
    ch.put("before")
    with pytest.raises(queue.Full):
        ch.put(b"x" * 100_000, block=False)
    with pytest.raises(queue.Full):
        ch.put(b"x" * 100_000, timeout=0.05)  # streamed in part, then withdrawn
    with pytest.raises(queue.Full) as info:
        ch.put_many(["a", b"y" * 100_000, "b"], timeout=0.05)
    assert info.value.put_count == 1  # type: ignore[attr-defined]
    assert ch._ctl[_W_ACTIVE] == 0
    assert ch.qsize() == 2
    assert ch.get_many(10) == ["before", "a"]
    ch.put(b"z" * 3000)
    assert ch.get() == b"z" * 3000


def test_close_withdraws_a_large_item_that_no_reader_began() -> None:
    ch: ProcessChannel[Any] = ProcessChannel(2, buffer_bytes=4096)
    result: list[object] = []

    def putter() -> None:
        try:
            ch.put(b"x" * 100_000)
        except Closed:
            result.append("closed")

    thread = threading.Thread(target=putter, daemon=True)
    thread.start()
    wait_until(lambda: ch._ctl[_W_ACTIVE] == 1, "the put streams")
    ch.close()
    thread.join(JOIN)
    assert not thread.is_alive()
    assert result == ["closed"]
    assert ch.qsize() == 0
    with pytest.raises(Closed):
        ch.get()


def test_large_items_between_threads() -> None:
    ch: ProcessChannel[Any] = ProcessChannel(3, buffer_bytes=1 << 12)
    items = [b"a" * 50_000, "small", b"b" * 70_000, list(range(10_000)), b"c" * 5000]
    got: list[Any] = []

    def consumer() -> None:
        while len(got) < len(items) * 2:
            got.extend(ch.get_many(2, timeout=JOIN))

    thread = threading.Thread(target=consumer, daemon=True)
    thread.start()
    ch.put_many(items)
    for item in items:
        ch.put(item, timeout=JOIN)
    thread.join(JOIN)
    assert not thread.is_alive()
    assert got == items + items


@pytest.mark.parametrize(
    ("buffer_bytes", "max_len"),
    [(1003, 3000), (200_003, 100_000)],  # odd sizes: lengths and records wrap anywhere
)
def test_random_sizes_and_calls_between_threads(buffer_bytes: int, max_len: int) -> None:
    import random

    ch: ProcessChannel[tuple[int, int, bytes]] = ProcessChannel(5, buffer_bytes=buffer_bytes)
    per, producers, consumers = 300, 2, 2

    def produce(p: int) -> None:
        rnd = random.Random(p)
        i = 0
        while i < per:
            n = min(rnd.randint(1, 4), per - i)
            batch = [(p, j, bytes([j % 251]) * rnd.randint(0, max_len)) for j in range(i, i + n)]
            if n == 1:
                ch.put(batch[0], timeout=JOIN)
            else:
                ch.put_many(batch, timeout=JOIN)
            i += n

    def consume(c: int, out: list[tuple[int, int, bytes]]) -> None:
        rnd = random.Random(100 + c)
        while True:
            try:
                if rnd.random() < 0.5:
                    out.append(ch.get(timeout=JOIN))
                else:
                    out.extend(ch.get_many(rnd.randint(1, 6), timeout=JOIN))
            except Closed:
                return

    results: list[list[tuple[int, int, bytes]]] = [[] for _ in range(consumers)]
    cons = [
        threading.Thread(target=consume, args=(c, results[c]), daemon=True)
        for c in range(consumers)
    ]
    prods = [threading.Thread(target=produce, args=(p,), daemon=True) for p in range(producers)]
    for t in cons + prods:
        t.start()
    for t in prods:
        t.join(JOIN)
        assert not t.is_alive()
    ch.close()
    for t in cons:
        t.join(JOIN)
        assert not t.is_alive()
    everything = sorted((p, j) for r in results for (p, j, _) in r)
    assert everything == sorted((p, j) for p in range(producers) for j in range(per))
    for r in results:
        assert all(data == bytes([j % 251]) * len(data) for (_, j, data) in r)
        for p in range(producers):
            seq = [j for (pp, j, _) in r if pp == p]
            assert seq == sorted(seq)
    s = ch.stats()
    assert (s.size, s.put_count, s.get_count) == (0, producers * per, producers * per)


# -- misc -----------------------------------------------------------------------------


def test_unpicklable_item_is_refused_and_the_channel_still_works() -> None:
    ch: ProcessChannel[Any] = ProcessChannel(2)
    with pytest.raises((pickle.PicklingError, TypeError, AttributeError)):
        ch.put(lambda: None)
    ch.put(1)
    assert ch.get() == 1


@pytest.mark.parametrize(("bad", "error"), [(10, ValueError), (1.5, TypeError), (True, TypeError)])
def test_buffer_bytes_is_checked(bad: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="buffer_bytes"):
        ProcessChannel(1, buffer_bytes=bad)  # type: ignore[arg-type]


# -- nothing left behind -----------------------------------------------------------------


@pytest.mark.skipif(not os.path.isdir(DEV_SHM), reason="no /dev/shm")
def test_no_shared_memory_is_left_behind(spawn_child: Callable[..., Child]) -> None:
    before = set(os.listdir(DEV_SHM))
    ch: ProcessChannel[Any] = ProcessChannel(2, buffer_bytes=1 << 14)
    names = sem_names(ch)
    assert set(names) <= set(os.listdir(DEV_SHM))
    # the ring itself never had a name
    assert os.readlink(f"/proc/self/fd/{ch._fd}").startswith("/memfd:")
    consumer = spawn_child(get_checksums, ch, 5)
    put_big_items(ch, [7])
    assert len(consumer.outcome()) == 5
    # a channel made in a child that exits without dropping it
    child_names: list[str] = spawn_child(make_channel_and_exit).outcome()

    del ch
    gc.collect()
    gone = set(names) | set(child_names)
    wait_until(lambda: not gone & set(os.listdir(DEV_SHM)), "the semaphores are unlinked")
    wait_until(lambda: not set(os.listdir(DEV_SHM)) - before, "/dev/shm is as it was")
