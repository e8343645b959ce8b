"""Locks that explain deadlocks (``conveyor.sync``).

``Lock`` and ``RLock`` are drop-in for ``threading.Lock`` and ``threading.RLock``,
inside pipelines or anywhere. They always track their owner, and when an acquire has
to wait, they look at the wait-for graph: thread T waits for lock L, which thread U
holds, which waits for lock M, ... If that chain comes back to T, waiting would be for
ever: the acquire raises :class:`conveyor.DeadlockError` instead, in the thread that
closed the cycle, with the cycle spelled out (who holds what, taken where, and waits
for what) and every involved thread's stack. The other threads of the cycle keep
waiting; once the raising thread lets its locks go (its ``with`` blocks unwind), they
go on.

Cheap when nobody waits: an uncontended acquire is the plain lock's plus one
attribute write. Only a blocking acquire without a timeout takes part in the graph:
a non-blocking or timed acquire cannot wait for ever. A waiter looks at the graph
again every ``RECHECK_S`` seconds, which catches a cycle whose last edge appeared
while an owner was being recorded.
"""

from __future__ import annotations

import sys
import threading
import traceback
from typing import TYPE_CHECKING, Any, cast

from .._errors import DeadlockError

if TYPE_CHECKING:
    from types import CodeType, FrameType, TracebackType

__all__ = ["Condition", "Lock", "RLock", "blocked_on"]

RECHECK_S = 0.05

_graph = threading.Lock()  # guards _waiting and the cycle check
_waiting: dict[int, _Tracked] = {}  # thread ident -> the lock it waits for (untimed)


def _site(depth: int) -> str:
    """``file:line`` of the caller ``depth`` frames up."""
    frame: FrameType | None = sys._getframe(depth)
    return f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None else "?"


def _thread_name(ident: int) -> str:
    for t in threading.enumerate():
        if t.ident == ident:
            return t.name
    return f"thread {ident}"


class _Tracked:
    """What both locks share: the name, the owner, and waiting with the graph."""

    __slots__ = ("_lock", "_taken", "name", "owner")

    def __init__(self, name: str | None, depth: int = 3) -> None:
        self._lock = threading.Lock()
        self.name = name or f"lock created at {_site(depth)}"
        self.owner: int | None = None
        self._taken: tuple[CodeType, int] | None = None  # where the owner took it

    @property
    def taken_at(self) -> str:
        taken = self._taken
        return "?" if taken is None else f"{taken[0].co_filename}:{taken[1]}"

    def _wait(self, me: int) -> None:
        """Block until the underlying lock is ours (no timeout): raise DeadlockError
        if waiting would close a cycle of waiting threads."""
        with _graph:
            _waiting[me] = self
            cycle = self._check(me)
        try:
            while cycle is None:
                if self._lock.acquire(True, RECHECK_S):
                    return
                with _graph:
                    cycle = self._check(me)
        finally:
            with _graph:
                _waiting.pop(me, None)
        raise DeadlockError(_describe(cycle), cycle_threads=[t for t, _ in cycle])

    @staticmethod
    def _check(me: int) -> list[tuple[int, _Tracked]] | None:
        """The cycle through ``me``, if any; then ``me`` leaves the graph at once, so
        that no other thread of the cycle reports it too (graph lock held)."""
        cycle = _cycle_from(me)
        if cycle is not None:
            del _waiting[me]
        return cycle

    def _took(self, me: int) -> None:
        self.owner = me
        frame = sys._getframe(2)  # the caller of acquire()
        self._taken = (frame.f_code, frame.f_lineno)

    def __repr__(self) -> str:
        owner = "unlocked" if self.owner is None else f"held by {_thread_name(self.owner)}"
        return f"<conveyor.sync.{type(self).__name__} {self.name!r} {owner}>"


def blocked_on(thread: int) -> str | None:
    """What the thread with ident ``thread`` waits for without a timeout, described
    ("lock a, held by T2 (taken at app.py:20)"), or None when it waits for no
    ``conveyor.sync`` lock. For reports of a stalled program."""
    with _graph:
        lock = _waiting.get(thread)
    if lock is None:
        return None
    owner = lock.owner
    held = "free" if owner is None else f"held by {_thread_name(owner)} (taken at {lock.taken_at})"
    return f"{lock.name}, {held}"


