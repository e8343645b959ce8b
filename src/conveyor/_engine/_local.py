"""The local engine: runs a pipeline on threads and processes of this machine.

Shape of a run::

    source feeder ─▶ inbox[0] ─▶ stage 0 workers ─▶ inbox[1] ─▶ ... ─▶ output ─▶ Run.__iter__
    (a thread reading          (StageRuntime: ordered hand-off,          (or a sink: no output)
     the iterable)              bounded channels, any worker kind)

A supervisor thread per run waits for one of two things: every stage finished
(the normal end: it joins the workers), or the run stopping (an error, cancel(),
Ctrl-C, SIGTERM: it fails every channel so that no worker stays blocked, gives the
workers ``grace`` seconds to finish their current item, then kills worker
processes and abandons threads still running user code). Either way it releases
the run's resources and sets ``done``; ``done`` means every worker has ended or
been given up on.

Watchdogs, each a thread of its own and only when asked for: the timeout watchdog
(stages with ``timeout=``) and the stall watchdog (``stall_timeout=``, see
``_stall``).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from typing import TYPE_CHECKING, Any, cast

from .._channels._memory import MemoryChannel
from .._errors import Cancelled, StageError
from .._gil import Decision, static_choice
from .._observe._stats import RunStats, StageStats, WorkerStatus
from .._workers._apply import describe_exception, stream_into
from .._workers._base import (
    StageFeed,
    Stopping,
    ThreadHandle,
    WorkerHandle,
    WorkerKind,
    WorkerSlot,
    load_kind,
)
from ._runtime import AUTO_CAPACITY_CAP, BatchSizer, RunControl, StageRuntime

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .._stage import SourceSpec, StageSpec

__all__ = ["LocalRun"]


def _resolve_static_choices(
    stages: Sequence[StageSpec],
) -> tuple[list[StageSpec], dict[str, str]]:
    """kind="auto" stages whose kind needs no measuring get it now (see ``_gil``)."""
    out, decisions = [], {}
    for spec in stages:
        if spec.kind == "auto":
            decision = static_choice(spec.target, spec.is_async, spec.unsendable, spec.workers)
            if decision is not None:
                spec = dataclasses.replace(spec, kind=decision.kind)
                decisions[spec.name] = str(decision)
        out.append(spec)
    return out, decisions


# Per worker kind: (seconds of work a batch aims for, most items in a batch,
# most bytes in a batch, batches a worker may hold at once).
SIZING = {
    "thread": (0.002, 256, 0, 1),
    "process": (0.01, 32768, 4 << 20, 2),
    "asyncio": (0.002, 256, 0, 1),
    # an auto stage starts on a measured thread, in batches long enough that the GIL
    # canary rarely sees a batch boundary (where the engine's locks let the GIL go)
    "auto": (0.02, 4096, 0, 1),
}
SOURCE_CHUNK = 1024
OUTPUT_INITIAL = 64


class _SourceFeeder(ThreadHandle):
    """Reads the pipeline's iterable source into the first stage's input."""

    def __init__(self, run: LocalRun, spec: SourceSpec, out: MemoryChannel[Any]) -> None:
        self.run = run
        self.spec = spec
        self.out = out
        self.slot = WorkerSlot(f"{spec.name}-1", spec.name, 1, "thread")
        self.thread = threading.Thread(target=self._run, name=self.slot.name, daemon=True)

    def _emit(self, chunk: Sequence[Any]) -> None:
        slot = self.slot
        slot.set_state("blocked")
        self.out._put_list(cast("list[Any]", chunk))  # the channel keeps chunks as they are
        slot.items_out += len(chunk)
        slot.items_done += len(chunk)
        slot.set_state("busy")

    def _chunk_size(self) -> int:
        # never hold more items than the first stage may queue: read-ahead stays small
        return max(1, min(SOURCE_CHUNK, self.out.maxsize))

    def _slice_size(self) -> int:
        """Items per chunk of a list, tuple or range: they cost nothing to read ahead,
        so as the first stage's input grows (its batches grow), so do its chunks (a
        quarter of it), and a large batch is taken in one piece."""
        return max(1, min(max(SOURCE_CHUNK, self.out.maxsize // 4), self.out.maxsize))

    def _range_size(self) -> int:
        """Items per chunk of a range that feeds a process stage: a batch's worth. The
        chunk stays a range (the channel keeps chunks as they come), a batch is taken
        as one chunk, and its pickle is a few bytes: neither this process nor the
        worker makes a list of the items."""
        return max(1, min(self.run._stages[0].batch_size(), self.out.maxsize))

    def _run(self) -> None:
        slot, stop = self.slot, self.run.control.stop
        slot.pid = os.getpid()
        slot.thread_id = threading.get_native_id()
        slot.set_state("busy")
        iterable = self.spec.iterable
        try:
            if isinstance(iterable, range) and self.run._stages[0].spec.kind == "process":
                i, n = 0, len(iterable)
                while i < n and not stop[0]:
                    k = self._range_size()
                    self._emit(iterable[i : i + k])
                    i += k
            elif isinstance(iterable, (list, tuple, range)):
                i, n = 0, len(iterable)
                while i < n and not stop[0]:
                    k = self._slice_size()
                    self._emit(list(iterable[i : i + k]))
                    i += k
            else:
                rest = stream_into(iter(iterable), [], self._emit, stop, self._chunk_size)
                if rest and not stop[0]:
                    self._emit(rest)
            if not stop[0]:
                self.out.close()
        except Stopping:
            pass
        except BaseException as exc:
            self.run.control.fail(
                StageError(self.spec.name, slot.name, None, exc, describe_exception(exc))
            )
        finally:
            slot.set_state("done")
            slot.alive = False
            self.run._stage_finished()


class LocalRun:
    """The engine's side of one run."""

    def __init__(
        self,
        name: str,
        source: SourceSpec | None,
        stages: Sequence[StageSpec],
        *,
        grace: float = 2.0,
        stall_timeout: float | None = None,
        on_stall: str = "raise",
    ) -> None:
        self.name = name
        self.grace = grace
        self.stall_timeout = stall_timeout
        self.on_stall = on_stall
        self.control = RunControl()
        self.done = threading.Event()
        self.started_at = time.monotonic()
        self.ended_at: float | None = None
        self.finished_ok = False
        self._kinds: dict[str, WorkerKind] = {}
        self._channels: list[MemoryChannel[Any]] = []
        self._handles: list[WorkerHandle] = []
        self._stages: list[StageRuntime] = []
        self._source: _SourceFeeder | None = None
        self._wake = threading.Event()
        self._hurry = threading.Event()
        self._lock = threading.Lock()
        self._unfinished = len(stages) + (1 if source is not None else 0)
        self.control.on_stop(self._on_stop)

        stages, decisions = _resolve_static_choices(stages)
        inbox: MemoryChannel[Any] | None = self._first_inbox(source, stages[0])
        for i, spec in enumerate(stages):
            last = i == len(stages) - 1
            target_s, max_items, target_bytes, depth = SIZING[spec.kind]
            if spec.op == "produce":
                max_items = depth = 1  # one producer per worker, and one at a time
            if spec.is_sink:
                outbox = None
            elif last:
                outbox = self._channel(OUTPUT_INITIAL)
            else:
                nxt = stages[i + 1]
                outbox = self._channel(nxt.maxsize or self._auto_initial(nxt))
            rt = StageRuntime(
                spec,
                i,
                inbox,
                outbox,
                self.control,
                BatchSizer(target_s, max_items, target_bytes, fixed=spec.batch_size),
                auto_inbox=spec.maxsize is None and spec.op != "produce",
                # an auto-sized input also makes room for a whole batch of its upstream
                auto_outbox=outbox is not None and (last or stages[i + 1].maxsize is None),
                depth=depth,
                on_finished=self._stage_finished,
            )
            rt.decision = decisions.get(spec.name, "")
            self._stages.append(rt)
            inbox = outbox
        self.output: MemoryChannel[Any] | None = inbox

    # -- building ---------------------------------------------------------------

    def _channel(self, maxsize: int) -> MemoryChannel[Any]:
        ch: MemoryChannel[Any] = MemoryChannel(maxsize)
        self._channels.append(ch)
        return ch

    @staticmethod
    def _auto_initial(spec: StageSpec) -> int:
        depth = SIZING[spec.kind][3]
        if spec.batch_size is not None:  # room for a batch per worker and the next ones
            return min(AUTO_CAPACITY_CAP, (depth + 1) * spec.workers * spec.batch_size)
        return max(16, 2 * spec.workers * depth)

    def _first_inbox(self, source: SourceSpec | None, first: StageSpec) -> MemoryChannel[Any]:
        if first.op == "produce":
            inbox = self._channel(len(first.producers))
            inbox.put_many(first.producers)
            inbox.close()
            return inbox
        assert source is not None
        inbox = self._channel(first.maxsize or self._auto_initial(first))
        self._source = _SourceFeeder(self, source, inbox)
        return inbox

    def _kind(self, kind: str) -> WorkerKind:
        wk = self._kinds.get(kind)
        if wk is None:
            if kind == "auto":
                from .._workers._auto import AutoKind

                wk = AutoKind(self.control.stop, self._adopt, self._kind, self._decided)
            else:
                wk = load_kind(kind)(self.control.stop, self._adopt)
            self._kinds[kind] = wk
        return wk

    def _decided(self, feed: StageFeed, decision: Decision) -> None:
        """kind="auto" measured a stage and chose ``decision.kind``."""
        assert isinstance(feed, StageRuntime)
        feed.choose(decision.kind, str(decision), SIZING[decision.kind])
        if decision.kind == "process":
            from .._workers._zygote import Zygote

            Zygote.get()  # start the launcher, if it is not up yet

    # -- running ----------------------------------------------------------------

    def start(self) -> None:
        for rt in self._stages:
            kind = self._kind(rt.spec.kind)
            for i in range(1, rt.spec.workers + 1):
                slot = WorkerSlot(f"{rt.name}-{i}", rt.name, i, rt.spec.kind)
                rt.slots.append(slot)
                self._handles.append(kind.worker(rt, slot))
        if self._source is not None:
            self._handles.insert(0, self._source)
        for h in self._handles:
            h.start()
        # after the workers: a run that fails at once must not join unstarted threads
        threading.Thread(target=self._supervise, name=f"conveyor-{self.name}", daemon=True).start()
        timeouts = {
            rt.name: rt.spec.policy.timeout for rt in self._stages if rt.spec.policy.timeout
        }
        if timeouts:
            threading.Thread(
                target=self._watch,
                args=(timeouts,),
                name=f"conveyor-{self.name}-watchdog",
                daemon=True,
            ).start()
        if self.stall_timeout is not None:
            from ._stall import StallWatch

            StallWatch(self, self.stall_timeout, self.on_stall).start()

    def _adopt(self, handle: WorkerHandle) -> None:
        """A worker started while the run goes on (it replaces an abandoned one)."""
        with self._lock:
            self._handles.append(handle)
        handle.start()

    def handles(self) -> list[WorkerHandle]:
        with self._lock:
            return list(self._handles)

    def _watch(self, timeouts: dict[str, float]) -> None:
        """The timeout watchdog: looks at every worker of the stages that have a
        timeout, often enough to notice an item past it within a tenth of it."""
        interval = min(0.25, max(0.005, min(timeouts.values()) / 10))
        while not self.done.wait(interval):
            if self.control.stopping:
                return
            now = time.monotonic()
            for h in self.handles():
                timeout = timeouts.get(h.slot.stage)
                if timeout is not None and h.slot.alive and not h.slot.abandoned:
                    h.check_timeout(now, timeout)

    def _stage_finished(self) -> None:
        with self._lock:
            self._unfinished -= 1
            if self._unfinished == 0:
                self._wake.set()

    def _on_stop(self) -> None:
        for ch in self._channels:
            ch._fail(Stopping())
        for wk in list(self._kinds.values()):
            wk.on_stop()
        self._wake.set()

    def _supervise(self) -> None:
        try:
            self._wait_for_workers()
        finally:
            for wk in self._kinds.values():
                wk.close()
            self.ended_at = time.monotonic()
            self.done.set()

    def _wait_for_workers(self) -> None:
        self._wake.wait()
        with self._lock:
            # the normal end, unless a stop got in first: from now on, cancel() is too late
            self.finished_ok = self._unfinished == 0 and not self.control.stopping
            if self.finished_ok:
                self.control.finish()
        if self.finished_ok:
            for h in self.handles():
                if not h.slot.abandoned:  # abandoned past a timeout: never waited for
                    h.join()
        else:
            stopped_at = self.control.stopped_at or time.monotonic()
            deadline = stopped_at + self.grace
            # the workers finish their current item, until the grace period is over or
            # somebody insists (a second Ctrl-C)
            while any(h.thread_alive() for h in self.handles()):
                left = deadline - time.monotonic()
                if left <= 0 or self._hurry.wait(min(left, 0.02)):
                    break
            for h in self.handles():
                h.kill()  # processes die; threads still in user code are abandoned
            for h in self.handles():
                if not h.slot.abandoned:
                    h.join(30.0)

    def cancel(self) -> bool:
        return self.control.fail(Cancelled(f"run {self.name!r} was cancelled"))

    def hurry(self) -> None:
        """Stop now: no more grace for the workers' current items."""
        self.cancel()
        self._hurry.set()

    # -- reporting ----------------------------------------------------------------

    @property
    def state(self) -> str:
        if self.control.error is not None:
            return "cancelled" if isinstance(self.control.error, Cancelled) else "failed"
        if self.done.is_set() or self.finished_ok:
            return "finished"
        return "running"

    def elapsed(self) -> float:
        return (self.ended_at or time.monotonic()) - self.started_at

    def stats(self) -> RunStats:
        elapsed = self.elapsed()
        stages: list[StageStats] = []
        if self._source is not None:
            s = self._source.slot
            stages.append(StageStats(s.stage, "thread", 1, 0, s.items_out, 0, 0.0, 0, 0, elapsed))
        for rt in self._stages:
            slots = list(rt.slots)
            inbox = rt.inbox
            stages.append(
                StageStats(
                    name=rt.name,
                    kind=rt.spec.kind,
                    workers=rt.spec.workers,
                    items_in=sum(s.items_in for s in slots),
                    items_out=sum(
                        (s.items_done if rt.spec.is_sink else s.items_out) for s in slots
                    ),
                    failed=sum(s.failed for s in slots),
                    busy_seconds=sum(s.busy_s for s in slots),
                    queue_size=inbox.qsize() if inbox is not None else 0,
                    queue_maxsize=inbox.maxsize if inbox is not None else 0,
                    elapsed_seconds=elapsed,
                    retried=sum(s.retried for s in slots),
                    restarts=sum(s.restarts for s in slots),
                    duplicates=sum(s.duplicates for s in slots),
                    decision=rt.decision,
                )
            )
        return RunStats(self.name, self.state, elapsed, tuple(stages))

    def workers(self) -> list[WorkerStatus]:
        now = time.monotonic()
        decisions = {rt.name: rt.decision for rt in self._stages}
        out = []
        for h in self._handles:
            s = h.slot
            out.append(
                WorkerStatus(
                    name=s.name,
                    stage=s.stage,
                    index=s.index,
                    kind=s.kind,
                    pid=s.pid,
                    thread_id=s.thread_id,
                    alive=s.alive,
                    state=s.effective_state,
                    state_seconds=s.seconds_in_state(now),
                    items_done=s.items_done,
                    abandoned=s.abandoned,
                    decision=decisions.get(s.stage, ""),
                )
            )
        return out
