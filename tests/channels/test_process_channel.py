"""ProcessChannel across processes: what the contract tests (threads only) cannot show."""

from __future__ import annotations

import os
import pickle
import queue
import sys
import threading
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from conveyor import Channel, Closed
from conveyor._channels import _shm
from conveyor._channels._shm import _GET_WAITERS, _PUT_WAITERS, ProcessChannel
from tests.helpers import wait_until

JOIN = 30.0  # only reached if something hangs
BIG = 20 * 1024 * 1024
FORK_WARNING = "ignore:This process .* is multi-threaded, use of fork:DeprecationWarning"
DEV_SHM = "/dev/shm"

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="shared memory tests need Linux"),
    pytest.mark.usefixtures("implementation"),  # the C hot paths, then the Python ones
]


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


def leave_a_big_item_and_exit(ch: ProcessChannel[Any], size: int) -> str:
    """Put an item too big for the ring (a segment of its own) that nobody takes, then exit
    normally: the creator's exit unlinks it."""
    mine: ProcessChannel[bytes] = ProcessChannel(2, buffer_bytes=4096)
    mine.put(b"x" * size)
    _KEEP.append(mine)
    ch.put(segments_now())
    return "done"


def leave_a_big_item_and_die(size: int) -> None:
    mine: ProcessChannel[bytes] = ProcessChannel(2, buffer_bytes=4096)
    mine.put(b"x" * size)
    os.kill(os.getpid(), 9)


def make_a_channel_and_list_segments() -> list[str]:
    ProcessChannel(1)  # the first channel of a process sweeps the dead's segments
    return segments_now()


def segments_now() -> list[str]:
    return sorted(n for n in os.listdir(DEV_SHM) if n.startswith("conveyor-"))


def die_holding_the_lock(ch: ProcessChannel[Any]) -> None:
    ch._mutex.acquire()
    os._exit(0)


def die_in_the_middle_of_a_put(ch: ProcessChannel[Any], item: object) -> None:
    """Write a whole record, move the tail, and die before the count moves."""
    ch._mutex.acquire()
    data = pickle.dumps(item, 5)
    tail = ch._ctl[_shm._TAIL]
    pos = ch._write(tail, _shm._U64.pack(_shm._header(len(data), _shm._PICKLE, 0)))
    ch._write(pos, data)
    ch._ctl[_shm._OP] = _shm._OP_PUT
    ch._ctl[_shm._TAIL] = tail + _shm._HDR + _shm._pad(len(data))
    os._exit(0)


def die_half_way_through_a_record(ch: ProcessChannel[Any]) -> None:
    """Write half a record past the tail and die holding the lock."""
    ch._mutex.acquire()
    ch._write(ch._ctl[_shm._TAIL], _shm._U64.pack(_shm._header(1000, _shm._PICKLE, 0)) + b"\x80")
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


def test_a_process_that_died_holding_the_lock_blocks_nobody(
    spawn_child: Callable[..., Child],
) -> None:
    ch: ProcessChannel[int] = ProcessChannel(4)
    ch.put(1)
    dying = spawn_child(die_holding_the_lock, ch)
    dying.proc.join(JOIN)
    assert dying.proc.exitcode == 0
    ch.put(2, timeout=JOIN)
    assert ch.get_many(5, timeout=JOIN) == [1, 2]
    ch._fail(ValueError("a worker crashed"))
    with pytest.raises(ValueError, match="a worker crashed"):
        ch.put(1)


def test_a_put_that_died_between_tail_and_count_is_repaired(
    spawn_child: Callable[..., Child],
) -> None:
    ch: ProcessChannel[object] = ProcessChannel(4)
    ch.put("before")
    dying = spawn_child(die_in_the_middle_of_a_put, ch, {"whole": "record"})
    dying.proc.join(JOIN)
    # the record was whole and the tail moved: the repair counts it in
    assert ch.get_many(5, timeout=JOIN) == ["before", {"whole": "record"}]
    ch.put("after")
    assert ch.get(timeout=JOIN) == "after"
    s = ch.stats()
    assert (s.size, s.put_count, s.get_count) == (0, 3, 3)


