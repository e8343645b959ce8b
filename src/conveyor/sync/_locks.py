"""The checked locks: ``Lock``, ``RLock``, ``Condition``, ``Semaphore``,
``BoundedSemaphore`` and ``Event``, drop-in for ``threading``'s.

Every lock tracks its owner, and when an acquire has to wait, it looks at the
wait-for graph: thread T waits for lock L, which thread U holds, which waits for lock
M, ... If that chain comes back to T, waiting would be for ever: the acquire raises
:class:`conveyor.DeadlockError` instead, in the thread that closed the cycle, with
the cycle spelled out (who holds what, taken where, and waits for what) and every
involved thread's stack. By default the other threads of the cycle keep waiting and
go on once the raising thread's ``with`` blocks let its locks go;
``deadlock_policy("all")`` raises in every thread of the cycle.

Cheap when nobody waits: an uncontended acquire is the plain lock's plus the owner
and the place it was taken. Only a blocking acquire without a timeout takes part in
the graph: a non-blocking or timed acquire cannot wait for ever. A waiter looks at the
graph again every ``RECHECK_S`` seconds, which catches a cycle whose last edge
appeared while an owner was being recorded.

Semaphores and events have no owner, so they are not part of the graph; a thread
waiting on one is still described by :func:`blocked_on`. Lock-order checking (the
opt-in mode of ``_order``) sees every acquire through ``_order.acquired`` and
``_order.released``.

Two implementations of ``Lock`` and ``RLock``, one behaviour::

    _Tracked (name, key, the graph: _wait, _check, repr)
      |-- _PyTracked (slots, a threading.Lock) -- PyLock, PyRLock: the reference
      '-- with _native.Lock / _native.RLock (C) -- NativeLock, NativeRLock

The C types (``_native.c``) do the uncontended acquire and release, timed waits, and
the common lock-order bookkeeping without running Python code; a blocking untimed
acquire that has to wait calls ``_wait`` here. ``Lock`` and ``RLock`` are the native
classes when the extension is built (``NATIVE``), except with
``CONVEYOR_PURE_PYTHON=1`` or on a free-threaded build (the C types rely on the GIL).
"""

from __future__ import annotations

import itertools
import os
import sys
import sysconfig
import threading
from typing import TYPE_CHECKING, Any, Literal, cast

from .._errors import DeadlockError
from . import _order

if TYPE_CHECKING:
    from types import TracebackType

__all__ = [
    "NATIVE",
    "BoundedSemaphore",
    "Condition",
    "Event",
    "Lock",
    "RLock",
    "Semaphore",
    "blocked_on",
    "deadlock_policy",
]


def _load_native() -> Any:
    """The C types (``_native.c``), or None: not built, ``CONVEYOR_PURE_PYTHON`` set,
    or a free-threaded build (importing a module that needs the GIL turns it on)."""
    if os.environ.get("CONVEYOR_PURE_PYTHON") or sysconfig.get_config_var("Py_GIL_DISABLED"):
        return None
    try:
        from . import _native
    except ImportError:
        return None
    return _native


if TYPE_CHECKING:
    from . import _native
else:
    _native = _load_native()
NATIVE = _native is not None  # Lock and RLock are the C-backed classes

RECHECK_S = 0.05

_graph = threading.Lock()  # guards _waiting, _other and _doomed, and the cycle check
_waiting: dict[int, _Tracked] = {}  # thread ident -> the lock it waits for (untimed)
_other: dict[int, str] = {}  # thread ident -> the semaphore, event or condition it waits on
_doomed: dict[int, DeadlockError] = {}  # thread ident -> the error of the cycle it is in
_policy: list[str] = ["one"]
_serials = itertools.count(1)


def deadlock_policy(policy: Literal["one", "all"] | None = None) -> str:
    """Who gets :class:`DeadlockError` when waiting would close a cycle: ``"one"``
    (the default: the thread that closed it; the others wait on and go on once it
    lets its locks go) or ``"all"`` (every thread of the cycle). Returns the policy
    in force; with an argument, sets it first."""
    if policy is not None:
        if policy not in ("one", "all"):
            raise ValueError(f"deadlock_policy must be 'one' or 'all', not {policy!r}")
        _policy[0] = policy
    return _policy[0]


def created_at() -> str:
    """``file:line`` of the user's code that makes a lock."""
    return _order.site_text(_order.caller_site())


def _thread_name(ident: int) -> str:
    return _live_thread_name(ident) or f"thread {ident}"


def _live_thread_name(ident: int) -> str | None:
    """The name of the running thread with that ident, or None if it has ended."""
    for t in threading.enumerate():
        if t.ident == ident:
            return t.name
    return None


