"""The worker-kind interface: how the engine starts and stops workers of any kind.

A worker kind (``_thread``, ``_process``, later asyncio and Ray) is one module that
ends with ``backend_class = <its WorkerKind subclass>``; the engine loads it with
:func:`load_kind` and talks to it only through :class:`WorkerKind` and
:class:`WorkerHandle`. Workers talk back only through :class:`StageFeed`: they take
batches, hand back output, report their timings, and fail the run.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from ._apply import Abort

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from .._stage import StagePolicy, StageSpec

__all__ = [
    "StageFeed",
    "Stopping",
    "ThreadHandle",
    "WorkerHandle",
    "WorkerKind",
    "WorkerSlot",
    "load_kind",
]


class Stopping(Abort):
    """Raised inside a run's own channels and waits once the run is stopping."""


@dataclass
class WorkerSlot:
    """A worker's live record. Only its own worker writes it; readers take snapshots."""

    name: str
    stage: str
    index: int
    kind: str
    pid: int | None = None
    thread_id: int | None = None
    alive: bool = False
    state: str = "starting"  # starting, idle, busy, blocked, stopping, done
    state_since: float = 0.0
    items_in: int = 0
    items_out: int = 0
    items_done: int = 0
    failed: int = 0
    busy_s: float = 0.0
    retried: int = 0
    restarts: int = 0
    replaced_at: float = 0.0
    """monotonic() when its latest replacement was ready."""
    duplicates: int = 0
    abandoned: bool = False
    item_index: int = -1
    """Index in its batch of the item being processed, when the stage has a timeout."""
    item_started: float = 0.0
    """monotonic() when that item started; 0 between items."""
    feeder_state: str = ""
    """What a process worker's feeder thread waits for (its collector writes ``state``)."""

    @property
    def effective_state(self) -> str:
        if self.state == "idle" and self.feeder_state == "blocked":
            return "blocked"  # nothing in flight because the reorder window is full
        return self.state

    def seconds_in_state(self, now: float) -> float:
        """How long it has been in its state at ``now`` (``time.monotonic()``)."""
        return max(0.0, now - self.state_since) if self.state_since else 0.0

    def set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.state_since = time.monotonic()


class StageFeed(Protocol):
    """What a worker sees of its stage (implemented by the engine's StageRuntime)."""

    name: str
    spec: StageSpec
    depth: int
    """How many batches a worker may hold at once (process workers pipeline them)."""

    @property
    def stop(self) -> list[bool]: ...

    @property
    def policy(self) -> StagePolicy: ...

    def take(self, slot: WorkerSlot, report: bool = True) -> tuple[int, list[Any]] | None: ...

    def partial(self, seq: int, chunk: list[Any], slot: WorkerSlot) -> None: ...

    def complete(self, seq: int, rest: list[Any], slot: WorkerSlot) -> None: ...

    def observe(self, n: int, seconds: float, nbytes: int = 0) -> None: ...

    def fail(self, error: BaseException) -> None: ...

    def item_failed(
        self, slot: WorkerSlot, item: Any, error: BaseException, tb: str, attempts: int
    ) -> None: ...

    def worker_done(self) -> None: ...

    def add_worker(self, slot: WorkerSlot) -> None: ...


class WorkerHandle(ABC):
    """One running worker, as the engine holds it."""

    slot: WorkerSlot

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def join(self, timeout: float | None = None) -> bool:
        """Wait for the worker to end; True if it did."""

    @abstractmethod
    def kill(self) -> None:
        """Stop the worker now, without waiting for its current item (a process is
        killed; a thread cannot be, so it is abandoned and named in the report)."""

    @abstractmethod
    def thread_alive(self) -> bool:
        """Whether the worker's thread in this process is still running."""

    def check_timeout(self, now: float, timeout: float) -> None:  # noqa: B027 (optional)
        """Called by the run's watchdog when the stage has a timeout: act on an item
        that has run for longer than ``timeout`` seconds."""

    # -- for the stall watchdog's report (see ``_engine._stall``) -----------------

    def ask_stack(self) -> None:  # noqa: B027 (optional)
        """Start taking the worker's stack, for :meth:`stack` to read (a worker process
        dumps its own on a signal: the watchdog asks every worker first, then reads)."""

    def stack(self, deadline: float) -> str:
        """The worker's stack, as a traceback's lines ("" when it cannot be known);
        waits at most until ``deadline`` (``time.monotonic()``)."""
        return ""

    def thread_ident(self) -> int | None:
        """``threading`` ident of the thread of this process that runs the stage's code
        (None for a worker process), for ``conveyor.sync.blocked_on``."""
        return None

    def sync_waits(self) -> str:
        """What the threads of a worker process wait for in ``conveyor.sync`` ("" for
        a thread worker: the engine asks ``conveyor.sync.blocked_on`` itself)."""
        return ""

    def holding(self) -> tuple[Sequence[Any], int] | None:
        """The batch the worker is processing and the index in it of the current item
        (-1 when not tracked), or None when it holds no batch."""
        return None


class ThreadHandle(WorkerHandle):
    """A worker driven by one thread of this process (``self.thread``): a thread
    worker, a process worker's collector, the source feeder."""

    thread: threading.Thread

    def start(self) -> None:
        self.slot.alive = True
        self.thread.start()

    def join(self, timeout: float | None = None) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def thread_alive(self) -> bool:
        return self.thread.is_alive()

    def kill(self) -> None:
        if self.thread.is_alive():
            self.slot.abandoned = True

    def thread_ident(self) -> int | None:
        return self.thread.ident

    def stack(self, deadline: float) -> str:
        from ._stacks import format_frames, thread_frames, trim  # only for a stall report

        return format_frames(trim(thread_frames(self.thread.ident)))


class WorkerKind(ABC):
    """Starts the workers of one kind for one run."""

    kind: ClassVar[str]

    def __init__(
        self, stop: list[bool], adopt: Callable[[WorkerHandle], None] | None = None
    ) -> None:
        self.stop = stop
        self.adopt = adopt
        """Hands a worker started during the run (a replacement) to the engine."""

    @abstractmethod
    def worker(self, feed: StageFeed, slot: WorkerSlot) -> WorkerHandle: ...

    def on_stop(self) -> None:  # noqa: B027 (optional hook)
        """The run is stopping (called once, from any thread)."""

    def close(self) -> None:  # noqa: B027 (optional hook)
        """The run is over and every worker of this kind has ended."""


_loaded: dict[str, type[WorkerKind]] = {}
_load_lock = threading.Lock()


def load_kind(kind: str) -> type[WorkerKind]:
    with _load_lock:
        cls = _loaded.get(kind)
        if cls is None:
            module = import_module(f"conveyor._workers._{kind}")
            cls = _loaded[kind] = module.backend_class
        return cls
