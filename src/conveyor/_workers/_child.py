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
import signal
import sys
from collections import deque
from time import perf_counter
from typing import Any

from . import _protocol as P
from ._apply import Abort, ItemFailed, Processor, describe_exception
from ._context import WorkerInfo, set_current_worker
from ._serialize import dumps_items, first_unpicklable, loads
from ._wire import Wire

CTRL_SIZE = mmap.PAGESIZE


class ResultUnpicklable(TypeError):
    def __init__(self, index: int, cause: BaseException) -> None:
        super().__init__(
            "a result cannot be pickled to go back to the main process: "
            f"{type(cause).__name__}: {cause}"
        )
        self.index = index


def dump_results(results: list[Any]) -> bytes:
    try:
        return dumps_items(results)
    except Exception as exc:
        found = first_unpicklable(results)
        index, cause = found if found is not None else (0, exc)
        raise ResultUnpicklable(index, cause) from None


class _StopNow(Abort):
    """STOP arrived while a batch was streaming: abandon the batch."""


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except Exception:
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def main(fds: list[int], parent: int) -> int:
    _die_with_parent(parent)
    data_fd, ctrl_fd = fds
    conn = Wire.from_fd(data_fd)
    ctrl = mmap.mmap(ctrl_fd, CTRL_SIZE)
    os.close(ctrl_fd)
    stop = memoryview(ctrl)
    try:
        return Worker(conn, stop).serve()
    except (EOFError, OSError):
        return 3  # the engine went away
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass


class Worker:
    def __init__(self, conn: Wire, stop: memoryview) -> None:
        self.conn = conn
        self.stop = stop
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
        try:
            target = loads(init["payload"])
            proc = Processor(init["op"], target, self.stop)
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
                self.fail(seq, 0, exc, "unpickle-items")
                continue
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
        self.send(P.DONE.pack(P.RESULT, seq, done, dt), payload)

    def wait_ack(self) -> None:
        while True:
            msg = self.conn.recv()
            tag = msg[0]
            if tag == P.ACK:
                return
            if tag == P.STOP:
                raise _StopNow
            self.inbox.append(msg)
