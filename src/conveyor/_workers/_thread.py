"""Thread workers: each worker is a daemon thread of the main process running the stage.

Daemon, so that a worker stuck in user code can be abandoned when a run stops
(threads cannot be killed) without keeping the interpreter alive.

Timeouts: a thread cannot be killed either, so a thread worker whose item runs past
the stage's timeout is abandoned instead: its own stop flag goes up (it does no
other item when, if ever, the stuck one returns, and passes nothing on), a new
worker thread takes over the rest of its batch, and the item counts as a failed
attempt, its traceback being the stuck thread's stack at that moment.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import traceback
from time import monotonic, perf_counter
from typing import TYPE_CHECKING, Any, Protocol

from .._errors import ItemTimeout, StageError, item_repr
from ._apply import ItemFailed, Processor, describe_exception
from ._base import StageFeed, Stopping, ThreadHandle, WorkerHandle, WorkerKind, WorkerSlot
from ._context import WorkerInfo, set_current_worker

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["ThreadKind", "backend_class"]


class _Takeover:
    """The rest of an abandoned worker's batch, for the worker that replaces it."""

    def __init__(
        self, seq: int, prefix: list[Any], items: list[Any], attempts: int, stack: str
    ) -> None:
        self.seq = seq
        self.prefix = prefix  # results of the items before the stuck one
        self.items = items  # the stuck item first, then the ones after it
        self.attempts = attempts  # attempts the stuck item has had, this one included
        self.stack = stack


class _SlotProgress:
    """Keeps the item being processed, and since when, in the worker's slot."""

    def __init__(self, slot: WorkerSlot) -> None:
        self.slot = slot
        self.attempt = 0

    def begin(self, index: int, attempt: int) -> None:
        slot = self.slot
        self.attempt = attempt
        slot.item_index = index
        slot.item_started = monotonic()

    def end(self) -> None:
        self.slot.item_started = 0.0


class Probe(Protocol):
    """Watches a thread worker's batches (kind="auto" measures a stage with it)."""

    def go_on(self) -> bool:
        """Before each batch: False hands the worker's slot over to another kind (the
        worker tears down and leaves without ending the slot)."""

    def before(self) -> object:
        """Just before a batch runs; what it returns goes to after()."""

    def after(self, token: object, items: list[Any], results: list[Any] | None) -> None:
        """Just after a batch ran (results None: it failed)."""