def test_half_a_record_of_a_dead_writer_is_never_read(spawn_child: Callable[..., Child]) -> None:
    ch: ProcessChannel[object] = ProcessChannel(4)
    ch.put("before")
    dying = spawn_child(die_half_way_through_a_record, ch)
    dying.proc.join(JOIN)
    assert ch.get(timeout=JOIN) == "before"
    with pytest.raises(queue.Empty):
        ch.get(timeout=0.05)
    ch.put("after")  # written over the dead writer's half record
    assert ch.get(timeout=JOIN) == "after"


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


def test_bytes_bound_a_put_as_well_as_the_count() -> None:
    ch: ProcessChannel[Any] = ProcessChannel(100, buffer_bytes=4096)
    ch.put(b"x" * 3000)
    with pytest.raises(queue.Full):
        ch.put(b"y" * 3000, block=False)
    with pytest.raises(queue.Full):
        ch.put(b"y" * 3000, timeout=0.05)
    with pytest.raises(queue.Full) as info:
        ch.put_many(["a", b"y" * 3000, "b"], timeout=0.05)
    assert info.value.put_count == 1  # type: ignore[attr-defined]
    # an item larger than the whole ring needs only a small record in it
    ch.put(b"z" * 100_000, timeout=JOIN)
    assert ch.qsize() == 3
    assert ch.get_many(10) == [b"x" * 3000, "a"]
    assert ch.get() == b"z" * 100_000


def test_close_wakes_a_putter_waiting_for_bytes() -> None:
    ch: ProcessChannel[Any] = ProcessChannel(100, buffer_bytes=4096)
    ch.put(b"x" * 3000)
    result: list[object] = []

    def putter() -> None:
        try:
            ch.put(b"y" * 3000)
        except Closed:
            result.append("closed")

    thread = threading.Thread(target=putter, daemon=True)
    thread.start()
    wait_until(lambda: ch._ctl[_PUT_WAITERS] == 1, "the put sleeps")
    ch.close()
    thread.join(JOIN)
    assert not thread.is_alive()
    assert result == ["closed"]
    assert ch.get() == b"x" * 3000
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


# -- out-of-band buffers ------------------------------------------------------------------


def echo_back(inbox: Channel[Any], outbox: Channel[Any], n: int) -> str:
    for _ in range(n):
        outbox.put(inbox.get(timeout=JOIN), timeout=JOIN)
    return "done"


@pytest.mark.parametrize(
    "item",
    [
        b"b" * 100_000,
        bytearray(b"a" * 100_000),
        {"id": 7, "payload": b"p" * 100_000, "rest": bytearray(b"r" * 20_000)},
        (1, b"t" * 70_000),
    ],
    ids=["bytes", "bytearray", "dict", "tuple"],
)
def test_buffers_travel_out_of_band(item: Any) -> None:
    kind, nbufs, parts, _ = _shm._encode(item)
    assert kind == _shm._OOB
    assert nbufs >= 1
    # the pickle itself is small: the buffers are views of the item's own memory,
    # copied once into the ring
    assert len(parts[2]) < 1000
    for raw in parts[3:]:
        assert isinstance(raw, memoryview)
    ch: ProcessChannel[Any] = ProcessChannel(2)
    ch.put(item)
    got = ch.get()
    assert got == item
    assert type(got) is type(item)


def test_a_memoryview_keeps_its_format_and_shape() -> None:
    import array

    view = memoryview(array.array("d", range(5000))).cast("B").cast("d", [50, 100])
    ch: ProcessChannel[memoryview] = ProcessChannel(2)
    ch.put(view)
    got = ch.get()
    assert (got.format, got.shape) == ("d", (50, 100))
    assert got.tobytes() == view.tobytes()


def test_numpy_arrays_cross_processes_out_of_band(spawn_child: Callable[..., Child]) -> None:
    np = pytest.importorskip("numpy")
    arrays = [
        np.arange(131_072, dtype=np.float64),  # 1 MiB
        np.arange(12, dtype=np.int32).reshape(3, 4),
        np.zeros((0,), dtype=np.uint8),
        np.arange(40_000, dtype=np.int16)[::2],  # not contiguous: pickled in band
        np.arange(3_000_000, dtype=np.float32),  # 12 MB: larger than the ring
    ]
    kind, *_ = _shm._encode(arrays[0])
    assert kind == _shm._OOB
    inbox: ProcessChannel[Any] = ProcessChannel(2)
    outbox: ProcessChannel[Any] = ProcessChannel(2)
    child = spawn_child(echo_back, inbox, outbox, len(arrays))
    for a in arrays:
        inbox.put(a, timeout=JOIN)
        got = outbox.get(timeout=JOIN)
        assert got.dtype == a.dtype
        assert got.shape == a.shape
        assert np.array_equal(got, a)
        assert got.flags.writeable
    assert child.outcome() == "done"


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


