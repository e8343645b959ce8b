"""Thread workers: each worker is a daemon thread of the main process running the stage.

Daemon, so that a worker stuck in user code can be abandoned when a run stops
(threads cannot be killed) without keeping the interpreter alive.
"""

from __future__ import annotations

import os
import threading
from time import perf_counter
from typing import Any

from .._errors import StageError, item_repr
from ._apply import ItemFailed, Processor, describe_exception
from ._base import StageFeed, Stopping, ThreadHandle, WorkerHandle, WorkerKind, WorkerSlot
from ._context import WorkerInfo, set_current_worker

__all__ = ["ThreadKind", "backend_class", "run_stage_loop"]


def run_stage_loop(feed: StageFeed, slot: WorkerSlot, proc: Processor) -> None:
    """Take batches and apply the stage until the input is exhausted or the run stops."""
    stop = feed.stop
    while not stop[0]:
        got = feed.take(slot)
        if got is None:
            return
        seq, items = got
        slot.set_state("busy")
        t0 = perf_counter()

        def emit(chunk: list[Any], seq: int = seq) -> None:
            feed.partial(seq, chunk, slot)

        try:
            rest, done = proc.apply(items, emit)
        except ItemFailed as f:
            slot.failed += 1
            slot.items_done += f.index
            feed.fail(
                StageError(feed.name, slot.name, item_repr(items[f.index]), f.error, f.traceback)
            )
            return
        dt = perf_counter() - t0
        slot.busy_s += dt
        slot.items_done += done
        feed.observe(done, dt)
        if stop[0]:
            return
        feed.complete(seq, rest, slot)


class ThreadWorker(ThreadHandle):
    def __init__(self, feed: StageFeed, slot: WorkerSlot, stop: list[bool]) -> None:
        self.feed = feed
        self.slot = slot
        self.stop = stop
        self.thread = threading.Thread(target=self._run, name=slot.name, daemon=True)

    def _run(self) -> None:
        feed, slot = self.feed, self.slot
        slot.pid = os.getpid()
        slot.thread_id = threading.get_native_id()
        spec = feed.spec
        set_current_worker(WorkerInfo(slot.name, feed.name, slot.index, "thread"))
        proc = Processor(spec.op, spec.target, self.stop)
        try:
            try:
                proc.setup()
            except BaseException as exc:
                feed.fail(StageError(feed.name, slot.name, None, exc, describe_exception(exc)))
                return
            try:
                run_stage_loop(feed, slot, proc)
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
            slot.set_state("done")
            slot.alive = False
            feed.worker_done()


class ThreadKind(WorkerKind):
    kind = "thread"

    def worker(self, feed: StageFeed, slot: WorkerSlot) -> WorkerHandle:
        return ThreadWorker(feed, slot, self.stop)


backend_class = ThreadKind
