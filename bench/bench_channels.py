"""Channels between processes: conveyor against multiprocessing, faster-fifo and pyzmq.

One command runs every transport x payload x topology and prints one table::

    .venv-bench/bin/python bench/bench_channels.py                 # everything (~5 min)
    .venv-bench/bin/python bench/bench_channels.py --quick         # smoke run (~40 s)
    .venv-bench/bin/python bench/bench_channels.py --only conveyor,mp.Queue --payloads int
    .venv-bench/bin/python bench/bench_channels.py --json bench/results/channels.json
    .venv-bench/bin/python bench/bench_channels.py --render bench/results/channels.json

Set up the peers once (from the repository root)::

    python -m venv .venv-bench
    .venv-bench/bin/pip install -e . -r bench/requirements-peers.txt

A peer that is not installed (faster-fifo, pyzmq) is skipped with a note, and so is the
numpy payload without numpy, so the script also runs in the dev virtualenv.

Transports (every one carries arbitrary Python objects, pickled, and is bounded):

* ``conveyor``            ``Channel(maxsize, kind="process")``, ``put``/``get``
* ``conveyor batch``      the same channel, ``put_many``/``get_many`` of 100 items
  (10 for the 64 KiB and 1 MiB payloads)
* ``mp.Queue``            ``multiprocessing.Queue(maxsize)``, ``put``/``get``
* ``mp.Pipe``             ``multiprocessing.Pipe(duplex=False)``, ``send``/``recv``; it
  is point to point, so 1->1 only
* ``faster-fifo``         ``faster_fifo.Queue(max_size_bytes, maxsize)``, ``put``/``get``
* ``faster-fifo batch``   the same queue, ``put_many``/``get_many`` (batches as above)
* ``pyzmq``               PUSH/PULL over ``ipc://``: each consumer's PULL binds, each
  producer's PUSH connects to all of them (PUSH load-balances, PULL fair-queues); high
  water marks of ``maxsize``; objects pickled with protocol 5, out-of-band buffers sent
  as extra frames without a copy (``send_multipart(copy=False)``), small ones as one
  frame, as ``send_pyobj`` does

Payloads: ``int`` (a small int), ``bytes100`` (100 bytes), ``dict10`` (a dict of 10
fields: ints, floats, short strings), ``bytes64k`` (64 KiB of bytes) and ``numpy1m``
(a 1 MiB numpy array of float64). Each producer sends the same object over and over,
so the figures are the transport's and the pickling's, not the making of the items;
the batched transports send a list of ``batch`` distinct copies of it (equal values,
no shared objects but the dict keys), made once.

Topologies: ``1->1`` (one producer process, one consumer process) and ``2->2``. Every
run starts fresh processes (start method forkserver) that meet at a barrier; the clock
runs from the barrier to the moment the consumers have taken the last message. Each
process measures its own CPU time (user + system, every thread of the process: the
feeder thread of mp.Queue and the I/O threads of pyzmq count) from the barrier until
its part is done (a producer's messages are all handed over, flushed for mp.Queue and
pyzmq; a consumer got its stop message); "CPU us/msg" is the sum over all processes
divided by the messages. It is the steadier figure on a shared machine: wall time
depends on who else runs, CPU time much less. MB/s counts the pickled size of a
payload (out-of-band buffers included) per message.

Repetitions are interleaved (repetition 1 of every case, then repetition 2, ...) and
the table gives the median of each figure. The goals of issue 4 are ratios of figures
of the same run, printed after the table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing as mp
import os
import pickle
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from conveyor import Channel, Closed

Ctx = Any  # a multiprocessing context
STOP = None  # the stop message (no payload is None)
JOIN = 600.0  # seconds: only reached if a transport hangs

# -- payloads ---------------------------------------------------------------------------


def make_payload(name: str) -> Any:
    if name == "int":
        return 12345
    if name == "bytes100":
        return b"x" * 100
    if name == "dict10":
        return {
            "id": 123456,
            "name": "conveyor",
            "price": 12.5,
            "count": 7,
            "ratio": 0.25,
            "tag": "fast",
            "owner": "bench",
            "ok": True,
            "parent": 42,
            "weight": 3.75,
        }
    if name == "bytes64k":
        return b"y" * 65536
    if name == "numpy1m":
        import numpy as np

        return np.arange(131072, dtype=np.float64)  # 1 MiB
    raise ValueError(name)


def fresh_copy(obj: Any) -> Any:
    """An equal object that shares nothing with ``obj`` but its dict keys, as the items
    of a real batch would (keys are interned literals, values are made per item)."""
    if type(obj) is dict:
        return {k: fresh_copy(v) for k, v in obj.items()}
    if type(obj) is str:
        return "".join(list(obj))
    if type(obj) is bytes:
        return bytes(bytearray(obj))
    if hasattr(obj, "copy"):  # numpy arrays
        return obj.copy()
    return obj  # ints, floats, bools: pickle writes them in full every time


def batch_of(obj: Any, batch: int) -> list[Any]:
    """``batch`` distinct copies of ``obj``: a batch of one object repeated would let a
    transport that pickles a batch at once write it once (pickle's memo)."""
    return [fresh_copy(obj) for _ in range(batch)]


def payload_check(name: str) -> Callable[[Any], bool]:
    expected = make_payload(name)
    if name == "numpy1m":
        import numpy as np

        return lambda got: isinstance(got, np.ndarray) and bool(np.array_equal(got, expected))
    return lambda got: bool(got == expected)


def payload_bytes(name: str) -> int:
    """Pickled size of one payload, out-of-band buffers included."""
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(make_payload(name), 5, buffer_callback=buffers.append)
    return len(data) + sum(b.raw().nbytes for b in buffers)


@dataclass(frozen=True)
class Payload:
    name: str
    count: int  # messages per run, one at a time (batched transports send 5x more)
    batch: int  # for the batched transports
    maxsize: int  # item bound of every transport
    needs: str | None = None  # a module it needs


PAYLOADS = [
    Payload("int", 200_000, 100, 1000),
    Payload("bytes100", 200_000, 100, 1000),
    Payload("dict10", 100_000, 100, 1000),
    Payload("bytes64k", 20_000, 10, 100),
    Payload("numpy1m", 2_000, 10, 100, needs="numpy"),
]
BATCH_FACTOR = 5  # batched transports move this many times more messages per run
# Byte budget of the transports that have one (faster-fifo needs it; conveyor's is its
# default); enough for several of the largest payload.
BYTES_BUDGET = 64 * 1024 * 1024

# -- transports -------------------------------------------------------------------------
#
# A transport is made in the parent (``make``); its ends go to the children as Process
# arguments. In a child, ``open_*`` turns an end into what ``send_all`` / ``receive``
# use (pyzmq makes its sockets there), ``close_sender`` flushes. ``stop`` (in the parent,
# once every message was taken) sends each consumer its stop message.


class Transport:
    name = ""
    needs: str | None = None
    batched = False
    point_to_point = False

    def make(self, ctx: Ctx, p: Payload, producers: int, consumers: int) -> Any:
        raise NotImplementedError

    def producer_end(self, made: Any, i: int) -> Any:
        return made

    def consumer_end(self, made: Any, i: int) -> Any:
        return made

    def open_sender(self, end: Any) -> Any:
        return end

    def open_receiver(self, end: Any) -> Any:
        return end

    def send_all(self, sender: Any, obj: Any, n: int, batch: int) -> None:
        put = sender.put
        for _ in range(n):
            put(obj)

    def close_sender(self, sender: Any) -> None:
        pass

    def receive(self, receiver: Any, batch: int) -> list[Any]:
        """The next message(s); [STOP] at the end."""
        return [receiver.get()]

    def close_receiver(self, receiver: Any) -> None:
        pass

    def stop(self, made: Any, consumers: int) -> None:
        for _ in range(consumers):
            made.put(STOP)

    def cleanup(self, made: Any) -> None:
        pass


class Conveyor(Transport):
    name = "conveyor"

    def make(self, ctx: Ctx, p: Payload, producers: int, consumers: int) -> Any:
        return Channel(p.maxsize, kind="process")

    def receive(self, receiver: Any, batch: int) -> list[Any]:
        try:
            return [receiver.get()]
        except Closed:
            return [STOP]

    def stop(self, made: Any, consumers: int) -> None:
        made.close()


class ConveyorBatch(Conveyor):
    name = "conveyor batch"
    batched = True

    def send_all(self, sender: Any, obj: Any, n: int, batch: int) -> None:
        put_many = sender.put_many
        chunk = batch_of(obj, batch)
        for _ in range(n // batch):
            put_many(chunk)
        if n % batch:
            put_many(chunk[: n % batch])

    def receive(self, receiver: Any, batch: int) -> list[Any]:
        try:
            got: list[Any] = receiver.get_many(batch)
        except Closed:
            return [STOP]
        return got


class MpQueue(Transport):
    name = "mp.Queue"

    def make(self, ctx: Ctx, p: Payload, producers: int, consumers: int) -> Any:
        return ctx.Queue(p.maxsize)

    def close_sender(self, sender: Any) -> None:
        sender.close()
        sender.join_thread()  # the feeder thread has written everything

    def cleanup(self, made: Any) -> None:
        made.close()
        made.join_thread()


class MpPipe(Transport):
    name = "mp.Pipe"
    point_to_point = True

    def make(self, ctx: Ctx, p: Payload, producers: int, consumers: int) -> Any:
        return ctx.Pipe(duplex=False)  # (receiving end, sending end)

    def producer_end(self, made: Any, i: int) -> Any:
        return made[1]

    def consumer_end(self, made: Any, i: int) -> Any:
        return made[0]

    def send_all(self, sender: Any, obj: Any, n: int, batch: int) -> None:
        send = sender.send
        for _ in range(n):
            send(obj)

    def receive(self, receiver: Any, batch: int) -> list[Any]:
        return [receiver.recv()]

    def stop(self, made: Any, consumers: int) -> None:
        made[1].send(STOP)

    def cleanup(self, made: Any) -> None:
        made[0].close()
        made[1].close()


class FasterFifo(Transport):
    name = "faster-fifo"
    needs = "faster_fifo"

    def make(self, ctx: Ctx, p: Payload, producers: int, consumers: int) -> Any:
        import faster_fifo

        return faster_fifo.Queue(max_size_bytes=BYTES_BUDGET, maxsize=p.maxsize)

    def send_all(self, sender: Any, obj: Any, n: int, batch: int) -> None:
        put = sender.put
        for _ in range(n):
            put(obj, True, JOIN)

    def receive(self, receiver: Any, batch: int) -> list[Any]:
        return _faster_fifo_get(receiver, 1)


class FasterFifoBatch(FasterFifo):
    name = "faster-fifo batch"
    batched = True

    def send_all(self, sender: Any, obj: Any, n: int, batch: int) -> None:
        import queue

        def put_many(items: list[Any]) -> None:
            deadline = time.monotonic() + JOIN
            while True:
                try:
                    sender.put_many(items, True, 1.0)
                    return
                except queue.Full:
                    if time.monotonic() > deadline:
                        raise

        chunk = batch_of(obj, batch)
        for _ in range(n // batch):
            put_many(chunk)
        if n % batch:
            put_many(chunk[: n % batch])

    def receive(self, receiver: Any, batch: int) -> list[Any]:
        return _faster_fifo_get(receiver, batch)


def _faster_fifo_get(receiver: Any, batch: int) -> list[Any]:
    """faster-fifo's blocking get can raise Empty early with several consumers; retry
    until JOIN has really passed."""
    import queue

    deadline = time.monotonic() + JOIN
    while True:
        try:
            got: list[Any] = receiver.get_many(True, 1.0, batch)
            return got
        except queue.Empty:
            if time.monotonic() > deadline:
                raise


@dataclass
class ZmqEnds:
    folder: str
    consumers: int
    hwm: int
    drained: Any  # set once the consumers have every message: producers may close

    def address(self, i: int) -> str:
        return f"ipc://{self.folder}/c{i}"


class Zmq(Transport):
    name = "pyzmq"
    needs = "zmq"

    def make(self, ctx: Ctx, p: Payload, producers: int, consumers: int) -> Any:
        return ZmqEnds(tempfile.mkdtemp(prefix="bench-zmq-"), consumers, p.maxsize, ctx.Event())

    def consumer_end(self, made: Any, i: int) -> Any:
        return (made, i)

    def open_sender(self, end: Any) -> Any:
        import zmq

        ctx = zmq.Context()
        sock = ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.SNDHWM, end.hwm)
        # Queue messages only on established connections: messages queued for an ipc
        # address whose connection then fails are dropped (seen with libzmq 4.3.5).
        sock.setsockopt(zmq.IMMEDIATE, 1)
        for i in range(end.consumers):
            sock.connect(end.address(i))
        return ctx, sock, end.drained

    def open_receiver(self, end: Any) -> Any:
        import zmq

        ends, i = end
        ctx = zmq.Context()
        sock = ctx.socket(zmq.PULL)
        sock.setsockopt(zmq.RCVHWM, ends.hwm)
        sock.bind(ends.address(i))
        return ctx, sock

    def send_all(self, sender: Any, obj: Any, n: int, batch: int) -> None:
        sock = sender[1]
        buffers: list[pickle.PickleBuffer] = []
        data = pickle.dumps(obj, 5, buffer_callback=buffers.append)
        dumps = pickle.dumps
        if buffers:
            send_multipart = sock.send_multipart
            for _ in range(n):
                buffers = []
                data = dumps(obj, 5, buffer_callback=buffers.append)
                send_multipart([data, *buffers], copy=False)
        else:
            send = sock.send
            for _ in range(n):
                send(dumps(obj, 5))

    def close_sender(self, sender: Any) -> None:
        ctx, sock, drained = sender
        # Messages still in flight when a PUSH socket closes are lost, whatever its
        # linger (seen with libzmq 4.3.5 over ipc), so close once they arrived.
        drained.wait(JOIN)
        sock.close()
        ctx.term()

    def receive(self, receiver: Any, batch: int) -> list[Any]:
        _, sock = receiver
        frames = sock.recv_multipart(copy=False)
        return [pickle.loads(frames[0].buffer, buffers=[f.buffer for f in frames[1:]])]

    def close_receiver(self, receiver: Any) -> None:
        ctx, sock = receiver
        sock.close(linger=0)
        ctx.term()

    def stop(self, made: Any, consumers: int) -> None:
        import zmq

        made.drained.set()
        ctx = zmq.Context()
        for i in range(consumers):  # one socket per consumer: each gets exactly one
            sock = ctx.socket(zmq.PUSH)
            sock.connect(made.address(i))
            sock.send(pickle.dumps(STOP, 5))
            sock.close()
        ctx.term()

    def cleanup(self, made: Any) -> None:
        import shutil

        shutil.rmtree(made.folder, ignore_errors=True)


TRANSPORTS: list[Transport] = [
    Conveyor(),
    ConveyorBatch(),
    MpQueue(),
    MpPipe(),
    FasterFifo(),
    FasterFifoBatch(),
    Zmq(),
]
BY_NAME = {t.name: t for t in TRANSPORTS}
PAYLOAD_BY_NAME = {p.name: p for p in PAYLOADS}
TOPOLOGIES = [(1, 1), (2, 2)]


def installed(module: str | None) -> bool:
    return module is None or importlib.util.find_spec(module) is not None


# -- the processes ----------------------------------------------------------------------


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def producer_main(
    tname: str, pname: str, end: Any, n: int, batch: int, barrier: Any, report: Any
) -> None:
    t = BY_NAME[tname]
    obj = make_payload(pname)
    sender = t.open_sender(end)
    barrier.wait()
    c0 = cpu_seconds()
    t.send_all(sender, obj, n, batch)
    t.close_sender(sender)
    report.send(("producer", cpu_seconds() - c0, n))


def consumer_main(
    tname: str,
    pname: str,
    end: Any,
    me: int,
    total: int,
    batch: int,
    counts: Any,
    finish: Any,
    done: Any,
    barrier: Any,
    report: Any,
) -> None:
    t = BY_NAME[tname]
    check = payload_check(pname)
    receiver = t.open_receiver(end)
    counts_view = memoryview(counts).cast("B").cast("q")
    # the other consumer's count, if any (the harness's own cost per message stays small)
    other = 1 - me if len(counts_view) == 2 else None
    assert len(counts_view) <= 2
    receive = t.receive
    got = 0
    checked = False
    barrier.wait()
    c0 = cpu_seconds()
    while True:
        items = receive(receiver, batch)
        if items[-1] is STOP:
            stops = items.count(STOP)
            items = [x for x in items if x is not STOP]
            got += len(items)
            for _ in range(stops - 1):  # a batch took another consumer's stop too
                receiver.put(STOP)
            break
        if not checked:
            if not check(items[0]):
                raise RuntimeError(f"{tname} delivered a wrong {pname}: {items[0]!r:.80}")
            checked = True
        got += len(items)
        counts_view[me] = got
        if got + (0 if other is None else counts_view[other]) >= total:
            finish.value = time.monotonic()
            done.set()
    t.close_receiver(receiver)
    report.send(("consumer", cpu_seconds() - c0, got))


@dataclass
class Result:
    transport: str
    payload: str
    topology: str
    messages: int
    seconds: float
    cpu_seconds: float
    bytes_per_message: int

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def mb_s(self) -> float:
        return self.rate * self.bytes_per_message / 1e6

    @property
    def cpu_us(self) -> float:
        return self.cpu_seconds / self.messages * 1e6


def measure(ctx: Ctx, t: Transport, p: Payload, producers: int, consumers: int) -> Result:
    n = p.count * (BATCH_FACTOR if t.batched else 1) * SCALE
    n = max(producers * p.batch, int(n) // (producers * p.batch) * (producers * p.batch))
    made = t.make(ctx, p, producers, consumers)
    try:
        barrier = ctx.Barrier(producers + consumers + 1)
        counts = ctx.RawArray("q", consumers)
        finish = ctx.RawValue("d", 0.0)
        done = ctx.Event()
        report_recv, report_send = ctx.Pipe(duplex=False)
        procs = [
            ctx.Process(
                target=consumer_main,
                args=(
                    t.name,
                    p.name,
                    t.consumer_end(made, i),
                    i,
                    n,
                    p.batch,
                    counts,
                    finish,
                    done,
                    barrier,
                    report_send,
                ),
            )
            for i in range(consumers)
        ]
        procs += [
            ctx.Process(
                target=producer_main,
                args=(
                    t.name,
                    p.name,
                    t.producer_end(made, i),
                    n // producers,
                    p.batch,
                    barrier,
                    report_send,
                ),
            )
            for i in range(producers)
        ]
        for proc in procs:
            proc.start()
        report_send.close()
        barrier.wait(JOIN)
        start = time.monotonic()
        if not done.wait(JOIN):
            raise RuntimeError(f"{t.name} / {p.name} did not finish")
        t.stop(made, consumers)
        reports = []
        for _ in procs:
            if not report_recv.poll(JOIN):
                raise RuntimeError(f"{t.name} / {p.name}: a process did not report")
            reports.append(report_recv.recv())
        for proc in procs:
            proc.join(JOIN)
            if proc.exitcode != 0:
                raise RuntimeError(f"{t.name} / {p.name}: a process exited with {proc.exitcode}")
        got = sum(k for role, _, k in reports if role == "consumer")
        if got != n:
            raise RuntimeError(f"{t.name} / {p.name}: {got} messages arrived, {n} were sent")
        return Result(
            t.name,
            p.name,
            f"{producers}->{consumers}",
            n,
            finish.value - start,
            sum(c for _, c, _ in reports),
            payload_bytes(p.name),
        )
    finally:
        t.cleanup(made)


# -- the run and the table ----------------------------------------------------------------

SCALE = 1.0


def cases(
    only: list[str] | None, payloads: list[str] | None, topologies: list[str] | None
) -> tuple[list[tuple[Transport, Payload, tuple[int, int]]], list[str]]:
    notes: list[str] = []
    out = []
    for t in TRANSPORTS:
        if only and not any(t.name == o or t.name.startswith(o + " ") for o in only):
            continue
        if not installed(t.needs):
            notes.append(f"{t.name}: skipped, {t.needs} is not installed")
            continue
        for p in PAYLOADS:
            if payloads and p.name not in payloads:
                continue
            if not installed(p.needs):
                if f"{p.name}: skipped" not in " ".join(notes):
                    notes.append(f"{p.name}: skipped, {p.needs} is not installed")
                continue
            for topo in TOPOLOGIES:
                label = f"{topo[0]}->{topo[1]}"
                if topologies and label not in topologies:
                    continue
                if t.point_to_point and topo != (1, 1):
                    continue
                out.append((t, p, topo))
    return out, notes


@dataclass
class Row:
    transport: str
    payload: str
    topology: str
    rate: float
    mb_s: float
    cpu_us: float
    runs: int


def summarize(results: list[Result]) -> list[Row]:
    groups: dict[tuple[str, str, str], list[Result]] = {}
    for r in results:
        groups.setdefault((r.transport, r.payload, r.topology), []).append(r)
    return [
        Row(
            *key,
            statistics.median(r.rate for r in rs),
            statistics.median(r.mb_s for r in rs),
            statistics.median(r.cpu_us for r in rs),
            len(rs),
        )
        for key, rs in groups.items()
    ]


def render(rows: list[Row], notes: list[str], header: str) -> str:
    lines = [header, ""]
    lines.append(
        "| payload | topology | transport | msgs/s | MB/s | CPU us/msg |\n"
        "|---|---|---|---:|---:|---:|"
    )
    order = {p.name: i for i, p in enumerate(PAYLOADS)}
    torder = {t.name: i for i, t in enumerate(TRANSPORTS)}
    for r in sorted(
        rows, key=lambda r: (order.get(r.payload, 99), r.topology, torder.get(r.transport, 99))
    ):
        name = f"**{r.transport}**" if r.transport.startswith("conveyor") else r.transport
        lines.append(
            f"| {r.payload} | {r.topology} | {name} | {r.rate:,.0f} | {r.mb_s:,.1f} "
            f"| {r.cpu_us:,.2f} |"
        )
    lines += ["", *goal_lines(rows)]
    if notes:
        lines += ["", "Notes:", *(f"* {n}" for n in notes)]
    return "\n".join(lines)


def goal_lines(rows: list[Row]) -> list[str]:
    by = {(r.transport, r.payload, r.topology): r for r in rows}
    out = ["Goals (ratios of this run's medians):", ""]

    def ratio(
        what: str, a: tuple[str, str, str], b: tuple[str, str, str], attr: str, goal: str
    ) -> None:
        ra, rb = by.get(a), by.get(b)
        if ra is None or rb is None:
            out.append(f"* {what} [{a[2]}]: not measured in this run")
            return
        va, vb = getattr(ra, attr), getattr(rb, attr)
        out.append(f"* {what} [{a[2]}]: {va:,.2f} / {vb:,.2f} = **{va / vb:.2f}x** ({goal})")

    for topo in ("1->1", "2->2"):
        for payload in ("int", "bytes100", "dict10"):
            ratio(
                f"CPU per {payload} message, conveyor / pyzmq",
                ("conveyor", payload, topo),
                ("pyzmq", payload, topo),
                "cpu_us",
                "goal <= 1",
            )
        ratio(
            "CPU per int message, mp.Queue / conveyor",
            ("mp.Queue", "int", topo),
            ("conveyor", "int", topo),
            "cpu_us",
            "for reference: pyzmq's is about 3",
        )
        ratio(
            "MB/s of 1 MiB arrays, conveyor / mp.Queue",
            ("conveyor", "numpy1m", topo),
            ("mp.Queue", "numpy1m", topo),
            "mb_s",
            "goal >= 4",
        )
        for payload in ("int", "bytes100", "dict10"):
            ratio(
                f"msgs/s of {payload}, conveyor put_many/get_many / mp.Queue",
                ("conveyor batch", payload, topo),
                ("mp.Queue", payload, topo),
                "rate",
                "goal >= 10",
            )
    return out


def machine() -> str:
    cpus = os.cpu_count()
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = []
    for mod, dist in (("faster_fifo", "faster-fifo"), ("zmq", "pyzmq"), ("numpy", "numpy")):
        if installed(mod):
            from importlib.metadata import version

            versions.append(f"{dist} {version(dist)}")
    return (
        f"{cpus} CPUs ({model}), {platform.system()} {platform.release()}, "
        f"CPython {platform.python_version()}; " + ", ".join(versions)
    )


def main() -> None:
    global SCALE
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (median)")
    parser.add_argument("--quick", action="store_true", help="1 run, a tenth of the messages")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply message counts")
    parser.add_argument("--only", help="transports, comma-separated (prefix: 'conveyor')")
    parser.add_argument("--payloads", help="payloads, comma-separated")
    parser.add_argument("--topologies", help="1->1 and/or 2->2, comma-separated")
    parser.add_argument("--json", help="save the raw results to this file")
    parser.add_argument("--render", help="print the table of a saved --json run")
    args = parser.parse_args()
    if args.render:
        with open(args.render) as f:
            saved = json.load(f)
        rows = summarize([Result(**r) for r in saved["results"]])
        print(render(rows, saved["notes"], saved["header"]))
        return
    repeat = 1 if args.quick else args.repeat
    SCALE = args.scale * (0.1 if args.quick else 1.0)
    split = lambda s: s.split(",") if s else None  # noqa: E731
    todo, notes = cases(split(args.only), split(args.payloads), split(args.topologies))
    ctx = mp.get_context("forkserver")
    results: list[Result] = []
    started = time.monotonic()
    for rep in range(repeat):
        for t, p, (producers, consumers) in todo:
            r = measure(ctx, t, p, producers, consumers)
            results.append(r)
            print(
                f"[{rep + 1}/{repeat}] {r.transport:>18} {r.payload:>9} {r.topology}: "
                f"{r.rate:>12,.0f} msgs/s {r.mb_s:>9,.1f} MB/s {r.cpu_us:>8.2f} CPU us/msg",
                file=sys.stderr,
                flush=True,
            )
    header = (
        f"{machine()}\nstart method forkserver; median of {repeat} run(s); "
        f"{time.monotonic() - started:.0f} s in all"
    )
    rows = summarize(results)
    print(render(rows, notes, header))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"header": header, "notes": notes, "results": [asdict(r) for r in results]},
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