def segments_of(*pids: int) -> list[str]:
    """Segments of channels made by these processes (other tests may run beside us)."""
    return [n for n in segments_now() if n.split("-")[1] in {str(pid) for pid in pids}]


@pytest.mark.skipif(not os.path.isdir(DEV_SHM), reason="no /dev/shm")
def test_no_shared_memory_is_left_behind(spawn_child: Callable[..., Child]) -> None:
    me = os.getpid()
    assert not segments_of(me)
    ch: ProcessChannel[Any] = ProcessChannel(2, buffer_bytes=1 << 14)
    # the ring never had a name, nor has the lock
    assert os.readlink(f"/proc/self/fd/{ch._fd}").startswith("/memfd:")
    assert not segments_of(me)
    consumer = spawn_child(get_checksums, ch, 5)
    put_big_items(ch, [7])  # through segments of their own, unlinked by the getter
    assert len(consumer.outcome()) == 5
    assert not segments_of(me)
    # a process that exits with an item still in its channel unlinks its segment
    report: ProcessChannel[list[str]] = ProcessChannel(2)
    exits = spawn_child(leave_a_big_item_and_exit, report, 50_000)
    assert exits.outcome() == "done"
    child = f"conveyor-{exits.proc.pid}-"
    assert [n for n in report.get(timeout=JOIN) if n.startswith(child)]  # while it lived
    wait_until(lambda: not segments_of(exits.proc.pid), "the child's segment is gone")
    # one killed with an item in its channel leaves it, and the next start sweeps it
    dead = spawn_child(leave_a_big_item_and_die, 50_000)
    dead.proc.join(JOIN)
    assert dead.proc.exitcode == -9
    assert segments_of(dead.proc.pid)  # left behind
    swept = spawn_child(make_a_channel_and_list_segments).outcome()
    assert not [n for n in swept if n.startswith(f"conveyor-{dead.proc.pid}-")]
    assert not segments_of(me, dead.proc.pid)


# -- batch records ---------------------------------------------------------------------


def records(ch: ProcessChannel[Any]) -> list[tuple[int, int]]:
    """``(kind, items)`` of each record in the channel."""
    out = []
    for at, header in ch._records(ch._ctl[_shm._HEAD], ch._ctl[_shm._TAIL]):
        kind = (header >> _shm._KIND_SHIFT) & 0xF
        out.append((kind, ch._count(at) - ch._claimed(at) if kind == _shm._BATCH else 1))
    return out


def take_one_by_one(ch: ProcessChannel[Any], n: int) -> list[Any]:
    return [ch.get(timeout=JOIN) for _ in range(n)]


def claim_and_die(ch: ProcessChannel[Any], all_of_it: bool) -> None:
    """Claim items of the batch at the head inside a commit and die before it ends: with
    all_of_it, claim them all without moving the head; else claim one without counting it."""
    ch._mutex.acquire()
    head = ch._ctl[_shm._HEAD]
    ch._ctl[_shm._OP] = _shm._OP_GET
    claimed = ch._count(head) if all_of_it else ch._claimed(head) + 1
    _shm._U64.pack_into(ch._ring, (head + _shm._HDR) % ch._size, claimed)
    os._exit(0)


def test_put_many_of_small_items_makes_batch_records() -> None:
    ch: ProcessChannel[Any] = ProcessChannel(1000)
    ch.put_many([{"i": i} for i in range(300)])
    assert records(ch) == [(_shm._BATCH, 128), (_shm._BATCH, 128), (_shm._BATCH, 44)]
    # a batch holds at most a quarter of maxsize; one item alone is a plain record
    small: ProcessChannel[Any] = ProcessChannel(8)
    small.put_many([{"i": i} for i in range(5)])
    assert records(small) == [(_shm._BATCH, 2), (_shm._BATCH, 2), (_shm._PICKLE, 1)]
    assert small.qsize() == 5
    # items that are not plain data, or large, go in alone and split the batches
    ch.get_many(1000)
    ch.put_many([1, 2, {3}, 4, 5, b"x" * 2000, 6, 7, b"y" * 20_000])
    assert [k for k, _ in records(ch)] == [3, 0, 3, 0, 3, 1]
    assert ch.get_many(100) == [1, 2, {3}, 4, 5, b"x" * 2000, 6, 7]
    assert ch.get() == b"y" * 20_000


