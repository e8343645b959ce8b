"""The main loop of a worker process (runs in the process the zygote forked).

It never returns to the zygote's code: the zygote calls :func:`main` in the
forked child and ``os._exit``s with its return value.

Lifetime rules: the worker dies with its parent (the zygote) through
``PR_SET_PDEATHSIG``; the zygote dies with the engine's process and kills its
children first. SIGINT is ignored (a terminal's Ctrl-C reaches the whole process
group; the engine decides how the run stops), SIGTERM keeps its default.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
from collections import deque
from time import monotonic, perf_counter
from typing import TYPE_CHECKING, Any

from . import _protocol as P
from ._apply import Abort, ItemFailed, ItemPolicy, Processor, describe_exception
from ._context import WorkerInfo, set_current_worker
from ._serialize import dumps_items, first_unpicklable, loads
from ._wire import Wire

if TYPE_CHECKING:
    import signal as _signal
else:
    import _signal  # the signal module without its enum classes

CTRL_SIZE = P.CTRL_SIZE


class ResultUnpicklable(TypeError):
    def __init__(self, index: int, cause: BaseException) -> None:
        super().__init__(
            "a result cannot be pickled to go back to the main process: "
            f"{type(cause).__name__}: {cause}"
        )
        self.index = index

    def __reduce__(self) -> tuple[Any, ...]:
        return (TypeError, self.args)  # the main process sees the TypeError it is


def dump_results(results: list[Any]) -> bytes:
    try:
        return dumps_items(results)
    except Exception as exc:
        found = first_unpicklable(results)
        index, cause = found if found is not None else (0, exc)
        raise ResultUnpicklable(index, cause) from None


def item_of_result(sizes: list[int], position: int) -> tuple[int, int]:
    """The item that produced ``results[position]``, and where its results start."""
    start = 0
    for index, n in enumerate(sizes):
        if position < start + n:
            return index, start
        start += n
    raise IndexError(position)


class _StopNow(Abort):
    """STOP arrived while a batch was streaming: abandon the batch."""


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, _signal.SIGKILL)  # PR_SET_PDEATHSIG
        except Exception:
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _dump_stacks_on_signal(fd: int) -> None:
    """Write every thread's stack into ``fd`` on STACK_SIGNAL (the engine's stall
    watchdog reads it). The fd stays open for the life of the process."""
    import faulthandler

    faulthandler.register(P.STACK_SIGNAL, file=fd, all_threads=True, chain=False)


sync_waits_fd: int | None = None  # read by conveyor.sync when the stage imports it
orders_fd: int | None = None  # where this worker keeps its lock orders (if checked)


def _publish_sync_waits(fd: int) -> None:
    """Keep ``fd`` holding what this process's threads wait for in conveyor.sync, for
    the engine's stall report (from the moment the stage's code imports it)."""
    global sync_waits_fd
    sync_waits_fd = fd
    locks = sys.modules.get("conveyor.sync._locks")
    if locks is not None:
        locks.publish_waits_to(fd)


def main(fds: list[int], parent: int) -> int:
    _die_with_parent(parent)
    data_fd, ctrl_fd, *more = fds
    if more:
        _dump_stacks_on_signal(more[0])
    if len(more) > 1:
        _publish_sync_waits(more[1])
    if len(more) > 2:
        global orders_fd
        orders_fd = more[2]
    conn = Wire.from_fd(data_fd)
    ctrl = mmap.mmap(ctrl_fd, CTRL_SIZE)
    os.close(ctrl_fd)
    try:
        return Worker(conn, ctrl).serve()
    except (EOFError, OSError):
        return 3  # the engine went away
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass


class ShmProgress:
    """Writes the item being processed, and since when, into this worker's slot of the
    run's control memory, where the engine's timeout watchdog reads it."""

    def __init__(self, ctrl: mmap.mmap, slot: int) -> None:
        base = P.progress_offset(slot) // 8  # the slot is 8-byte aligned: index, then time
        self.index = memoryview(ctrl).cast("q")
        self.started = memoryview(ctrl).cast("d")
        self.i, self.t = base, base + 1

    def begin(self, index: int, attempt: int) -> None:
        self.index[self.i] = index
        self.started[self.t] = monotonic()

    def end(self) -> None:
        self.started[self.t] = 0.0
        self.index[self.i] = -1


class Worker:
    def __init__(self, conn: Wire, ctrl: mmap.mmap) -> None:
        self.conn = conn
        self.ctrl = ctrl
        self.stop = memoryview(ctrl)
        self.inbox: deque[bytearray] = deque()  # messages read while waiting for an ACK

    def send(self, head: bytes, body: bytes = b"") -> None:
        self.conn.send(head, body)

    def recv(self) -> bytearray:
        if self.inbox:
            return self.inbox.popleft()
        return self.conn.recv()

    def serve(self) -> int:
        msg = self.conn.recv()
        assert msg[0] == P.INIT
        init = loads(memoryview(msg)[1:])
        sys.path[:] = init["sys_path"]
        try:
            os.chdir(init["cwd"])
        except OSError:
            pass
        os.environ.clear()
        os.environ.update(init["environ"])
        for stream in (sys.stdout, sys.stderr):
            reconfigure = getattr(stream, "reconfigure", None)
            if reconfigure is not None:
                try:
                    reconfigure(line_buffering=True)
                except Exception:
                    pass
        info = WorkerInfo(init["name"], init["stage"], init["index"], "process")
        set_current_worker(info, whole_process=True)
        lock_order = init.get("lock_order")
        if lock_order is not None and orders_fd is not None:
            from ..sync import _order  # the parent checks lock order: so does this worker

            _order.start_in_worker(lock_order, orders_fd)
        policy: ItemPolicy = init["policy"]
        progress = ShmProgress(self.ctrl, init["slot"]) if policy.track else None
        try:
            target = loads(init["payload"])
            proc = Processor(init["op"], target, self.stop, policy=policy, progress=progress)
            proc.setup()
        except BaseException as exc:
            self.fail(P.NO_SEQ, 0, exc, "setup")
            return 0
        self.send(P.TAG.pack(P.READY))
        try:
            self.loop(proc)
        except _StopNow:
            pass
        try:
            proc.teardown()
        except BaseException as exc:
            self.fail(P.NO_SEQ, 0, exc, "teardown")
            return 0
        self.send(P.TAG.pack(P.BYE))
        return 0

    def fail(self, seq: int, index: int, error: BaseException, phase: str) -> None:
        tb = describe_exception(error)
        self.send(P.FAIL.pack(P.FAILED, seq, index), P.error_report(error, tb, phase))

    def loop(self, proc: Processor) -> None:
        while True:
            msg = self.recv()
            tag = msg[0]
            if tag == P.STOP:
                return
            if tag != P.BATCH:
                continue  # a late ACK
            _, seq = P.SEQ.unpack_from(msg)
            try:
                items = loads(memoryview(msg)[P.SEQ.size :])
            except BaseException as exc:
                self.fail(seq, P.NO_SEQ, exc, "unpickle-items")  # which item: the engine finds out
                continue
            if proc.policy.careful:
                self.careful_batch(proc, seq, items)
            else:
                self.batch(proc, seq, items)

    def batch(self, proc: Processor, seq: int, items: list[Any]) -> None:
        def emit(chunk: list[Any]) -> None:
            self.send(P.SEQ.pack(P.PARTIAL, seq), dump_results(chunk))
            self.wait_ack()

        t0 = perf_counter()
        try:
            rest, done = proc.apply(items, emit)
            payload = dump_results(rest)
        except ItemFailed as f:
            self.fail(seq, f.index, f.error, "process")
            return
        except ResultUnpicklable as exc:
            # results line up with items only for map
            self.fail(seq, exc.index if proc.op == "map" else P.NO_SEQ, exc, "pickle-result")
            return
        dt = perf_counter() - t0
        self.send(P.DONE.pack(P.RESULT, seq, done, dt, 0, 0), payload)

    def careful_batch(self, proc: Processor, seq: int, items: list[Any]) -> None:
        """Item by item, with retries; failed items are reported with the results."""
        t0 = perf_counter()
        try:
            out = proc.apply_careful(items)
        except ItemFailed as f:
            self.fail(seq, f.index, f.error, "process")
            return
        dt = perf_counter() - t0
        failures = [(f.index, f.traceback, f.attempts, f.error) for f in out.failures]
        results = out.results
        while True:
            try:
                payload = dump_results(results)
                break
            except ResultUnpicklable as exc:
                # drop the outputs of the item behind the bad result, and report it
                index, start = item_of_result(out.sizes, exc.index)
                if not proc.policy.skip:
                    self.fail(seq, index, exc, "pickle-result")
                    return
                failures.append((index, describe_exception(exc), 1, exc))
                results = results[:start] + results[start + out.sizes[index] :]
                out.sizes[index] = 0
        if failures:
            reports = [
                (index, P.error_report(error, tb, "process"), attempts)
                for index, tb, attempts, error in failures
            ]
            payload = dumps_items((payload, reports))
        head = P.DONE.pack(P.RESULT, seq, out.done, dt, len(failures), out.reruns)
        self.send(head, payload)

    def wait_ack(self) -> None:
        while True:
            msg = self.conn.recv()
            tag = msg[0]
            if tag == P.ACK:
                return
            if tag == P.STOP:
                raise _StopNow
            self.inbox.append(msg)
