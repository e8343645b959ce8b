"""Who am I: the worker identity that stage code can ask for with ``current_worker()``.

Thread workers keep it in a thread-local; a worker process has exactly one worker,
so it keeps it in a module global set once at start-up; asyncio workers share one
thread, so each keeps it in a context variable of its own task (which the tasks and
``asyncio.to_thread`` calls it starts inherit).
"""

from __future__ import annotations

import threading
from contextvars import ContextVar
from dataclasses import dataclass

__all__ = ["WorkerInfo", "current_worker", "set_current_worker"]


@dataclass(frozen=True)
class WorkerInfo:
    """The identity of a worker: ``name`` such as ``parse-1``, its stage, index and kind."""

    name: str
    stage: str
    index: int
    """1-based position of the worker within its stage."""
    kind: str
    """``"thread"``, ``"process"`` or ``"asyncio"``."""


_local = threading.local()
_process_worker: WorkerInfo | None = None
_task_worker: ContextVar[WorkerInfo | None] = ContextVar("conveyor_worker", default=None)


def set_current_worker(
    info: WorkerInfo | None, *, whole_process: bool = False, in_context: bool = False
) -> None:
    """``in_context``: for the current contextvars context only (an asyncio task)."""
    global _process_worker
    if in_context:
        _task_worker.set(info)
    elif whole_process:
        _process_worker = info
    else:
        _local.info = info


def current_worker() -> WorkerInfo:
    """The worker running the calling code.

    Raises ``RuntimeError`` outside a conveyor worker (for example in the main thread).
    """
    info: WorkerInfo | None = _task_worker.get() or getattr(_local, "info", None) or _process_worker
    if info is None:
        raise RuntimeError(
            "current_worker() was called outside a conveyor worker; "
            "call it from a stage function (or from setup/process/teardown of a stage class)"
        )
    return info
