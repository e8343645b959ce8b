"""Frozen records that describe a run: ``run.stats()`` and ``run.workers()``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["Failure", "RunStats", "StageStats", "StalledWorker", "WorkerStatus"]


@dataclass(frozen=True)
class Failure:
    """An item that failed for good (``run.failures``), after its retries."""

    stage: str
    item: Any
    """The object the stage received (not a copy of its repr)."""
    error: BaseException
    """What went wrong: the function's exception, WorkerCrashed, or ItemTimeout."""
    traceback: str
    """The worker's traceback text (for a thread past its timeout: its stack then)."""
    attempts: int
    """How many times the item was tried."""
    worker: str

    def __repr__(self) -> str:
        from .._errors import item_repr

        return (
            f"Failure(stage={self.stage!r}, item={item_repr(self.item)}, "
            f"error={self.error!r}, attempts={self.attempts}, worker={self.worker!r})"
        )


@dataclass(frozen=True)
class WorkerStatus:
    """One worker, as ``run.workers()`` reports it (the seed's ``Thread`` attributes)."""

    name: str
    stage: str
    index: int
    kind: str
    pid: int | None
    thread_id: int | None
    """Native thread id; for a process worker, the id of its main thread (its pid)."""
    alive: bool
    state: str
    """starting, idle (waiting for input), busy, blocked (waiting for room downstream,
    or for slower batches ahead of it to leave in order), stopping, or done. A process
    worker is busy from the moment a batch is handed to it until its results are back."""
    state_seconds: float
    """How long it has been in that state."""
    items_done: int
    """Items it processed without failing."""
    abandoned: bool = False
    """A thread still running user code after the run stopped without it."""
    decision: str = ""
    """Why the worker runs on its kind, when conveyor chose it (see StageStats.decision)."""


@dataclass(frozen=True)
class StalledWorker:
    """One worker in a stall report (``Stalled.workers``, ``StallWarning.workers``)."""

    name: str
    stage: str
    kind: str
    pid: int | None
    thread_id: int | None
    """Native thread id; for a process worker, its pid."""
    state: str
    """As in :class:`WorkerStatus`: idle, busy, blocked, starting, stopping, ..."""
    state_seconds: float
    """How long it had been in that state."""
    item: str | None
    """The item it was on (its repr, cut), or a description of its batch; None if it
    held none."""
    waiting_for: str
    """What it waits for, when conveyor can tell: a channel (whose input or output,
    full or empty), the reorder window, or a ``conveyor.sync`` lock and its holder;
    "" otherwise (a plain ``threading`` lock, a socket: see ``stack``)."""
    stack: str
    """Its Python stack, most recent call last (from a worker process too), without
    conveyor's own frames before the stage's code."""


@dataclass(frozen=True)
class StageStats:
    """Counters of one stage."""

    name: str
    kind: str
    workers: int
    items_in: int
    """Items taken from the stage's input."""
    items_out: int
    """Items passed on (for a sink: items consumed)."""
    failed: int
    """Items that failed for good (see ``run.failures``)."""
    busy_seconds: float
    """Time the workers spent running the stage's function, summed over workers."""
    queue_size: int
    """Items waiting in the stage's input now."""
    queue_maxsize: int
    elapsed_seconds: float
    retried: int = 0
    """Re-runs: retries after an exception, and deliveries again after a worker died or
    timed out."""
    restarts: int = 0
    """Workers replaced (a worker process that died or was killed for a timeout, a
    thread worker abandoned past its timeout)."""
    duplicates: int = 0
    """Outputs passed on twice: outputs a worker had streamed before it died, which its
    items' second delivery produced again (at-least-once, only for crashed workers)."""
    decision: str = ""
    """For a stage given no ``kind``: the kind conveyor chose and why, for example
    ``"process: cpu 97%, gil held (...), 480 us/item vs 6 us to send"``; empty while
    it is still measuring (``kind`` is then ``"auto"``), and for an explicit kind."""

    @property
    def rate(self) -> float:
        """Items out per second since the run started."""
        return self.items_out / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    @property
    def utilization(self) -> float:
        """Share of the workers' time spent busy (1.0: every worker always busy)."""
        span = self.elapsed_seconds * self.workers
        return min(1.0, self.busy_seconds / span) if span > 0 else 0.0


@dataclass(frozen=True)
class RunStats:
    """A snapshot of a run: its state and one :class:`StageStats` per stage."""

    name: str
    state: str
    """running, finished, failed, or cancelled."""
    elapsed_seconds: float
    stages: tuple[StageStats, ...]

    def __getitem__(self, stage: str) -> StageStats:
        for s in self.stages:
            if s.name == stage:
                return s
        raise KeyError(stage)

    def __iter__(self) -> Iterator[StageStats]:
        return iter(self.stages)

    @property
    def bottleneck(self) -> str | None:
        """The stage whose workers are the busiest (the one to give more workers)."""
        busy = [s for s in self.stages if s.name != "source" and s.busy_seconds > 0]
        return max(busy, key=lambda s: s.utilization).name if busy else None

    def render(self) -> str:
        """A plain-text table."""
        head = (
            f"{'stage':<16} {'kind':<7} {'wkr':>3} {'in':>10} {'out':>10} {'failed':>6} "
            f"{'busy s':>8} {'util':>5} {'queue':>11} {'out/s':>10}"
        )
        lines = [f"run {self.name!r}: {self.state} in {self.elapsed_seconds:.2f}s", head]
        lines.append("-" * len(head))
        for s in self.stages:
            queue = f"{s.queue_size}/{s.queue_maxsize}" if s.queue_maxsize else "-"
            lines.append(
                f"{s.name[:16]:<16} {s.kind:<7} {s.workers:>3} {s.items_in:>10,} "
                f"{s.items_out:>10,} {s.failed:>6} {s.busy_seconds:>8.2f} "
                f"{s.utilization:>5.0%} {queue:>11} {s.rate:>10,.0f}"
            )
        if self.bottleneck:
            lines.append(f"busiest stage: {self.bottleneck}")
        lines.extend(f"kind of {s.name}: {s.decision}" for s in self.stages if s.decision)
        return "\n".join(lines)
