"""conveyor's exceptions.

Our exception hierarchy::

    Exception
    ├── PipelineError            a run did not complete, or an item failed for good
    │   ├── StageError           a stage's function raised (names stage, worker, item)
    │   ├── WorkerCrashed        an item's deliveries killed its worker process too often
    │   ├── ItemTimeout          an item ran longer than its stage's timeout (also a
    │   │                        TimeoutError)
    │   ├── Stalled              no stage made progress for stall_timeout while items
    │   │                        were pending (the report: every worker and its stack)
    │   └── Cancelled            the run was cancelled (run.cancel(), Ctrl-C, SIGTERM)
    └── Closed                   a channel was closed: no put after close(), no get
                                 once it is closed and drained

Warnings: ``KindWarning`` (kind="auto" could not run a stage where it measured best)
and ``StallWarning`` (a stall, with ``on_stall="warn"``).

Invalid settings are reported before anything starts, as ``ValueError`` (a number
out of range) or ``TypeError`` (something of the wrong kind, such as a function that
cannot be sent to a process); each message says what to change.
"""

from __future__ import annotations

import reprlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "Cancelled",
    "Closed",
    "DeadlockError",
    "ItemTimeout",
    "KindWarning",
    "PipelineError",
    "RemoteError",
    "StageError",
    "StallWarning",
    "Stalled",
    "WorkerCrashed",
    "item_repr",
]

_repr = reprlib.Repr()
_repr.maxstring = 120
_repr.maxother = 120
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 8
_MAX_REPR = 200


def item_repr(item: object) -> str:
    """repr() of an item, cut to a length that fits in an error message."""
    try:
        text = _repr.repr(item)
    except Exception as exc:  # a broken __repr__ must not hide the real error
        text = f"<{type(item).__qualname__} object (repr failed: {type(exc).__name__})>"
    if len(text) > _MAX_REPR:
        text = text[: _MAX_REPR - 3] + "..."
    return text


class PipelineError(Exception):
    """Base class of the errors that end a run."""


class Cancelled(PipelineError):
    """The run was cancelled before it finished."""


class StageError(PipelineError):
    """A stage's function raised.

    ``stage`` and ``worker`` name where it happened, ``item`` is the repr of the item
    being processed (cut to a sane length), ``traceback`` the text of the worker's
    traceback (from a child process too), and ``__cause__`` the original exception.
    """

    def __init__(
        self,
        stage: str,
        worker: str,
        item: str | None,
        cause: BaseException,
        traceback: str = "",
    ) -> None:
        self.stage = stage
        self.worker = worker
        self.item = item
        self.traceback = traceback
        self.error = cause
        where = f"stage {stage!r} (worker {worker})"
        on = f" on item {item}" if item is not None else ""
        super().__init__(f"{where} failed{on}: {type(cause).__name__}: {cause}")
        self.__cause__ = cause

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.stage, self.worker, self.item, self.error, self.traceback))


class WorkerCrashed(PipelineError):
    """A worker process died (signal, ``os._exit``, out of memory) while it held items.

    ``item`` is the repr of the item it was processing when that is known (its batch
    held one item), else of the first item of the batch it held; ``held`` says how
    many items that batch had.
    """

    def __init__(
        self, stage: str, worker: str, item: str | None, exitcode: int | None, held: int = 1
    ) -> None:
        self.stage = stage
        self.worker = worker
        self.item = item
        self.exitcode = exitcode
        self.held = held
        if held == 0:
            what = " while starting (loading the stage, or in setup())"
        elif item is None:
            what = ""
        elif held == 1:
            what = f" while processing item {item}"
        else:
            what = f" while processing a batch of {held} items starting with {item}"
        super().__init__(
            f"worker {worker} of stage {stage!r} died ({describe_exit(exitcode)}){what}; "
            "a segfault in an extension, os._exit() or the out-of-memory killer "
            "are the usual causes"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.stage, self.worker, self.item, self.exitcode, self.held))


class ItemTimeout(PipelineError, TimeoutError):
    """An item ran longer than its stage's ``timeout``."""

    def __init__(self, stage: str, worker: str, item: str | None, timeout: float) -> None:
        self.stage = stage
        self.worker = worker
        self.item = item
        self.timeout = timeout
        super().__init__(
            f"item {item} of stage {stage!r} ran longer than timeout={timeout:g}s (worker {worker})"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.stage, self.worker, self.item, self.timeout))


class _StallReport(Exception):
    """What a stall report carries: the message, the workers, the setting exceeded."""

    def __init__(
        self, message: str, workers: Sequence[Any] = (), stall_timeout: float = 0.0
    ) -> None:
        super().__init__(message)
        self.workers = tuple(workers)
        self.stall_timeout = stall_timeout

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self), self.workers, self.stall_timeout))


class Stalled(_StallReport, PipelineError):
    """No stage made progress for ``stall_timeout`` seconds while items were pending
    (``run(stall_timeout=...)``), and the run was stopped.

    The message is the report: every worker's state, current item, what it waits for
    and its stack. ``workers`` holds the same as :class:`conveyor.StalledWorker`
    records; ``stall_timeout`` is the setting that was exceeded.
    """


class StallWarning(_StallReport, RuntimeWarning):
    """A stall, with ``run(on_stall="warn")``: emitted once per stall episode, and the
    run goes on. The message is the report; ``workers`` as :class:`Stalled`'s."""


def describe_exit(exitcode: int | None) -> str:
    import signal

    if exitcode is None:
        return "exit status unknown"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"killed by {name}"
    return f"exit code {exitcode}"


class Closed(Exception):
    """The channel is closed: ``put`` after ``close()``, or ``get`` once it is drained."""


class RemoteError(Exception):
    """Stands in for an exception from a worker process that could not be unpickled."""

    def __init__(self, type_name: str, message: str) -> None:
        self.type_name = type_name
        self.message = message
        super().__init__(f"{type_name}: {message}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.type_name, self.message))


class RemoteTraceback(Exception):
    """Carries a worker process's traceback text so that Python prints it."""

    def __init__(self, tb: str) -> None:
        self.tb = tb
        super().__init__(tb)

    def __str__(self) -> str:
        return "\n\nTraceback in the worker process:\n" + self.tb.rstrip("\n")


class KindWarning(UserWarning):
    """kind="auto" could not run a stage where it measured best (for example a function
    that cannot be sent to a process runs on threads); the message says why."""


class DeadlockError(RuntimeError):
    """Acquiring a ``conveyor.sync`` lock would wait for ever: the threads in
    ``cycle_threads`` (idents) each wait for a lock the next one holds. The message
    spells the cycle out and carries every involved thread's stack."""

    def __init__(self, message: str, cycle_threads: list[int] | None = None) -> None:
        super().__init__(message)
        self.cycle_threads = cycle_threads or []
