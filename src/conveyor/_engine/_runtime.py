"""What a stage is while it runs: its input, its output in order, its workers' records.

Data flow of a stage with ``n`` workers (any kind)::

    inbox (MemoryChannel, bounded in items)
      │  take(): waits while the batch would run too far ahead (reorder window),
      │          then, one taker at a time, pairs a batch with the next sequence number
      ▼
    worker 1..n  (a thread running the stage, or a thread feeding a worker process)
      │  partial(seq, chunk)   streamed output of an unfinished batch
      │  complete(seq, rest)   the rest of a finished batch
      ▼
    sequencer: batches leave in sequence order (ordered=True) or as they finish
      ▼
    outbox (the next stage's inbox, or the run's output; none for a sink)

Ordering rules (``ordered=True``):

* Whoever holds the emit token is the only thread putting into the outbox. It
  emits ``pending[next_emit]`` while that exists, then gives the token back.
  Invariant: when nobody holds the token, ``next_emit`` is not in ``pending``.
* A streamed chunk of batch ``seq`` waits until ``seq`` is the head of the line, so
  out-of-order output never piles up; only finished batches are buffered, and at
  most ``window`` of them, because takers wait for the window.
* The last worker to leave closes the outbox. The token holder is a live worker and
  drains ``pending`` before it leaves, so nothing is left behind.

Back-pressure between two stages is the channel's: a put into a full channel waits
for room for a good part of its chunk, not for one slot (see ``_channels._memory``).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import TYPE_CHECKING, Any

from .._errors import Closed, PipelineError, StageError, item_repr
from .._observe._stats import Failure
from .._workers._apply import describe_exception
from .._workers._base import Stopping, WorkerSlot

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._channels._memory import MemoryChannel
    from .._stage import StagePolicy, StageSpec

__all__ = ["BatchSizer", "RunControl", "StageRuntime", "Stopping", "WorkerSlot"]

AUTO_CAPACITY_CAP = 262144


class RunControl:
    """What every worker of a run shares: the stop flag and the first error."""

    def __init__(self) -> None:
        self.stop: list[bool] = [False]
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._on_stop: list[Callable[[], None]] = []
        self._finished = False
        self.stopped_at: float | None = None
        self.failures: list[Failure] = []

    @property
    def stopping(self) -> bool:
        return self.stop[0]

    def on_stop(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if not self.stop[0]:
                self._on_stop.append(callback)
                return
        callback()

    def record(self, failure: Failure) -> None:
        with self._lock:
            self.failures.append(failure)

    def finish(self) -> None:
        """Every stage finished: from now on nothing can fail or cancel the run."""
        with self._lock:
            self._finished = True

    def fail(self, error: BaseException) -> bool:
        """Stop the run because of ``error``; the first error wins. True if it did."""
        with self._lock:
            if self.stop[0] or self._finished:
                return False
            self.error = error
            self.stop[0] = True
            self.stopped_at = time.monotonic()
            callbacks, self._on_stop = self._on_stop, []
        for cb in callbacks:
            cb()
        return True


class BatchSizer:
    """Picks how many items a worker takes at once.

    Batches amortise the fixed cost of a hand-off (a lock round trip for threads, a
    message to a worker process) over their items, but a batch also delays its
    items and can leave workers idle at the end. The sizer aims for batches of about
    ``target_s`` seconds of work (and ``target_bytes`` for process stages), starting
    at one item and growing at most fourfold per observation.
    """

    def __init__(
        self, target_s: float, max_items: int, target_bytes: int = 0, fixed: int | None = None
    ) -> None:
        self.target_s = target_s
        self.max_items = max(1, max_items if fixed is None else fixed)
        self.target_bytes = target_bytes
        self.fixed = fixed
        self.size = 1 if fixed is None else fixed
        self._per_item: float | None = None
        self._bytes_per_item: float | None = None

    def observe(self, n: int, seconds: float, nbytes: int = 0) -> None:
        if n <= 0 or self.fixed is not None:
            return
        per = max(seconds / n, 1e-9)
        prev = self._per_item
        self._per_item = per if prev is None else 0.6 * prev + 0.4 * per
        want = self.target_s / self._per_item
        if nbytes and self.target_bytes:
            bpi = nbytes / n
            pb = self._bytes_per_item
            self._bytes_per_item = bpi if pb is None else 0.6 * pb + 0.4 * bpi
            want = min(want, self.target_bytes / self._bytes_per_item)
        self.size = max(1, min(int(want), self.max_items, self.size * 4))


class StageRuntime:
    """A stage while it runs; see the module docstring for the data flow."""

    def __init__(
        self,
        spec: StageSpec,
        index: int,
        inbox: MemoryChannel[Any] | None,
        outbox: MemoryChannel[Any] | None,
        control: RunControl,
        sizer: BatchSizer,
        *,
        auto_inbox: bool,
        auto_outbox: bool,
        depth: int,
        on_finished: Callable[[], None],
    ) -> None:
        self.spec = spec
        self.decision = ""  # kind="auto": the kind chosen and why ("process: cpu 97%, ...")
        self.name = spec.name
        self.index = index
        self.inbox = inbox
        self.outbox = outbox
        self.control = control
        self.sizer = sizer
        self.ordered = spec.ordered and outbox is not None
        self.depth = depth
        self._auto_inbox = auto_inbox
        self._auto_outbox = auto_outbox
        self.window = max(4, 2 * spec.workers * depth)
        self.slots: list[WorkerSlot] = []
        self._take_lock = threading.Lock()
        # _cond guards the sequencer: _next_take, _next_emit, _pending, _emitting, _live.
        self._cond = threading.Condition(threading.Lock())
        self._next_take = 0
        self._next_emit = 0
        self._pending: dict[int, list[Any]] = {}
        self._emitting = False
        self._live = spec.workers
        self._waiters = 0  # threads waiting on _cond (no notify when there are none)
        self._on_finished = on_finished
        control.on_stop(self._wake_all)

    @property
    def stop(self) -> list[bool]:
        return self.control.stop

    @property
    def policy(self) -> StagePolicy:
        return self.spec.policy

    def item_failed(
        self, slot: WorkerSlot, item: Any, error: BaseException, tb: str, attempts: int
    ) -> None:
        """An item failed for good (after its retries): record it, then stop the run
        (on_error="raise") or go on. ``error`` is the function's own exception, or a
        WorkerCrashed or ItemTimeout (these are errors of the run already)."""
        slot.failed += 1
        failure = Failure(self.name, item, error, tb, attempts, slot.name)
        self.control.record(failure)
        on_error = self.spec.policy.on_error
        if on_error == "skip":
            return
        if callable(on_error):
            try:
                on_error(failure)
                return
            except BaseException as exc:
                error, tb = exc, describe_exception(exc)
        if isinstance(error, PipelineError):
            self.control.fail(error)
        else:
            self.control.fail(StageError(self.name, slot.name, item_repr(item), error, tb))

    def fail(self, error: BaseException) -> None:
        self.control.fail(error)

    def choose(self, kind: str, decision: str, sizing: tuple[float, int, int, int]) -> None:
        """kind="auto" chose ``kind`` for this stage (its workers turn into it now)."""
        target_s, max_items, target_bytes, depth = sizing
        with self._cond:
            self.spec = dataclasses.replace(self.spec, kind=kind)
            self.decision = decision
            sizer = self.sizer
            if sizer.fixed is None:
                sizer.target_s, sizer.target_bytes = target_s, target_bytes
                sizer.max_items = max_items
            self.depth = depth
            self.window = max(4, 2 * self.spec.workers * depth)

    # -- sizing -------------------------------------------------------------

    def batch_size(self) -> int:
        size = self.sizer.size
        if not self._auto_inbox and self.inbox is not None and self.sizer.fixed is None:
            size = min(size, max(1, self.inbox.maxsize // max(1, self.spec.workers)))
        return size

    def observe(self, n: int, seconds: float, nbytes: int = 0) -> None:
        before = self.sizer.size
        self.sizer.observe(n, seconds, nbytes)
        size = self.sizer.size
        if size > before:
            want = min(AUTO_CAPACITY_CAP, (self.depth + 1) * self.spec.workers * size)
            if self._auto_inbox and self.inbox is not None and want > self.inbox.maxsize:
                self.inbox._set_maxsize(want)
            if self._auto_outbox and self.outbox is not None and 2 * size > self.outbox.maxsize:
                self.outbox._set_maxsize(min(AUTO_CAPACITY_CAP, 2 * size))

    # -- taking input -------------------------------------------------------

    def take(self, slot: WorkerSlot, report: bool = True) -> tuple[int, list[Any]] | None:
        """The next batch and its sequence number; None once the input is exhausted.
        The batch is a list, or a slice of a range source: read it, never change it.

        ``report``: show the wait in the worker's state (a process worker's feeder
        reports in ``feeder_state``: its collector owns ``state``).
        """
        inbox = self.inbox
        assert inbox is not None
        waited = False
        if self.ordered and self._next_take - self._next_emit >= self.window:
            # Wait for the reorder window before queueing for the take lock, so that
            # every worker held back by the window shows it. Takers that pass together
            # can overshoot the window by at most one batch each.
            with self._cond:
                while self._next_take - self._next_emit >= self.window:
                    if self.control.stopping:
                        raise Stopping
                    self._show(slot, report, "blocked")  # the output is full
                    waited = True
                    self._wait()
        if waited or not inbox.qsize():  # it may wait for input: show it
            self._show(slot, report, "idle")
        with self._take_lock:
            try:
                items = inbox.get_many(self.batch_size())
            except Closed:
                return None
            seq = self._next_take
            self._next_take = seq + 1
        slot.items_in += len(items)
        return seq, items

    @staticmethod
    def _show(slot: WorkerSlot, report: bool, state: str) -> None:
        if report:
            slot.set_state(state)
        else:
            slot.feeder_state = state

    def _wait(self) -> None:
        """Wait on _cond (held by the caller)."""
        self._waiters += 1
        try:
            self._cond.wait()
        finally:
            self._waiters -= 1

    # -- emitting output ----------------------------------------------------

    def partial(self, seq: int, chunk: list[Any], slot: WorkerSlot) -> None:
        """Streamed output of batch ``seq``, which is still running."""
        if not chunk:
            return
        slot.items_out += len(chunk)
        outbox = self.outbox
        if outbox is None:
            return
        if not self.ordered:
            self._put(chunk, slot)
            return
        with self._cond:
            while self._emitting or seq != self._next_emit:
                if self.control.stopping:
                    raise Stopping
                slot.set_state("blocked")
                self._wait()
            self._emitting = True
        try:
            self._put(chunk, slot)
        finally:
            self._release_token(slot)

    def complete(self, seq: int, rest: list[Any], slot: WorkerSlot) -> None:
        """The rest of batch ``seq``, which has finished."""
        slot.items_out += len(rest)
        if self.outbox is None:
            return
        if not self.ordered:
            if rest:
                self._put(rest, slot)
            return
        with self._cond:
            if self._emitting or seq != self._next_emit:
                self._pending[seq] = rest
                return
            self._emitting = True  # the token, and this batch is the one due
        self._release_token(slot, rest)

    def _release_token(self, slot: WorkerSlot, chunk: list[Any] | None = None) -> None:
        """Emit whatever is due, then give the token back (caller holds it). ``chunk``:
        the output of the batch due, which the caller has (None: look in pending)."""
        cond = self._cond
        if chunk is None:
            with cond:
                chunk = self._pending.pop(self._next_emit, None)
                if chunk is None:
                    self._emitting = False
                    if self._waiters:
                        cond.notify_all()
                    return
        while True:
            try:
                if chunk:
                    self._put(chunk, slot)
            except BaseException:
                with cond:
                    self._emitting = False
                    cond.notify_all()
                raise
            with cond:
                self._next_emit += 1
                if self._waiters:
                    cond.notify_all()
                chunk = self._pending.pop(self._next_emit, None)
                if chunk is None:
                    self._emitting = False
                    return

    def _put(self, chunk: list[Any], slot: WorkerSlot) -> None:
        outbox = self.outbox
        assert outbox is not None
        if self.ordered and outbox.maxsize - outbox.qsize() >= len(chunk):
            # only the token holder puts, and takers only make room: it will not wait
            outbox._put_list(chunk)
            return
        prev = slot.state
        slot.set_state("blocked")
        outbox._put_list(chunk)  # waits for room for a good part of the chunk at a time
        slot.set_state(prev)

    # -- lifecycle ----------------------------------------------------------

    def add_worker(self, slot: WorkerSlot) -> None:
        """A worker joins the stage while it runs (it replaces an abandoned one)."""
        with self._cond:
            self._live += 1
            self.slots.append(slot)

    def worker_done(self) -> None:
        """A worker left (input exhausted, or the run stopping). The last one closes
        the outbox, unless the run is stopping (then the outbox has failed anyway)."""
        with self._cond:
            self._live -= 1
            last = self._live == 0
        if last:
            if self.outbox is not None and not self.control.stopping:
                self.outbox.close()
            self._on_finished()

    def _wake_all(self) -> None:
        with self._cond:
            self._cond.notify_all()
