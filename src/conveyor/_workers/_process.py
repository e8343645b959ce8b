"""Process workers: a worker process per worker, fed by two threads of the engine.

::

    engine process                                   worker process (forked by the zygote)
    ──────────────                                   ────────────────────────────────────
    feeder thread:  take() ─ pickle ─ BATCH ───────▶ loop: apply the stage to the batch
                    (at most ``depth`` batches out)        │
    collector thread: complete() ◀─ unpickle ◀─ RESULT ────┘  (PARTIAL + ACK when streaming)

The feeder and the collector never wait for each other, so a large batch going
one way and a large result coming back cannot deadlock. The run's control memory
(a ``memfd`` every worker of the run maps) holds the stop flag, which a worker
process looks at before each item, and a slot per worker where it writes the item
it is on (when the stage has a timeout) for the engine's watchdog.

The engine always knows which batches a worker holds (``inflight``): when the
worker process dies, or is killed for a timeout, the collector starts a new one and
delivers those batches again. The batch that was running is delivered item by item
("isolation"), so that only the item that kills its worker is charged: an item
that has killed ``max_crashes`` workers, or run past its timeout once more than its
retries allow, fails; the others finish normally. Batches behind it were not
started and go again whole.

Locking: ``_io`` (re-entrant) is held to send, for the feeder to add a batch to
``inflight``, and for the whole of a recovery, so that the feeder never sends to a
worker that is being replaced nor sends a batch the recovery also sends. ``_cond``
guards ``inflight`` and ``_exhausted`` and is notified when they change.
"""

from __future__ import annotations

import mmap
import os
import socket
import sys
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from .._errors import ItemTimeout, StageError, WorkerCrashed, item_repr
from . import _protocol as P
from ._apply import describe_exception
from ._base import StageFeed, Stopping, ThreadHandle, WorkerHandle, WorkerKind, WorkerSlot
from ._serialize import dumps_items, first_unpicklable, loads
from ._wire import Wire
from ._zygote import Zygote, ZygoteGone

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["ProcessKind", "backend_class"]

STOP_GRACE = 30.0  # how long the collector waits for a worker to exit after STOP
STACK_POLL_S = 0.005  # a stack dump is complete once its size is the same
STACK_SETTLE = 3  # this many polls in a row
ISOLATED = P.NO_SEQ - 1  # the seq of a batch of one item delivered in isolation


class _Died(Exception):
    """The worker process's end of the socket closed: it died, or was killed."""