def test_batched_items_share_nothing() -> None:
    q: ProcessChannel[Any] = ProcessChannel(100)
    shared = [1, 2]
    same = {"a": shared}
    q.put_many([same, same, {"b": shared}, {"x": shared, "y": shared}])
    got = q.get_many(10)
    assert got == [same, same, {"b": shared}, {"x": shared, "y": shared}]
    got[0]["a"].append(3)  # a getter owns what it got, as if each item came alone
    assert got[1] == {"a": [1, 2]}
    assert got[2] == {"b": [1, 2]}
    assert got[0] is not got[1]
    assert got[3]["x"] is got[3]["y"]  # sharing inside one item is kept


def test_a_batch_shared_by_getters_of_two_processes(spawn_child: Callable[..., Child]) -> None:
    ch: ProcessChannel[Any] = ProcessChannel(1000)
    items = [{"i": i, "s": str(i)} for i in range(100)]
    ch.put_many(items)
    assert records(ch) == [(_shm._BATCH, 100)]
    mine = [ch.get(), *ch.get_many(9)]  # this process unpickled the batch and keeps it
    theirs = spawn_child(take_one_by_one, ch, 40).outcome()
    mine += ch.get_many(1000)
    assert mine + theirs != items  # the child took the middle
    assert mine[:10] + theirs + mine[10:] == items
    assert ch.qsize() == 0
    assert records(ch) == []


def test_the_bytes_bound_holds_with_batches() -> None:
    ch: ProcessChannel[Any] = ProcessChannel(10_000, buffer_bytes=4096)
    items = [{"i": i, "pad": "p" * (i % 300)} for i in range(3000)]
    putter = threading.Thread(target=ch.put_many, args=(items,), daemon=True)
    putter.start()
    got: list[Any] = []
    while len(got) < len(items):
        assert ch._ctl[_shm._TAIL] - ch._ctl[_shm._HEAD] <= 4096
        got.extend(ch.get_many(1 + len(got) % 50, timeout=JOIN))
    putter.join(JOIN)
    assert got == items


def test_a_batch_waiting_for_room_goes_in_after_the_channel_shrinks() -> None:
    ch: ProcessChannel[int] = ProcessChannel(400)
    ch.put_many(range(400))  # four batches of 100
    putter = threading.Thread(target=ch.put_many, args=(range(400, 500),), daemon=True)
    putter.start()
    wait_until(lambda: ch._ctl[_PUT_WAITERS] == 1, "the put_many waits")
    ch._set_maxsize(10)
    got = [ch.get(timeout=JOIN) for _ in range(500)]
    putter.join(JOIN)
    assert got == list(range(500))
    assert ch.qsize() == 0


@pytest.mark.parametrize("all_of_it", [False, True])
def test_a_get_that_died_claiming_part_of_a_batch_is_repaired(
    spawn_child: Callable[..., Child], all_of_it: bool
) -> None:
    ch: ProcessChannel[Any] = ProcessChannel(100)
    ch.put_many([{"i": i} for i in range(10)])
    ch.put({"i": 10})
    assert ch.get() == {"i": 0}
    dying = spawn_child(claim_and_die, ch, all_of_it)
    dying.proc.join(JOIN)
    assert dying.proc.exitcode == 0
    # the claim was written: those items left with the dead process
    rest = list(range(10, 11)) if all_of_it else list(range(2, 11))
    assert ch.stats().size == len(rest)  # taking the lock repairs the count
    assert ch.qsize() == len(rest)
    assert [x["i"] for x in ch.get_many(100, timeout=JOIN)] == rest
    assert ch._ctl[_shm._REPAIRS] == 1
    s = ch.stats()
    assert (s.size, s.put_count, s.get_count) == (0, 11, 11)
    ch.put_many([{"after": i} for i in range(3)])
    assert ch.get_many(5) == [{"after": i} for i in range(3)]