class ThreadWorker(ThreadHandle):
    def __init__(
        self,
        feed: StageFeed,
        slot: WorkerSlot,
        kind: ThreadKind,
        takeover: _Takeover | None,
        probe: Probe | None = None,
    ) -> None:
        self.feed = feed
        self.slot = slot
        self.kind = kind
        self.flag = kind.new_flag()  # this worker's stop flag: the run's, or abandoned
        self.takeover = takeover
        self.progress = _SlotProgress(slot) if feed.policy.timeout is not None else None
        self.thread = threading.Thread(target=self._run, name=slot.name, daemon=True)
        self._lock = threading.Lock()
        self._retired = False  # abandoned and replaced: the replacement counts for the stage
        self._proc: Processor | None = None
        self._batch: tuple[int, list[Any]] | None = None
        self.probe = probe
        self.handed_over = False  # left for another kind: the slot goes on without it

    def run_here(self) -> None:
        """Run the worker in the calling thread (which stands for ``self.thread``)."""
        self.thread = threading.current_thread()
        self.slot.alive = True
        self._run()

    def _run(self) -> None:
        feed, slot = self.feed, self.slot
        slot.pid = os.getpid()
        slot.thread_id = threading.get_native_id()
        spec = feed.spec
        set_current_worker(WorkerInfo(slot.name, feed.name, slot.index, "thread"))
        proc = Processor(
            spec.op, spec.target, self.flag, policy=spec.policy.item_policy, progress=self.progress
        )
        self._proc = proc
        try:
            try:
                proc.setup()
            except BaseException as exc:
                feed.fail(StageError(feed.name, slot.name, None, exc, describe_exception(exc)))
                return
            try:
                if self.takeover is not None:
                    self._take_over(proc, self.takeover)
                self._loop(proc)
            except Stopping:
                pass
            finally:
                slot.set_state("stopping")
                try:
                    proc.teardown()
                except BaseException as exc:
                    feed.fail(StageError(feed.name, slot.name, None, exc, describe_exception(exc)))
        except Stopping:
            pass
        except BaseException as exc:  # a bug of ours: never let it pass silently
            feed.fail(exc)
        finally:
            set_current_worker(None)
            with self._lock:
                retired = self._retired
                slot.set_state("done")
                slot.alive = False
            if not retired and not self.handed_over:
                feed.worker_done()

    def _loop(self, proc: Processor) -> None:
        """Take batches and apply the stage until the input is exhausted or the run stops."""
        feed, slot, flag, probe = self.feed, self.slot, self.flag, self.probe
        while not flag[0]:
            if probe is not None and not probe.go_on():
                self.handed_over = True
                return
            got = feed.take(slot)
            if got is None:
                return
            seq, items = got
            slot.set_state("busy")
            self._batch = got
            if probe is None:
                results = self._apply(proc, seq, items)
            else:
                token = probe.before()
                results = self._apply(proc, seq, items)
                probe.after(token, items, results)
            if results is None or flag[0]:
                return
            feed.complete(seq, results, slot)

    def _apply(self, proc: Processor, seq: int, items: list[Any]) -> list[Any] | None:
        """Run the stage over a batch; None when the batch was given up (the run is
        stopping, or this worker was abandoned)."""
        feed, slot = self.feed, self.slot
        t0 = perf_counter()
        if proc.policy.careful:
            try:
                out = proc.apply_careful(items)
            except ItemFailed as f:
                if not slot.abandoned:
                    self._failed(items, f)
                return None
            if self.slot.abandoned:
                return None
            slot.retried += out.reruns
            for failure in out.failures:
                self._failed(items, failure)
            results, processed = out.results, out.done
            done = processed - len(out.failures)
        else:

            def emit(chunk: list[Any], seq: int = seq) -> None:
                feed.partial(seq, chunk, slot)

            try:
                results, done = proc.apply(items, emit)
                processed = done
            except ItemFailed as f:
                slot.items_done += f.index
                self._failed(items, f)
                return None
        dt = perf_counter() - t0
        slot.busy_s += dt
        slot.items_done += done  # items that succeeded
        feed.observe(processed, dt)
        return results

    def _failed(self, items: list[Any], f: ItemFailed) -> None:
        self.feed.item_failed(self.slot, items[f.index], f.error, f.traceback, f.attempts)

    def _take_over(self, proc: Processor, job: _Takeover) -> None:
        """Finish the batch of the worker this one replaces: the stuck item (again, if
        its retries allow), then the items after it."""
        feed, slot = self.feed, self.slot
        policy = feed.policy
        stuck, rest = job.items[0], job.items[1:]
        results = list(job.prefix)
        if job.attempts > policy.retries:
            error = ItemTimeout(feed.name, slot.name, item_repr(stuck), policy.timeout or 0.0)
            feed.item_failed(slot, stuck, error, job.stack, job.attempts)
            if feed.stop[0]:
                raise Stopping
        else:
            rest = job.items
            slot.retried += 1
            proc._pause(policy.backoff * 2 ** (job.attempts - 1))
        if rest:
            got = self._apply(proc, job.seq, rest)
            if got is None:
                return
            results.extend(got)
        if not self.flag[0]:
            feed.complete(job.seq, results, slot)

    def holding(self) -> tuple[list[Any], int] | None:
        slot, batch = self.slot, self._batch
        if batch is None or slot.state != "busy":
            return None
        return batch[1], (slot.item_index if slot.item_started else -1)

    def check_timeout(self, now: float, timeout: float) -> None:
        """Called by the run's watchdog: abandon this worker if its current item has run
        past the stage's timeout, and start a worker that takes over its batch."""
        slot, proc, batch, progress = self.slot, self._proc, self._batch, self.progress
        started = slot.item_started
        if not started or now - started <= timeout or proc is None or progress is None:
            return
        with self._lock:
            if slot.abandoned or not slot.alive or batch is None:
                return
            slot.abandoned = True
            self.flag[0] = True
            index = slot.item_index
            out, sizes = proc.current_out, proc.current_sizes
            seq, items = batch
            prefix = out[: sum(sizes[:index])]
            frame = sys._current_frames().get(self.thread.ident or -1)
            stack = "".join(traceback.format_stack(frame)) if frame is not None else ""
            job = _Takeover(seq, prefix, items[index:], progress.attempt, stack)
            slot.restarts += 1
            self.kind.replace(self, job)
            self._retired = True
        self.feed.worker_done()  # the replacement counts for the stage from now on


class ThreadKind(WorkerKind):
    kind = "thread"

    def __init__(
        self, stop: list[bool], adopt: Callable[[WorkerHandle], None] | None = None
    ) -> None:
        super().__init__(stop, adopt)
        self._flags: list[list[bool]] = []
        self._flags_lock = threading.Lock()
        self._generations: dict[str, itertools.count[int]] = {}

    def new_flag(self) -> list[bool]:
        flag = [self.stop[0]]
        with self._flags_lock:
            self._flags.append(flag)
        return flag

    def on_stop(self) -> None:
        with self._flags_lock:
            for flag in self._flags:
                flag[0] = True

    def worker(self, feed: StageFeed, slot: WorkerSlot) -> WorkerHandle:
        return ThreadWorker(feed, slot, self, None)

    def replace(self, old: ThreadWorker, job: _Takeover) -> None:
        """Start a worker that takes over from ``old``, named ``<stage>-<index>.<n>``."""
        feed, slot = old.feed, old.slot
        gen = self._generations.setdefault(slot.name, itertools.count(2))
        base = slot.name.split(".")[0]
        new_slot = WorkerSlot(f"{base}.{next(gen)}", slot.stage, slot.index, "thread")
        feed.add_worker(new_slot)
        handle = ThreadWorker(feed, new_slot, self, job)
        assert self.adopt is not None
        self.adopt(handle)


backend_class = ThreadKind
