"""Throughput of ProcessChannel against multiprocessing.Queue and Pipe.

One producer process sends every item to one consumer process (start method
forkserver); the time runs from a barrier that both pass to the consumer's last
item. Run with::

    .venv/bin/python bench/bench_channels.py [--small N] [--large N] [--repeat R]

and it prints items/s (best of ``--repeat`` runs) for each transport side by side.
Every transport is bounded alike: ``maxsize`` items, or ``maxsize // batch`` lists
for the rows that send whole lists as single items (there the consumer cannot take
part of a list, unlike get_many).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from conveyor._channels._shm import ProcessChannel

Ctx = Any  # a multiprocessing context


@dataclass(frozen=True)
class Workload:
    name: str
    count: int
    batch: int
    maxsize: int
    make: Callable[[int], object]


def small_item(i: int) -> object:
    return i


def large_item(i: int) -> object:
    return i.to_bytes(4, "little") * 25_600  # 100 KiB


# -- transports: each is (setup in the parent, producer body, consumer body) --------


def produce_one_by_one(q: Any, w: Workload) -> None:
    make = w.make
    for i in range(w.count):
        q.put(make(i))


def consume_one_by_one(q: Any, w: Workload) -> None:
    for _ in range(w.count):
        q.get()


def produce_put_many(q: Any, w: Workload) -> None:
    make = w.make
    for start in range(0, w.count, w.batch):
        q.put_many([make(i) for i in range(start, min(start + w.batch, w.count))])


def consume_get_many(q: Any, w: Workload) -> None:
    left = w.count
    while left:
        left -= len(q.get_many(w.batch))


def produce_lists(q: Any, w: Workload) -> None:
    make = w.make
    for start in range(0, w.count, w.batch):
        q.put([make(i) for i in range(start, min(start + w.batch, w.count))])


def consume_lists(q: Any, w: Workload) -> None:
    left = w.count
    while left:
        left -= len(q.get())


def pipe_send_one_by_one(conn: Any, w: Workload) -> None:
    make = w.make
    for i in range(w.count):
        conn.send(make(i))


def pipe_recv_one_by_one(conn: Any, w: Workload) -> None:
    for _ in range(w.count):
        conn.recv()


def pipe_send_lists(conn: Any, w: Workload) -> None:
    make = w.make
    for start in range(0, w.count, w.batch):
        conn.send([make(i) for i in range(start, min(start + w.batch, w.count))])


def pipe_recv_lists(conn: Any, w: Workload) -> None:
    left = w.count
    while left:
        left -= len(conn.recv())


def _producer(body: Callable[[Any, Workload], None], q: Any, w: Workload, barrier: Any) -> None:
    barrier.wait()
    body(q, w)


def _consumer(
    body: Callable[[Any, Workload], None], q: Any, w: Workload, barrier: Any, report: Any
) -> None:
    barrier.wait()
    start = time.perf_counter()
    body(q, w)
    report.send(time.perf_counter() - start)


@dataclass(frozen=True)
class Transport:
    name: str
    make: Callable[[Ctx, Workload], tuple[Any, Any]]  # (producer's end, consumer's end)
    produce: Callable[[Any, Workload], None]
    consume: Callable[[Any, Workload], None]


def _channel(ctx: Ctx, w: Workload) -> tuple[Any, Any]:
    ch: ProcessChannel[Any] = ProcessChannel(w.maxsize)
    return ch, ch


def _channel_of_lists(ctx: Ctx, w: Workload) -> tuple[Any, Any]:
    ch: ProcessChannel[Any] = ProcessChannel(max(1, w.maxsize // w.batch))
    return ch, ch


def _mp_queue(ctx: Ctx, w: Workload) -> tuple[Any, Any]:
    q = ctx.Queue(w.maxsize)
    return q, q


def _mp_queue_of_lists(ctx: Ctx, w: Workload) -> tuple[Any, Any]:
    q = ctx.Queue(max(1, w.maxsize // w.batch))
    return q, q


def _pipe(ctx: Ctx, w: Workload) -> tuple[Any, Any]:
    recv_end, send_end = ctx.Pipe(duplex=False)
    return send_end, recv_end


TRANSPORTS = [
    Transport("ProcessChannel put/get", _channel, produce_one_by_one, consume_one_by_one),
    Transport("ProcessChannel put_many/get_many", _channel, produce_put_many, consume_get_many),
    Transport("ProcessChannel put/get of lists", _channel_of_lists, produce_lists, consume_lists),
    Transport("mp.Queue put/get", _mp_queue, produce_one_by_one, consume_one_by_one),
    Transport("mp.Queue put/get of lists", _mp_queue_of_lists, produce_lists, consume_lists),
    Transport("mp.Pipe send/recv", _pipe, pipe_send_one_by_one, pipe_recv_one_by_one),
    Transport("mp.Pipe send/recv of lists", _pipe, pipe_send_lists, pipe_recv_lists),
]


def measure(ctx: Ctx, transport: Transport, w: Workload) -> float:
    """Seconds for the consumer to take every item."""
    producer_end, consumer_end = transport.make(ctx, w)
    barrier = ctx.Barrier(2)
    report_recv, report_send = ctx.Pipe(duplex=False)
    procs = [
        ctx.Process(target=_producer, args=(transport.produce, producer_end, w, barrier)),
        ctx.Process(
            target=_consumer, args=(transport.consume, consumer_end, w, barrier, report_send)
        ),
    ]
    for p in procs:
        p.start()
    if not report_recv.poll(600):
        raise RuntimeError(f"{transport.name} on {w.name} did not finish")
    elapsed: float = report_recv.recv()
    for p in procs:
        p.join(60)
        if p.exitcode != 0:
            raise RuntimeError(f"{transport.name}: a process exited with {p.exitcode}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=200_000, help="small items (ints)")
    parser.add_argument("--large", type=int, default=2_000, help="large items (100 KiB bytes)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell; the best counts")
    args = parser.parse_args()
    ctx = mp.get_context("forkserver")
    workloads = [
        Workload(f"{args.small:,} ints", args.small, batch=1000, maxsize=1000, make=small_item),
        Workload(f"{args.large:,} x 100 KiB", args.large, batch=10, maxsize=40, make=large_item),
    ]
    results: dict[tuple[str, str], float] = {}
    for w in workloads:
        for t in TRANSPORTS:
            best = min(measure(ctx, t, w) for _ in range(args.repeat))
            results[t.name, w.name] = w.count / best

    width = max(len(t.name) for t in TRANSPORTS)
    print(f"start method forkserver; items/s, best of {args.repeat}; batches: ", end="")
    print(", ".join(f"{w.batch} for {w.name}" for w in workloads))
    print(f"{'transport':<{width}}" + "".join(f" | {w.name:>18}" for w in workloads))
    print("-" * width + "".join(f"-+-{'':->18}" for _ in workloads))
    for t in TRANSPORTS:
        cells = "".join(f" | {results[t.name, w.name]:>18,.0f}" for w in workloads)
        print(f"{t.name:<{width}}{cells}")


if __name__ == "__main__":
    main()