class _Tracked:
    """What both implementations share: the name, the key, and waiting with the graph.
    The state (``owner``, ``_taken``, ``serial``, ...) lives in the subclasses: slots
    in pure Python, fields of the C type in the native one."""

    if TYPE_CHECKING:
        _name: str | None
        _created: str
        serial: int
        owner: int | None
        _taken: tuple[str, int] | None

        def _acquire_raw(self, timeout: float) -> bool: ...
        def _release_raw(self) -> None: ...

    else:
        __slots__ = ()  # no __dict__ in either implementation

    def _init(self, name: str | None) -> None:
        self._name = name
        self._created = created_at()
        self.serial = next(_serials)  # never reused: identifies this lock in reports

    @property
    def name(self) -> str:
        """The name given, or where the lock was made."""
        return self._name or f"{self._kind} created at {self._created}"

    _kind = "lock"

    @property
    def key(self) -> str:
        """The lock's class for lock-order checking: its name, or where it was made."""
        return self._name or self._created

    @property
    def taken_at(self) -> str:
        taken = self._taken
        return "?" if taken is None else f"{taken[0]}:{taken[1]}"

    def _wait(self, me: int) -> None:
        """Block until the underlying lock is ours (no timeout): raise DeadlockError
        if waiting would close a cycle of waiting threads. The caller records the
        owner."""
        if _order.on:  # the order is known now, whether or not the wait ever ends
            _order.acquiring(self, me)
        with _graph:
            _waiting[me] = self
            message = self._check(me)
        if _waits_fd:
            _publish_waits()
        try:
            while message is None:
                got = self._acquire_raw(RECHECK_S)
                with _graph:
                    message = _doomed.pop(me, None)
                    if got and message is None:
                        return
                    if got:  # part of a cycle already reported: policy "all"
                        self._release_raw()
                    else:
                        message = self._check(me)
        finally:
            with _graph:
                _waiting.pop(me, None)
            if _waits_fd:
                _publish_waits()
        raise message

    def _check(self, me: int) -> DeadlockError | None:
        """The error for the cycle through ``me``, if any; then ``me`` leaves the graph
        at once, so that no other thread of the cycle reports it too, or, by the "all"
        policy, every other thread of it is told (graph lock held)."""
        cycle = _cycle_from(me)
        if cycle is None:
            return None
        del _waiting[me]
        message = _describe(cycle)
        threads = [t for t, _ in cycle]
        if _policy[0] == "all":
            for t in threads[1:]:
                _doomed[t] = DeadlockError(message, cycle_threads=threads)
        if _order.on:
            _order.deadlock(message)
        return DeadlockError(message, cycle_threads=threads)

    def __repr__(self) -> str:
        owner = "unlocked" if self.owner is None else f"held by {_thread_name(self.owner)}"
        return f"<conveyor.sync.{type(self).__name__} {self.name!r} {owner}>"


class _PyTracked(_Tracked):
    """The pure-Python state: a ``threading.Lock`` and slots."""

    __slots__ = ("__weakref__", "_created", "_lock", "_name", "_taken", "owner", "serial")

    def __init__(self, name: str | None) -> None:
        self._lock = threading.Lock()
        self._init(name)
        self.owner: int | None = None
        self._taken: tuple[str, int] | None = None  # where the owner took it

    def _took(self, me: int) -> None:
        self.owner = me
        frame = sys._getframe(2)  # the caller of acquire()
        self._taken = (frame.f_code.co_filename, frame.f_lineno)

    def _acquire_raw(self, timeout: float) -> bool:
        return self._lock.acquire(True, timeout)

    def _release_raw(self) -> None:
        self._lock.release()

    def _at_fork_reinit(self) -> None:
        """After a fork, in the child: the lock is free (``threading``'s protocol, used
        by logging and concurrent.futures)."""
        self._lock = threading.Lock()
        self.owner = None


def _check_timeout(blocking: bool, timeout: float) -> None:
    """The arguments ``threading``'s locks refuse (``timeout`` is not -1)."""
    if not blocking:
        raise ValueError("can't specify a timeout for a non-blocking call")
    if timeout < 0:
        raise ValueError(_NEGATIVE_TIMEOUT)
    if timeout > threading.TIMEOUT_MAX:
        raise OverflowError("timeout value is too large")


_NEGATIVE_TIMEOUT = (
    "timeout value must be a non-negative number"
    if sys.version_info >= (3, 13)
    else "timeout value must be positive"
)


def _retaken(lock: _Tracked) -> None:
    """After ``Condition.wait()`` took the lock back: taken where the caller waited,
    not inside ``threading``."""
    site = _order.caller_site()
    if site is not None:
        lock._taken = site


