"""ProcessChannel while processes are killed at random points of put and get.

Producers and consumers run in child processes and are killed with SIGKILL at
random moments (after a random number of further puts) and replaced, while the
parent takes items too. Producers put one item or a put_many of up to 12, about half
of them small enough to share batch records, which getters take partly (get() and
get_many(7)): kills fall inside batch handling too. Whatever was interrupted, no
record may be read half written (every item carries its checksum; a consumer that
sees a bad one exits with status 3), each producer's items come out in its order,
and at the end the channel still works for new processes. ``CONVEYOR_CHAOS_KILLS``
sets the number of kills (default 60).
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import random
import sys
import time
import zlib
from typing import Any

import pytest

from conveyor import Closed
from conveyor._channels._shm import _REPAIRS, ProcessChannel

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="shared memory tests need Linux"),
    pytest.mark.usefixtures("implementation"),  # the C hot paths, then the Python ones
]

JOIN = 30.0  # only reached if something hangs
CORRUPT = 3
KILLS = int(os.environ.get("CONVEYOR_CHAOS_KILLS", "60"))

Item = tuple[int, int, bytes, int]


def make_item(tag: int, i: int, rnd: random.Random) -> Item:
    # some go to segments, some go out of band, about half are small enough for batches
    r = rnd.random()
    size = 100_000 if r < 0.02 else rnd.randint(0, 3000) if r < 0.5 else rnd.randint(0, 300)
    payload = rnd.randbytes(size)
    return (tag, i, payload, zlib.crc32(payload))


def intact(item: Any) -> bool:
    _, _, payload, crc = item
    return isinstance(payload, bytes) and zlib.crc32(payload) == crc


def chaos_producer(ch: ProcessChannel[Item]) -> None:
    tag = os.getpid()
    rnd = random.Random(tag)
    i = 0
    while True:
        n = rnd.randint(1, 12)  # batch records of up to 8 (a quarter of maxsize)
        batch = [make_item(tag, j, rnd) for j in range(i, i + n)]
        try:
            if n == 1:
                ch.put(batch[0], timeout=JOIN)
            else:
                ch.put_many(batch, timeout=JOIN)
        except Closed:
            return
        i += n


def chaos_consumer(ch: ProcessChannel[Item]) -> None:
    rnd = random.Random(os.getpid())
    last: dict[int, int] = {}
    while True:
        try:
            got = [ch.get(timeout=JOIN)] if rnd.random() < 0.5 else ch.get_many(7, timeout=JOIN)
        except Closed:
            return
        for item in got:
            tag, i = item[0], item[1]
            if not intact(item) or i <= last.get(tag, -1):
                os._exit(CORRUPT)
            last[tag] = i


def echo_n(inbox: ProcessChannel[Any], outbox: ProcessChannel[Any], n: int) -> None:
    for _ in range(n):
        outbox.put(inbox.get(timeout=JOIN), timeout=JOIN)


def wait_until(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + JOIN
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.001)


def test_processes_killed_at_random_points_never_wedge_or_corrupt_the_channel() -> None:
    ctx = multiprocessing.get_context("forkserver")
    ch: ProcessChannel[Item] = ProcessChannel(32, buffer_bytes=1 << 16)
    rnd = random.Random(12345)
    roles = {"producer": chaos_producer, "consumer": chaos_consumer}
    procs: list[tuple[str, Any]] = []

    def start(role: str) -> None:
        p = ctx.Process(target=roles[role], args=(ch,), daemon=True)
        p.start()
        procs.append((role, p))

    for role in ("producer", "producer", "producer", "consumer", "consumer"):
        start(role)
    last: dict[int, int] = {}
    taken = 0

    def take_some() -> None:
        nonlocal taken
        try:
            got = ch.get_many(rnd.randint(1, 8), timeout=0)
        except queue.Empty:
            return
        for item in got:
            assert intact(item), "a corrupt record was read"
            assert item[1] > last.get(item[0], -1), "a producer's items came out of order"
            last[item[0]] = item[1]
        taken += len(got)

    try:
        for _ in range(KILLS):
            target = ch.stats().put_count + rnd.randint(1, 150)

            def progressed(target: int = target) -> bool:
                take_some()
                return ch.stats().put_count >= target

            wait_until(progressed, "producers make progress")
            i = rnd.randrange(len(procs))
            role, victim = procs.pop(i)
            victim.kill()
            victim.join(JOIN)
            for r, p in procs:  # a consumer that found corruption exits by itself
                assert p.exitcode in (None, -9), f"a {r} exited with {p.exitcode}"
            start(role)
    finally:
        for _, p in procs:
            p.kill()
            p.join(JOIN)
    for r, p in procs:
        assert p.exitcode == -9, f"a {r} exited with {p.exitcode}"
    # whatever was in flight, what is left is whole and in order
    while True:
        before = taken
        take_some()
        if taken == before:
            break
    s = ch.stats()
    assert s.size == 0 == ch.qsize()
    assert s.put_count - s.get_count == 0
    assert taken > 0
    print(f"{KILLS} kills, {taken} items taken here, lock taken over {ch._ctl[_REPAIRS]} times")
    # and the channel still works, for new processes too
    back: ProcessChannel[Any] = ProcessChannel(4)
    echo = ctx.Process(target=echo_n, args=(ch, back, 50), daemon=True)
    echo.start()
    for k in range(50):
        ch.put((k, b"after" * k), timeout=JOIN)
        assert back.get(timeout=JOIN) == (k, b"after" * k)
    echo.join(JOIN)
    assert echo.exitcode == 0