def _cycle_from(me: int) -> list[tuple[int, _Tracked]] | None:
    """(thread, the lock it waits for) around the cycle through ``me``, or None (graph
    lock held)."""
    path: list[tuple[int, _Tracked]] = []
    seen: set[int] = set()
    thread = me
    while thread not in seen:
        lock = _waiting.get(thread)
        if lock is None:
            return None
        seen.add(thread)
        path.append((thread, lock))
        owner = lock.owner
        if owner is None:
            return None
        if owner == me:
            return path
        thread = owner
    return None  # a cycle that does not go through me: its own last thread reports it


def _describe(cycle: list[tuple[int, _Tracked]]) -> str:
    frames = sys._current_frames()
    parts = []
    for i, (thread, lock) in enumerate(cycle):
        holder_of_next = cycle[(i + 1) % len(cycle)][0]
        held = [lk for t, lk in cycle if lk.owner == thread]
        holds = ", ".join(f"{lk.name} (taken at {lk.taken_at})" for lk in held) or "nothing"
        who = "thread" if i == 0 else "which is thread"
        parts.append(
            f"{who} {_thread_name(thread)} holds {holds} and waits for {lock.name}, held by "
            f"{_thread_name(holder_of_next)}"
        )
    lines = ["deadlock: " + "; ".join(parts) + " (the first)."]
    for thread, _ in cycle:
        frame = frames.get(thread)
        stack = "".join(traceback.format_stack(frame)) if frame is not None else "(gone)\n"
        lines.append(f"\nstack of {_thread_name(thread)}:\n{stack.rstrip()}")
    return "\n".join(lines)


class Lock(_Tracked):
    """``threading.Lock`` that tracks its owner and raises DeadlockError instead of
    waiting for ever. ``name=`` names it in reports (default: where it was made)."""

    __slots__ = ()

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        me = threading.get_ident()
        if self._lock.acquire(False):
            self._took(me)
            return True
        if not blocking:
            return False
        if timeout >= 0:  # a timed wait ends by itself: not part of the graph
            if not self._lock.acquire(True, timeout):
                return False
        else:
            self._wait(me)
        self._took(me)
        return True

    __enter__ = acquire

    def release(self) -> None:
        self.owner = None
        self._lock.release()

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def locked(self) -> bool:
        return self._lock.locked()

    # -- for threading.Condition -------------------------------------------------

    def _is_owned(self) -> bool:
        return self.owner == threading.get_ident()

    def _release_save(self) -> None:
        self.release()

    def _acquire_restore(self, state: None) -> None:
        self.acquire()


class RLock(_Tracked):
    """``threading.RLock`` that tracks its owner and raises DeadlockError instead of
    waiting for ever. Re-entry by its owner never waits."""

    __slots__ = ("_count",)

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)
        self._count = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        me = threading.get_ident()
        if self.owner == me:
            self._count += 1
            return True
        if self._lock.acquire(False):
            pass
        elif not blocking:
            return False
        elif timeout >= 0:
            if not self._lock.acquire(True, timeout):
                return False
        else:
            self._wait(me)
        self._took(me)
        self._count = 1
        return True

    __enter__ = acquire

    def release(self) -> None:
        if self.owner != threading.get_ident():
            raise RuntimeError("cannot release un-acquired lock")
        self._count -= 1
        if self._count == 0:
            self.owner = None
            self._lock.release()

    # -- for threading.Condition: wait() lets go of every level, then takes them back

    def _is_owned(self) -> bool:
        return self.owner == threading.get_ident()

    def _release_save(self) -> int:
        if self.owner != threading.get_ident():
            raise RuntimeError("cannot wait on un-acquired lock")
        count, self._count = self._count, 0
        self.owner = None
        self._lock.release()
        return count

    def _acquire_restore(self, count: int) -> None:
        self.acquire()
        self._count = count

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class Condition(threading.Condition):
    """``threading.Condition`` over a ``conveyor.sync`` lock (a new ``RLock`` by
    default): ``wait()`` lets the lock go while it waits, so a waiter holds nothing
    in the wait-for graph, and taking the lock back is checked like any acquire."""

    def __init__(self, lock: Lock | RLock | None = None, name: str | None = None) -> None:
        if lock is None:
            lock = RLock(name or f"condition created at {_site(2)}")
        super().__init__(cast("Any", lock))  # typeshed knows only threading's locks