class _Undecodable(Exception):
    """The results of a batch came back but cannot be unpickled here."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


class _SetupFailed(Exception):
    """setup() raised in a new worker process; the run has been failed already."""


class _Batch:
    __slots__ = ("items", "seq", "streamed")

    def __init__(self, seq: int, items: list[Any]) -> None:
        self.seq = seq
        self.items = items
        self.streamed = 0  # outputs already passed on by PARTIAL


class ProcessWorker(ThreadHandle):
    def __init__(self, feed: StageFeed, slot: WorkerSlot, kind: ProcessKind) -> None:
        self.feed = feed
        self.slot = slot
        self.kind = kind
        self.ctrl_slot = kind.new_slot()
        self.conn: Wire | None = None
        self.pid: int | None = None
        self.zygote: Zygote | None = None
        self.thread = threading.Thread(target=self._run, name=f"{slot.name}:collector", daemon=True)
        self._feeder: threading.Thread | None = None
        self._io = threading.RLock()
        self._cond = threading.Condition()
        self.inflight: deque[_Batch] = deque()
        self._exhausted = False
        self._deferred: deque[_Batch] = deque()  # batches to run again item by item
        self._timeout_hit: tuple[int, float] | None = None
        self._exits: dict[int, int | None] = {}
        # where the worker process writes its stack on STACK_SIGNAL (one file for
        # every process of this worker); _stack_lock guards it and _stack_asked
        self._stack_fd: int | None = None
        self._stack_lock = threading.Lock()
        self._stack_asked = False
        # where it keeps what its threads wait for in conveyor.sync (sync/_locks.py),
        # and its lock orders when they are checked (sync/_order.py)
        self._waits_fd: int | None = None
        self._orders_fd: int | None = None

    # -- the collector: the worker's main thread in the engine ------------------

    def _run(self) -> None:
        feed = self.feed
        try:
            self._start_child()
            self._feeder = threading.Thread(
                target=self._feed, name=f"{self.slot.name}:feeder", daemon=True
            )
            self._feeder.start()
            self._collect()
        except (Stopping, _SetupFailed):
            pass
        except ZygoteGone as exc:
            feed.fail(exc)
        except BaseException as exc:  # a bug of ours: never let it pass silently
            feed.fail(exc)
        finally:
            self._shutdown()
            self.slot.set_state("done")
            self.slot.alive = False
            feed.worker_done()

    def _start_child(self) -> None:
        """Fork a worker process, send it the stage, wait until its setup() is done."""
        feed, slot = self.feed, self.slot
        if feed.stop[0]:
            raise Stopping
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.zygote = Zygote.get()
        self.kind.reset_progress(self.ctrl_slot)
        with self._stack_lock:
            if self._stack_fd is None:
                self._stack_fd = os.memfd_create("conveyor-stack", os.MFD_CLOEXEC)
                self._waits_fd = os.memfd_create("conveyor-waits", os.MFD_CLOEXEC)
                self._orders_fd = os.memfd_create("conveyor-orders", os.MFD_CLOEXEC)
            stack_fd, waits_fd, orders_fd = self._stack_fd, self._waits_fd, self._orders_fd
            assert waits_fd is not None
            assert orders_fd is not None
            os.ftruncate(waits_fd, 0)  # a new process: its predecessor's waits are gone
            _merge_lock_orders(orders_fd)  # ... and its lock orders are the parent's
        try:
            req = self.zygote.request_spawn(
                [theirs.fileno(), self.kind.ctrl_fd(), stack_fd, waits_fd, orders_fd]
            )
        finally:
            theirs.close()
        spec = feed.spec
        init = {
            "sys_path": list(sys.path),
            "cwd": os.getcwd(),
            "environ": dict(os.environ),
            "payload": spec.payload,
            "op": spec.op,
            "policy": spec.policy.item_policy,
            "slot": self.ctrl_slot,
            "name": slot.name,
            "stage": feed.name,
            "index": slot.index,
            "lock_order": _lock_order_settings(),
        }
        conn = Wire(ours)
        try:
            # INIT goes out while the launcher forks: the worker finds it waiting
            conn.send(P.TAG.pack(P.INIT), dumps_items(init))
            sent = True
        except OSError:
            sent = False  # the launcher closed its end: spawned() says why
        try:
            pid = self.zygote.spawned(req)
        except ZygoteGone:
            conn.close()
            raise
        with self._io:
            if self.conn is not None:
                self.conn.close()
            self.pid, self.conn = pid, conn
        slot.pid = slot.thread_id = pid  # a worker process runs the stage in its main thread
        try:
            if not sent:
                raise _Died
            msg = self._recv()
        except _Died:
            if feed.stop[0]:
                raise Stopping from None
            code = self._exit_code(pid, timeout=5.0)
            feed.fail(WorkerCrashed(feed.name, slot.name, None, code, held=0))
            raise _SetupFailed from None
        if msg[0] == P.FAILED:
            _, _, report = self._parse_failed(msg)
            error = P.rebuild_error(report)
            feed.fail(StageError(feed.name, slot.name, None, error, report["traceback"]))
            raise _SetupFailed
        assert msg[0] == P.READY

    def _recv(self) -> bytearray:
        conn = self.conn
        assert conn is not None
        try:
            return conn.recv()
        except (EOFError, OSError):
            raise _Died from None

    def _send(self, head: bytes, body: bytes = b"") -> None:
        with self._io:
            conn = self.conn
            assert conn is not None
            try:
                conn.send(head, body)
            except OSError:
                raise _Died from None

    def _collect(self) -> None:
        feed, slot = self.feed, self.slot
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
            try:
                self._handle(self._recv())
                if self._deferred:
                    with self._io:  # no new batch goes out until the deferred ones are done
                        while self.inflight:  # they are ahead in the worker's queue
                            self._handle(self._recv())
                        while self._deferred:
                            self._isolate(self._deferred.popleft(), None, crashed=False)
            except _Died:
                if feed.stop[0]:
                    return
                self._recover()
            if feed.stop[0]:
                return

    def _handle(self, msg: bytearray) -> None:
        """One message from the worker process about the batch at the head of inflight."""
        feed, slot = self.feed, self.slot
        tag = msg[0]
        if tag == P.PARTIAL:
            chunk = loads(memoryview(msg)[P.SEQ.size :])
            with self._cond:
                batch = self.inflight[0]
            batch.streamed += len(chunk)
            feed.partial(batch.seq, chunk, slot)
            self._ack()
            return
        with self._cond:
            batch = self.inflight.popleft()
            self._cond.notify_all()
        if tag == P.RESULT:
            try:
                results = self._results(msg, batch.items)
            except _Undecodable:
                self._deferred.append(batch)  # run its items one by one to find the culprit
                return
            if not feed.stop[0]:
                feed.complete(batch.seq, results, slot)
        elif tag == P.FAILED:
            _, index, report = self._parse_failed(msg)
            if report["phase"] == "unpickle-items":
                self._deferred.append(batch)  # which item: deliver them one by one
                return
            # only a stage with on_error="raise" reports a failed item this way: the
            # run stops
            self._item_failed(batch.items, index, report)

    def _ack(self) -> None:
        try:
            self._send(P.TAG.pack(P.ACK))
        except _Died:
            pass  # the next receive finds out

    def _results(self, msg: bytearray, items: list[Any]) -> list[Any]:
        """Unpack a RESULT; record its failed items; update the counters."""
        feed, slot = self.feed, self.slot
        _, _, done, seconds, nfail, reruns = P.DONE.unpack_from(msg)
        payload = memoryview(msg)[P.DONE.size :]
        reports: list[tuple[int, bytes, int]] = []
        try:
            if nfail:
                payload, reports = loads(payload)
            results: list[Any] = loads(payload)
        except Exception as exc:
            raise _Undecodable(exc) from None
        slot.items_done += done - nfail  # items that succeeded
        slot.busy_s += seconds
        slot.retried += reruns
        feed.observe(done, seconds, len(msg))
        for index, report_bytes, attempts in reports:
            report = loads(report_bytes)
            self._item_failed(items, index, report, attempts)
        return results

    def _parse_failed(self, msg: bytearray) -> tuple[int, int, dict[str, Any]]:
        _, seq, index = P.FAIL.unpack_from(msg)
        report: dict[str, Any] = loads(memoryview(msg)[P.FAIL.size :])
        return seq, index, report

    def _item_failed(
        self, items: list[Any], index: int, report: dict[str, Any], attempts: int = 0
    ) -> None:
        error = P.rebuild_error(report)
        tries = attempts or report.get("attempts", 1)
        if index == P.NO_SEQ or index >= len(items):
            # a result of filter/flat_map that cannot be pickled: no single item to name
            self.slot.failed += 1
            self.feed.fail(
                StageError(self.feed.name, self.slot.name, None, error, report["traceback"])
            )
            return
        self.feed.item_failed(self.slot, items[index], error, report["traceback"], tries)

    # -- when the worker process dies -------------------------------------------

    def _exit_code(self, pid: int | None, timeout: float) -> int | None:
        if pid is None or self.zygote is None:
            return None
        if pid not in self._exits:
            code = self.zygote.wait_exit(pid, timeout)
            if code is None:
                return None
            self._exits[pid] = code
        return self._exits[pid]

    def _recover(self) -> None:
        """The worker process died: start another and deliver what it held again."""
        with self._io:
            code = self._exit_code(self.pid, timeout=5.0)
            hit, self._timeout_hit = self._timeout_hit, None
            with self._cond:
                held = list(self.inflight)
                self.inflight.clear()
                self._cond.notify_all()
            self._respawn()
            while self._deferred:
                self._isolate(self._deferred.popleft(), None, crashed=False)
            if not held:
                return
            first, rest = held[0], held[1:]
            self._isolate(first, hit, crashed=True, code=code)
            for batch in rest:  # not started: they go again whole
                self.slot.retried += len(batch.items)
                payload = dumps_items(batch.items)
                with self._cond:
                    self.inflight.append(batch)
                    self._cond.notify_all()
                try:
                    self._send(P.SEQ.pack(P.BATCH, batch.seq), payload)
                except _Died:
                    return  # the collector's next receive finds out

    def _respawn(self) -> None:
        self._start_child()
        self.slot.restarts += 1  # counted once the new worker is ready
        self.slot.replaced_at = time.monotonic()

    def _isolate(
        self,
        batch: _Batch,
        hit: tuple[int, float] | None,
        crashed: bool,
        code: int | None = None,
    ) -> None:
        """Deliver the items of ``batch`` one by one to this worker, replacing the
        worker process each time one kills it, and complete the batch."""
        feed, slot, policy = self.feed, self.slot, self.feed.policy
        items = batch.items
        slot.duplicates += batch.streamed  # these outputs will be made again
        crashes = [0] * len(items)
        timeouts = [0] * len(items)
        failed = [False] * len(items)
        # a batch of one that killed its worker: that item did it
        unattributed = crashed and hit is None and len(items) > 1
        if crashed and hit is None and len(items) == 1:
            crashes[0] = 1
        if hit is not None and 0 <= hit[0] < len(items):
            timeouts[hit[0]] = 1
            if 1 > policy.retries:
                self._timed_out(items, hit[0], 1)
                failed[hit[0]] = True
        results: list[Any] = []
        for i, item in enumerate(items):
            while not failed[i]:
                if feed.stop[0]:
                    raise Stopping
                slot.retried += 1
                try:
                    results.extend(self._deliver_one(item))
                    break
                except _Died:
                    exit_code = self._exit_code(self.pid, timeout=5.0)
                    lone_hit, self._timeout_hit = self._timeout_hit, None
                    self._respawn()
                    if lone_hit is not None:
                        timeouts[i] += 1
                        if timeouts[i] > policy.retries:
                            self._timed_out(items, i, timeouts[i])
                            failed[i] = True
                        continue
                    crashes[i] += 2 if unattributed else 1
                    unattributed = False
                    code = exit_code
                    if crashes[i] >= policy.max_crashes:
                        error = WorkerCrashed(feed.name, slot.name, item_repr(item), code)
                        feed.item_failed(slot, item, error, "", crashes[i])
                        failed[i] = True
        if feed.stop[0]:
            raise Stopping
        feed.complete(batch.seq, results, slot)

    def _deliver_one(self, item: Any) -> list[Any]:
        """Run one item on the worker process and wait for its results."""
        feed = self.feed
        try:
            payload = dumps_items([item])
        except Exception as exc:
            self._unpicklable([item], 0, exc)
            return []
        self._send(P.SEQ.pack(P.BATCH, ISOLATED), payload)
        out: list[Any] = []
        while True:
            msg = self._recv()
            tag = msg[0]
            if tag == P.PARTIAL:
                out.extend(loads(memoryview(msg)[P.SEQ.size :]))
                self._ack()
            elif tag == P.RESULT:
                try:
                    out.extend(self._results(msg, [item]))
                except _Undecodable as exc:
                    error = TypeError(
                        "the result of this item cannot be unpickled in the main process: "
                        f"{type(exc.error).__name__}: {exc.error}"
                    )
                    tb = describe_exception(exc.error)
                    feed.item_failed(self.slot, item, error, tb, 1)
                    if feed.stop[0]:
                        raise Stopping from None
                    return []
                return out
            elif tag == P.FAILED:
                _, _, report = self._parse_failed(msg)
                self._item_failed([item], 0, report)
                if feed.stop[0]:
                    raise Stopping
                return []

    def _timed_out(self, items: list[Any], index: int, attempts: int) -> None:
        feed, slot = self.feed, self.slot
        timeout = feed.policy.timeout or 0.0
        error = ItemTimeout(feed.name, slot.name, item_repr(items[index]), timeout)
        feed.item_failed(slot, items[index], error, "", attempts)

    def _unpicklable(self, items: list[Any], index: int, cause: BaseException) -> None:
        error = TypeError(
            f"this item cannot be pickled to go to a worker process: "
            f"{type(cause).__name__}: {cause}"
        )
        self.feed.item_failed(self.slot, items[index], error, describe_exception(cause), 1)

    def check_timeout(self, now: float, timeout: float) -> None:
        """Called by the run's watchdog: kill the worker process if its current item
        has run past the stage's timeout (the collector then replaces it)."""
        pid, zygote = self.pid, self.zygote
        if pid is None or zygote is None or self._timeout_hit is not None:
            return
        index, started = self.kind.read_progress(self.ctrl_slot)
        if started and index >= 0 and now - started > timeout:
            self._timeout_hit = (index, started)
            zygote.kill(pid)

    # -- the feeder ---------------------------------------------------------------

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
                payload, items = self._pickle(items)
                if payload is None:  # every item failed to pickle
                    feed.complete(seq, [], slot)
                    continue
                batch = _Batch(seq, items)
                with self._io:
                    with self._cond:
                        self.inflight.append(batch)
                        self._cond.notify_all()
                    try:
                        self._send(P.SEQ.pack(P.BATCH, seq), payload)
                    except _Died:
                        pass  # the collector finds out and delivers it again
        except Stopping:
            pass
        except BaseException as exc:
            feed.fail(exc)
        finally:
            with self._cond:
                self._exhausted = True
                self._cond.notify_all()

    def _pickle(self, items: list[Any]) -> tuple[bytes | None, list[Any]]:
        """The batch's pickle and its items: items that cannot be pickled fail (and, if
        on_error lets the run go on, leave the batch). ``items`` is not changed (it can
        be a range, see the source feeder)."""
        while True:
            try:
                return dumps_items(items), items
            except Exception as exc:
                found = first_unpicklable(items)
                index, cause = found if found is not None else (0, exc)
                self._unpicklable(items, index, cause)
                if self.feed.stop[0]:
                    raise Stopping from None
                items = [*items[:index], *items[index + 1 :]]
                if not items:
                    return None, items

    # -- ending -----------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Tell the worker to stop, wait for it to exit, and reap the feeder."""
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
                        _, _, report = self._parse_failed(msg)
                        error = P.rebuild_error(report)
                        self.feed.fail(
                            StageError(
                                self.feed.name, self.slot.name, None, error, report["traceback"]
                            )
                        )
                    if msg[0] == P.PARTIAL:
                        self._ack()
            except _Died:
                pass
        if self.pid is not None and self._exit_code(self.pid, timeout=STOP_GRACE) is None:
            self.kill()
            self._exit_code(self.pid, timeout=STOP_GRACE)
        if self.conn is not None:
            self.conn.close()
        with self._stack_lock:
            if self._orders_fd is not None:  # the lock orders of the last process
                _merge_lock_orders(self._orders_fd)
            for fd in (self._stack_fd, self._waits_fd, self._orders_fd):
                if fd is not None:
                    os.close(fd)
            self._stack_fd = self._waits_fd = self._orders_fd = None
        if self._feeder is not None:
            self._feeder.join(STOP_GRACE)

    def kill(self) -> None:
        pid, zygote = self.pid, self.zygote
        if pid is not None and zygote is not None and pid not in self._exits:
            zygote.kill(pid)

    # -- for the stall watchdog -----------------------------------------------------

    def thread_ident(self) -> int | None:
        return None  # the stage's code runs in the worker process

    def holding(self) -> tuple[list[Any], int] | None:
        with self._cond:
            batch = self.inflight[0] if self.inflight else None
        if batch is None:
            return None
        index, started = self.kind.read_progress(self.ctrl_slot)  # only with a timeout
        return batch.items, (index if started else -1)

    def sync_waits(self) -> str:
        """What the worker process's threads wait for in ``conveyor.sync``, as it
        last wrote it (nothing if it does not use conveyor.sync)."""
        with self._stack_lock:
            fd = self._waits_fd
            if fd is None:
                return ""
            return os.pread(fd, 1 << 16, 0).decode("utf-8", "replace")

    def ask_stack(self) -> None:
        """Have the worker process dump its threads' stacks into the stack file (see
        ``_child``): the zygote sends it STACK_SIGNAL, unless it has exited."""
        pid, zygote = self.pid, self.zygote
        with self._stack_lock:
            self._stack_asked = False
            fd = self._stack_fd
            if pid is None or zygote is None or fd is None or pid in self._exits:
                return
            # the worker's fd shares this file offset: its dump starts at 0
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            zygote.signal(pid, P.STACK_SIGNAL)
            self._stack_asked = True

    def stack(self, deadline: float) -> str:
        """The dump asked for by :meth:`ask_stack`, once its size stops growing (the
        handler writes it at once; a worker that is not scheduled may take longer)."""
        with self._stack_lock:
            fd = self._stack_fd
            if not self._stack_asked or fd is None:
                return ""
            last, still = -1, 0
            while True:
                size = os.fstat(fd).st_size
                still = still + 1 if size and size == last else 0
                if still >= STACK_SETTLE or time.monotonic() >= deadline:
                    break
                last = size
                time.sleep(STACK_POLL_S)
            text = os.pread(fd, size, 0).decode("utf-8", "replace")
        from ._stacks import by_value_code, format_frames, parse_faulthandler, trim

        threads = parse_faulthandler(text, by_value_code(self.feed.spec.target))
        if not threads:
            return f"  (no stack: worker process {self.pid} did not answer)\n"
        if len(threads) == 1:
            return format_frames(trim(threads[0][1]))
        return "".join(
            f"  {head or 'thread'} of process {self.pid}:\n" + format_frames(trim(frames), "    ")
            for head, frames in threads
        )