def blocked_on(thread: int) -> str | None:
    """What the thread with ident ``thread`` waits for, described ("lock a, held by
    T2 (taken at app.py:20)", "... held by a thread that ended without letting it go
    ...", "semaphore s (none of its permits free)"), or None when it waits on nothing
    of ``conveyor.sync``. For reports of a stalled program."""
    with _graph:
        lock = _waiting.get(thread)
        other = _other.get(thread)
    if lock is None:
        return other
    owner = lock.owner
    if owner is None:
        return f"{lock.name}, free"
    holder = _live_thread_name(owner) or "a thread that ended without letting it go"
    return f"{lock.name}, held by {holder} (taken at {lock.taken_at})"


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
        holds = ", ".join(f"{_order.display(lk)} (taken at {lk.taken_at})" for lk in held)
        who = "thread" if i == 0 else "which is thread"
        parts.append(
            f"{who} {_thread_name(thread)} holds {holds or 'nothing'} and waits for "
            f"{_order.display(lock)}, held by "
            f"{_thread_name(holder_of_next)}"
        )
    lines = ["deadlock: " + "; ".join(parts) + " (the first)."]
    for thread, _ in cycle:
        stack = _order.stack_text(frames.get(thread))
        lines.append(f"\nstack of {_thread_name(thread)}:\n{stack}")
    return "\n".join(lines)


class Lock(_PyTracked):
    """``threading.Lock`` that tracks its owner and raises DeadlockError instead of
    waiting for ever. ``name=`` names it in reports (default: where it was made)."""

    __slots__ = ()

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        me = threading.get_ident()
        if timeout != -1:
            _check_timeout(blocking, timeout)
        if self._lock.acquire(False):
            self._took(me)
            if _order.on:
                _order.acquired(self, me, blocking and timeout < 0)
            return True
        if not blocking:
            return False
        if timeout >= 0:  # a timed wait ends by itself: not part of the graph
            if not self._lock.acquire(True, timeout):
                return False
        else:
            self._wait(me)
        self._took(me)
        if _order.on:
            _order.acquired(self, me, timeout < 0)
        return True

    __enter__ = acquire

    def release(self) -> None:
        owner = self.owner
        self.owner = None
        self._lock.release()
        if _order.on and owner is not None:
            _order.released(self, owner)

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
        _retaken(self)


class RLock(_PyTracked):
    """``threading.RLock`` that tracks its owner and raises DeadlockError instead of
    waiting for ever. Re-entry by its owner never waits."""

    __slots__ = ("_count",)

    _kind = "rlock"

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)
        self._count = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        me = threading.get_ident()
        if timeout != -1:
            _check_timeout(blocking, timeout)
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
        if _order.on:
            _order.acquired(self, me, blocking and timeout < 0)
        return True

    __enter__ = acquire

    def release(self) -> None:
        me = threading.get_ident()
        if self.owner != me:
            raise RuntimeError("cannot release un-acquired lock")
        self._count -= 1
        if self._count == 0:
            self.owner = None
            self._lock.release()
            if _order.on:
                _order.released(self, me)

    def _at_fork_reinit(self) -> None:
        super()._at_fork_reinit()
        self._count = 0

    # -- for threading.Condition: wait() lets go of every level, then takes them back

    def _is_owned(self) -> bool:
        return self.owner == threading.get_ident()

    def _release_save(self) -> int:
        me = threading.get_ident()
        if self.owner != me:
            raise RuntimeError("cannot wait on un-acquired lock")
        count, self._count = self._count, 0
        self.owner = None
        self._lock.release()
        if _order.on:
            _order.released(self, me)
        return count

    def _acquire_restore(self, count: int) -> None:
        self.acquire()
        self._count = count
        _retaken(self)

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


PyLock, PyRLock = Lock, RLock


if _native is not None:

    class NativeLock(_Tracked, _native.Lock):
        """``threading.Lock`` that tracks its owner and raises DeadlockError instead of
        waiting for ever. ``name=`` names it in reports (default: where it was made)."""

        __slots__ = ()

        def __init__(self, name: str | None = None) -> None:
            self._init(name)

        def _acquire_restore(self, state: None) -> None:
            self.acquire()
            _retaken(self)

    class NativeRLock(_Tracked, _native.RLock):
        """``threading.RLock`` that tracks its owner and raises DeadlockError instead
        of waiting for ever. Re-entry by its owner never waits."""

        __slots__ = ()

        _kind = "rlock"

        def __init__(self, name: str | None = None) -> None:
            self._init(name)

        def _acquire_restore(self, count: int) -> None:
            self.acquire()
            self._count = count
            _retaken(self)

    for _cls, _as in ((NativeLock, "Lock"), (NativeRLock, "RLock")):
        _cls.__name__ = _cls.__qualname__ = _as
    # The C acquire and release do _order.acquired's and released's common cases
    # themselves, on these two dicts: ident -> [(lock, lock._taken), ...] and
    # (a, b) -> an edge whose ``gate`` is a frozenset. A change to those shapes, or
    # to what the hooks do when an acquire adds no edge, is a change to _native.c too.
    _native.set_hooks(_order.acquired, _order.released, _order._held, _order._edges)
    _order.switched.append(_native.set_order)
    _native.set_order(_order.on)
    if not TYPE_CHECKING:  # to a type checker, Lock and RLock are the reference classes
        Lock, RLock = NativeLock, NativeRLock


