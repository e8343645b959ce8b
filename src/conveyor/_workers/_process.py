"""Process workers: a worker process per worker, fed by two threads of the engine.

::

    engine process                                   worker process (forked by the zygote)
    ──────────────                                   ────────────────────────────────────
    feeder thread:  take() ─ pickle ─ BATCH ───────▶ loop: apply the stage to the batch
                    (at most ``depth`` batches out)        │
    collector thread: complete() ◀─ unpickle ◀─ RESULT ────┘  (PARTIAL + ACK when streaming)

The feeder and the collector never wait for each other, so a large batch going
one way and a large result coming back cannot deadlock. The run's stop flag lives
in a page of shared memory (``memfd``) that every worker of the run maps: a worker
process looks at it before each item, as thread workers look at theirs.

The engine always knows which batches a worker holds (``inflight``); that is what
lets it name the item a dead worker was processing.
"""

from __future__ import annotations

import mmap
import os
import socket
import sys
import threading
from collections import deque
from typing import Any

from .._errors import StageError, WorkerCrashed, item_repr
from . import _protocol as P
from ._base import StageFeed, Stopping, ThreadHandle, WorkerHandle, WorkerKind, WorkerSlot
from ._serialize import dumps_items, first_unpicklable, loads
from ._wire import Wire
from ._zygote import Zygote, ZygoteGone

__all__ = ["ProcessKind", "backend_class"]

STOP_GRACE = 30.0  # how long the collector waits for a worker to exit after STOP
CTRL_SIZE = mmap.PAGESIZE


class _Died(Exception):
    pass