class ProcessKind(WorkerKind):
    """Process workers of one run; owns the run's control memory."""

    kind = "process"

    def __init__(
        self, stop: list[bool], adopt: Callable[[WorkerHandle], None] | None = None
    ) -> None:
        super().__init__(stop, adopt)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._map: mmap.mmap | None = None
        self._slots = 0

    def ctrl_fd(self) -> int:
        with self._lock:
            if self._fd is None:
                fd = os.memfd_create("conveyor-run", os.MFD_CLOEXEC)
                os.ftruncate(fd, P.CTRL_SIZE)
                self._map = mmap.mmap(fd, P.CTRL_SIZE)
                self._fd = fd
                if self.stop[0]:
                    self._map[0] = 1
            return self._fd

    def new_slot(self) -> int:
        with self._lock:
            if self._slots >= P.MAX_SLOTS:
                raise ValueError(f"a run can have at most {P.MAX_SLOTS} worker processes")
            self._slots += 1
            return self._slots - 1

    def read_progress(self, slot: int) -> tuple[int, float]:
        m = self._map
        if m is None:
            return -1, 0.0
        index, started = P.PROGRESS.unpack_from(m, P.progress_offset(slot))
        return int(index), float(started)

    def reset_progress(self, slot: int) -> None:
        self.ctrl_fd()
        m = self._map
        if m is not None:
            P.PROGRESS.pack_into(m, P.progress_offset(slot), -1, 0.0)

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


def _lock_order_settings() -> object:
    """What a worker needs to check its locks' order, if this process checks (only
    possible once conveyor.sync is imported)."""
    order = sys.modules.get("conveyor.sync._order")
    return None if order is None else order.settings_for_workers()


def _merge_lock_orders(fd: int) -> None:
    """The lock orders a worker process left in ``fd`` (it writes them as it finds
    them, so they outlive a crash), into this process's graph, which reports what
    the merged graph shows."""
    order = sys.modules.get("conveyor.sync._order")
    if order is not None and order.on:
        order.merge_file(fd)