class _Waits:
    """Record, for :func:`blocked_on`, that this thread waits on ``what``."""

    __slots__ = ("me", "what")

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        self.me = threading.get_ident()
        with _graph:
            _other[self.me] = self.what
        if _waits_fd:
            _publish_waits()

    def __exit__(self, *exc: object) -> None:
        with _graph:
            _other.pop(self.me, None)
        if _waits_fd:
            _publish_waits()


# -- in a worker process: what its threads wait for, where the engine can read it ----

_waits_fd: list[int] = []  # the file, in a worker process of a pipeline (see _child)
_publishing = threading.Lock()


def publish_waits_to(fd: int) -> None:
    """In a worker process: keep ``fd`` (a file the engine reads for its stall
    report) holding what each thread waits for, rewritten whenever a wait begins or
    ends (the waits are slow paths: two system calls each)."""
    _waits_fd[:] = [fd]
    _publish_waits()


def waits_text() -> str:
    """One line per thread that waits on something of ``conveyor.sync``."""
    with _graph:
        threads = sorted({*_waiting, *_other})
    lines = []
    for ident in threads:
        what = blocked_on(ident)
        if what:
            lines.append(f"thread {_thread_name(ident)} waits for {what}")
    return "\n".join(lines)


def _publish_waits() -> None:
    data = waits_text().encode("utf-8", "replace")
    with _publishing:
        _order.rewrite(_waits_fd[0], data)


class Condition(threading.Condition):
    """``threading.Condition`` over a ``conveyor.sync`` lock (a new ``RLock`` by
    default): ``wait()`` lets the lock go while it waits, so a waiter holds nothing
    in the wait-for graph, and taking the lock back is checked like any acquire.
    With lock-order checking on, waiting while holding another lock is reported: a
    thread that needs that lock before it notifies would wait for ever."""

    def __init__(self, lock: Lock | RLock | None = None, name: str | None = None) -> None:
        if lock is None:
            lock = RLock(name or f"condition created at {created_at()}")
        self._tracked = lock
        super().__init__(cast("Any", lock))  # typeshed knows only threading's locks

    def wait(self, timeout: float | None = None) -> bool:
        if _order.on:
            _order.waits(self._tracked, "condition", timeout)
        with _Waits(f"condition {self._tracked.name}"):
            return super().wait(timeout)


class Semaphore(threading.Semaphore):
    """``threading.Semaphore`` whose waiters are described by :func:`blocked_on`;
    with lock-order checking on, waiting on it while holding a lock is reported."""

    def __init__(self, value: int = 1, name: str | None = None) -> None:
        super().__init__(value)
        self.name = name or f"{type(self).__name__.lower()} created at {created_at()}"

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        if super().acquire(False):
            return True
        if not blocking:
            return False
        if _order.on:
            _order.waits(self, "semaphore", timeout)
        with _Waits(f"{self.name} (none of its permits free)"):
            return super().acquire(True, timeout)

    __enter__ = acquire


class BoundedSemaphore(Semaphore):
    """``threading.BoundedSemaphore`` (``release()`` past the initial value raises
    ValueError), described like :class:`Semaphore`."""

    def __init__(self, value: int = 1, name: str | None = None) -> None:
        super().__init__(value, name or f"boundedsemaphore created at {created_at()}")
        self._initial_value = value

    def release(self, n: int = 1) -> None:
        with self._cond:  # type: ignore[attr-defined]
            if self._value + n > self._initial_value:
                raise ValueError("Semaphore released too many times")
            self._value += n
            self._cond.notify(n)  # type: ignore[attr-defined]


class Event(threading.Event):
    """``threading.Event`` whose waiters are described by :func:`blocked_on`; with
    lock-order checking on, waiting on it while holding a lock is reported."""

    def __init__(self, name: str | None = None) -> None:
        super().__init__()
        self.name = name or f"event created at {created_at()}"

    def wait(self, timeout: float | None = None) -> bool:
        if self.is_set():
            return True
        if _order.on:
            _order.waits(self, "event", timeout)
        with _Waits(f"{self.name} (not set)"):
            return super().wait(timeout)


def _adopt_worker_file() -> None:
    """Imported in a worker process whose engine reads its waits: publish them."""
    child = sys.modules.get("conveyor._workers._child")
    fd = getattr(child, "sync_waits_fd", None)
    if isinstance(fd, int):
        publish_waits_to(fd)


_adopt_worker_file()