class ProcessWorker(ThreadHandle):
    def __init__(self, feed: StageFeed, slot: WorkerSlot, kind: ProcessKind) -> None:
        self.feed = feed
        self.slot = slot
        self.kind = kind
        self.conn: Wire | None = None
        self.pid: int | None = None
        self.zygote: Zygote | None = None
        self.thread = threading.Thread(target=self._run, name=f"{slot.name}:collector", daemon=True)
        self._feeder: threading.Thread | None = None
        self._send_lock = threading.Lock()
        # _cond guards inflight and _exhausted; it is notified when either changes.
        self._cond = threading.Condition()
        self.inflight: deque[tuple[int, list[Any]]] = deque()
        self._exhausted = False
        self._killed = False

    # -- collector (the worker's main thread in the engine) -------------------

    def _run(self) -> None:
        feed, slot = self.feed, self.slot
        try:
            self._spawn()
            self._collect()
        except Stopping:
            pass
        except _Died:
            if not feed.stop[0]:
                code = self._exit_code(timeout=5.0)
                with self._cond:
                    held = self.inflight[0][1] if self.inflight else []
                item = item_repr(held[0]) if held else None
                feed.fail(WorkerCrashed(feed.name, slot.name, item, code, len(held)))
        except ZygoteGone as exc:
            feed.fail(exc)
        except BaseException as exc:  # a bug of ours: never let it pass silently
            feed.fail(exc)
        finally:
            self._shutdown()
            slot.set_state("done")
            slot.alive = False
            feed.worker_done()

    def _spawn(self) -> None:
        feed, slot = self.feed, self.slot
        spec = feed.spec
        if feed.stop[0]:
            raise Stopping
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.zygote = Zygote.get()
        try:
            self.pid = self.zygote.spawn([theirs.fileno(), self.kind.ctrl_fd()])
        finally:
            theirs.close()
        slot.pid = self.pid
        slot.thread_id = self.pid  # a worker process runs the stage in its main thread
        self.conn = Wire(ours)
        init = {
            "sys_path": list(sys.path),
            "cwd": os.getcwd(),
            "environ": dict(os.environ),
            "payload": spec.payload,
            "op": spec.op,
            "name": slot.name,
            "stage": feed.name,
            "index": slot.index,
        }
        self._send(P.TAG.pack(P.INIT), dumps_items(init))

    def _recv(self) -> bytearray:
        assert self.conn is not None
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            raise _Died from None

    def _send(self, head: bytes, body: bytes = b"") -> None:
        assert self.conn is not None
        try:
            with self._send_lock:
                self.conn.send(head, body)
        except OSError:
            raise _Died from None

    def _collect(self) -> None:
        feed, slot = self.feed, self.slot
        msg = self._recv()
        if msg[0] == P.FAILED:
            self._failed(msg)
            return
        assert msg[0] == P.READY
        self._feeder = threading.Thread(target=self._feed, name=f"{slot.name}:feeder", daemon=True)
        self._feeder.start()
        while True:
            with self._cond:
                while not self.inflight and not self._exhausted:
                    if feed.stop[0]:
                        return
                    slot.set_state("idle")
                    self._cond.wait()
                if not self.inflight:
                    return  # input exhausted and everything came back
            slot.set_state("busy")
            msg = self._recv()
            tag = msg[0]
            if tag == P.RESULT:
                _, seq, done, seconds = P.DONE.unpack_from(msg)
                payload = memoryview(msg)[P.DONE.size :]
                results = loads(payload)
                with self._cond:
                    self.inflight.popleft()
                    self._cond.notify_all()
                slot.items_done += done
                slot.busy_s += seconds
                feed.observe(done, seconds, len(msg))
                if feed.stop[0]:
                    return
                feed.complete(seq, results, slot)
            elif tag == P.PARTIAL:
                _, seq = P.SEQ.unpack_from(msg)
                feed.partial(seq, loads(memoryview(msg)[P.SEQ.size :]), slot)
                self._send(P.TAG.pack(P.ACK))
            elif tag == P.FAILED:
                self._failed(msg)
                return

    def _failed(self, msg: bytearray) -> None:
        feed, slot = self.feed, self.slot
        _, seq, index = P.FAIL.unpack_from(msg)
        report = loads(memoryview(msg)[P.FAIL.size :])
        error = P.rebuild_error(report)
        item: str | None = None
        if seq != P.NO_SEQ and index != P.NO_SEQ:
            with self._cond:
                for s, items in self.inflight:
                    if s == seq and index < len(items):
                        item = item_repr(items[index])
        slot.failed += 1 if seq != P.NO_SEQ else 0
        feed.fail(StageError(feed.name, slot.name, item, error, report["traceback"]))

    # -- feeder ---------------------------------------------------------------

    def _feed(self) -> None:
        feed, slot = self.feed, self.slot
        try:
            while not feed.stop[0]:
                with self._cond:
                    while len(self.inflight) >= feed.depth:
                        if feed.stop[0]:
                            return
                        self._cond.wait()
                got = feed.take(slot, report=False)
                if got is None:
                    break
                seq, items = got
                try:
                    payload = dumps_items(items)
                except Exception as exc:
                    found = first_unpicklable(items)
                    index, cause = found if found is not None else (0, exc)
                    error = TypeError(
                        f"this item cannot be pickled to go to a worker process: "
                        f"{type(cause).__name__}: {cause}"
                    )
                    feed.fail(StageError(feed.name, slot.name, item_repr(items[index]), error))
                    return
                with self._cond:
                    self.inflight.append((seq, items))
                    self._cond.notify_all()
                self._send(P.SEQ.pack(P.BATCH, seq), payload)
        except (Stopping, _Died):
            pass
        except BaseException as exc:
            feed.fail(exc)
        finally:
            with self._cond:
                self._exhausted = True
                self._cond.notify_all()

    # -- ending -----------------------------------------------------------------

    def _shutdown(self) -> None:
        """Tell the worker to stop, wait for it to exit, and reap its feeder."""
        with self._cond:
            self._exhausted = True
            self._cond.notify_all()
        if self.conn is not None:
            try:
                self._send(P.TAG.pack(P.STOP))
                while True:  # drain until it says goodbye or dies
                    msg = self._recv()
                    if msg[0] == P.BYE:
                        break
                    if msg[0] == P.FAILED and not self.feed.stop[0]:
                        self._failed(msg)
                    if msg[0] == P.PARTIAL:
                        self._send(P.TAG.pack(P.ACK))
            except _Died:
                pass
        if self.pid is not None:
            if self._exit_code(timeout=STOP_GRACE) is None:
                self.kill()
                self._exit_code(timeout=STOP_GRACE)
        if self.conn is not None:
            self.conn.close()
        if self._feeder is not None:
            self._feeder.join(STOP_GRACE)

    _exit: int | None = None
    _exit_known = False

    def _exit_code(self, timeout: float) -> int | None:
        if not self._exit_known and self.zygote is not None and self.pid is not None:
            code = self.zygote.wait_exit(self.pid, timeout)
            if code is not None:
                self._exit, self._exit_known = code, True
        return self._exit

    def kill(self) -> None:
        if self.pid is not None and self.zygote is not None and not self._exit_known:
            self._killed = True
            self.zygote.kill(self.pid)


class ProcessKind(WorkerKind):
    """Process workers of one run; owns the run's page of shared control memory."""

    kind = "process"

    def __init__(self, stop: list[bool]) -> None:
        super().__init__(stop)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._map: mmap.mmap | None = None

    def ctrl_fd(self) -> int:
        with self._lock:
            if self._fd is None:
                fd = os.memfd_create("conveyor-run", os.MFD_CLOEXEC)
                os.ftruncate(fd, CTRL_SIZE)
                self._map = mmap.mmap(fd, CTRL_SIZE)
                self._fd = fd
                if self.stop[0]:
                    self._map[0] = 1
            return self._fd

    def worker(self, feed: StageFeed, slot: WorkerSlot) -> WorkerHandle:
        return ProcessWorker(feed, slot, self)

    def on_stop(self) -> None:
        with self._lock:
            if self._map is not None:
                self._map[0] = 1

    def close(self) -> None:
        with self._lock:
            if self._map is not None:
                self._map.close()
                self._map = None
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


backend_class = ProcessKind
