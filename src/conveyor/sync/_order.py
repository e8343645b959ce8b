"""Lock-order checking: the idea of Linux's lockdep, for Python threads.

Off by default; :func:`check_order` (or :func:`checking_order`, or
``conveyor doctor``) turns it on. Then every blocking, untimed acquire of a
``conveyor.sync`` lock while the thread holds others records an edge "held, then
taken" between lock *classes*: a lock's class is its ``name=``, or the place it was
made, so that every lock made by one line of code is one class. An edge that closes
a cycle (a then b here, b then a there, or a longer ring) is an *inversion*: two
threads taking the locks in those orders at the same time would deadlock, so it is
reported even in a run that did not hang.

What is not reported, because it cannot wait for ever:
* re-entering an ``RLock``, and ``Condition.wait()``, which lets its lock go;
* non-blocking and timed acquires (they record no edge to the lock they take);
* a cycle whose every edge was taken while one same lock was held before both of
  its locks (a gate lock: the two orders can never run at the same time);
* a lock released by another thread than the one that took it (it leaves the
  holder's stack then).

Locks of one class taken inside each other (the philosophers' forks, made by one
line) are ordered by instance: fork 1 then fork 2 everywhere is fine, a ring of
forks is an inversion.

Also reported: waiting (untimed) on a condition, an event or a semaphore while
holding a lock, since a thread that needs that lock before it notifies would wait for
ever; and, while checking is on, every deadlock the wait-for graph found.

Edges are kept per process; :func:`export_edges` and :func:`merge_edges` let a
parent check the merged graph of its worker processes.
"""

from __future__ import annotations

import contextlib
import fnmatch
import linecache
import os
import pickle
import re
import sys
import threading
import traceback
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from types import FrameType

__all__ = [
    "LockOrderError",
    "LockOrderWarning",
    "OrderProblem",
    "OrderReport",
    "check_order",
    "checking_order",
    "export_edges",
    "merge_edges",
    "order_problems",
]

OnProblem = Literal["warn", "raise", "record"]

on = False  # read by every acquire: is checking on?
switched: list[Callable[[bool], object]] = []  # told when ``on`` changes (the C locks' flag)


class LockOrderWarning(UserWarning):
    """A lock-order problem found while checking is on with ``on_problem="warn"``."""


class LockOrderError(RuntimeError):
    """A lock-order problem found while checking is on with ``on_problem="raise"``;
    raised in the thread whose acquire (or wait) showed it, with that lock let go."""


@dataclass(frozen=True)
class OrderProblem:
    """One problem found: ``kind`` is "inversion", "wait while holding" or
    "deadlock"; ``locks`` the names involved; ``message`` says it all."""

    kind: str
    locks: tuple[str, ...]
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass
class OrderReport:
    """What :func:`checking_order` found while it was on."""

    problems: list[OrderProblem] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.problems)


class _Named(Protocol):  # what _locks' locks give this module
    serial: int
    _taken: tuple[str, int] | None
    _created: str
    _name: str | None

    @property
    def key(self) -> str: ...
    @property
    def name(self) -> str: ...


class _Lock(_Named, Protocol):
    def release(self) -> None: ...


Node = str | tuple[str, int] | tuple[str, int, int]  # a class, or one lock of a class
Site = tuple[str, int] | None


@dataclass
class _Edge:
    """``first`` was held when ``then`` was taken (first seen by ``thread``)."""

    gate: frozenset[object]  # locks held before ``first`` every time this edge was seen
    first: str  # display names, see _display
    then: str
    thread: str
    first_at: str
    then_at: str


_mu = threading.Lock()  # a plain lock: guards the graph and the report
_held: dict[int, list[tuple[_Lock, Site]]] = {}  # thread -> the locks it holds, in order
_edges: dict[tuple[Node, Node], _Edge] = {}
_succ: dict[Node, set[Node]] = {}
_ignored: set[tuple[Node, Node]] = set()
_seen: set[frozenset[object]] = set()  # problems reported, so that each is reported once
_report = OrderReport()


@dataclass
class _Settings:
    on_problem: OnProblem = "warn"
    ignore: tuple[str, ...] = ()


_settings = _Settings()
_HERE = os.path.dirname(os.path.abspath(__file__))
_ASSIGNED = re.compile(r"\s*([A-Za-z_][\w.]*(?:\[[^\]]*\])?)\s*(?::[^=]+)?=(?!=)")


def check_order(
    enabled: bool = True, *, on_problem: OnProblem = "warn", ignore: Iterable[str] = ()
) -> None:
    """Turn lock-order checking on (or off, with ``False``) for the whole process.

    ``on_problem``: ``"warn"`` issues a :class:`LockOrderWarning` per problem,
    ``"raise"`` raises :class:`LockOrderError` in the thread that showed it (the lock
    it was taking let go), ``"record"`` only keeps it for :func:`order_problems`.
    ``ignore``: suppressions, ``fnmatch`` patterns matched against the lock names and
    the ``file:line`` places where either lock of an edge was made or taken (for
    example ``"*/vendor/*"`` or ``"app.py:120"``); a matching edge is not recorded.
    Locks already held when checking starts are not seen until taken again."""
    global on
    if on_problem not in ("warn", "raise", "record"):
        raise ValueError(f"on_problem must be 'warn', 'raise' or 'record', not {on_problem!r}")
    patterns = (ignore,) if isinstance(ignore, str) else tuple(ignore)
    with _mu:
        _settings.on_problem = on_problem
        _settings.ignore = patterns
        _ignored.clear()
        on = bool(enabled)
        for tell in switched:
            tell(on)


@contextlib.contextmanager
def checking_order(
    *, on_problem: OnProblem = "record", ignore: Iterable[str] = ()
) -> Iterator[OrderReport]:
    """Check lock order inside the block, from a clean graph; the report it yields
    fills with the problems found. The previous settings come back on exit."""
    was_on, before = on, _Settings(_settings.on_problem, _settings.ignore)
    _reset()
    check_order(True, on_problem=on_problem, ignore=ignore)
    report = _report
    try:
        yield report
    finally:
        check_order(was_on, on_problem=before.on_problem, ignore=before.ignore)


def order_problems() -> list[OrderProblem]:
    """Every problem found since checking was turned on (or the graph reset)."""
    with _mu:
        return list(_report.problems)


def _reset() -> None:
    global _report
    with _mu:
        _edges.clear()
        _succ.clear()
        _ignored.clear()
        _seen.clear()
        _held.clear()
        _report = OrderReport()


# -- the hooks the locks call --------------------------------------------------------


def acquired(lock: _Lock, me: int, checked: bool) -> None:
    """``lock`` was just taken by thread ``me``; ``checked``: by a blocking, untimed
    acquire (the only kind that can wait for ever, so the only kind that adds an
    edge)."""
    held = _held.get(me)
    if held is None:
        held = _held[me] = []
    if checked and held:
        problem = _edges_to(held, lock, lock._taken)
        if problem is not None:
            _found(problem, lock)
    held.append((lock, lock._taken))


def acquiring(lock: _Named, me: int) -> None:
    """Thread ``me`` is about to wait (untimed) for ``lock``: the order it takes the
    locks in is known now, and must be recorded even if the wait never ends."""
    held = _held.get(me)
    if held:
        problem = _edges_to(held, lock, caller_site())
        if problem is not None:
            _found(problem, None)


def released(lock: _Lock, owner: int) -> None:
    """``lock`` was let go; it leaves the stack of the thread that held it (which may
    not be the thread letting it go)."""
    held = _held.get(owner)
    if held:
        for i in range(len(held) - 1, -1, -1):
            if held[i][0] is lock:
                del held[i]
                return


def waits(what: object, kind: str, timeout: float | None) -> None:
    """The calling thread is about to wait on a condition, event or semaphore: report
    it if that wait is untimed and the thread holds a lock (other than a condition's
    own, which the wait lets go)."""
    if timeout is not None and timeout >= 0:
        return
    held = [(h, at) for h, at in _held.get(threading.get_ident(), ()) if h is not what]
    if not held:
        return
    name = getattr(what, "name", repr(what))
    key = frozenset([("wait", getattr(what, "key", name)), *(h.key for h, _ in held)])
    locks = ", ".join(f"{display(h)} (taken at {site_text(at)})" for h, at in held)
    message = (
        f"{kind} wait while holding a lock: thread {threading.current_thread().name} waits "
        f"on {name} at {site_text(caller_site())} while holding {locks}; a thread that needs "
        f"{'it' if len(held) == 1 else 'one of them'} before it wakes this one would wait "
        f"for ever. Let go of the lock before waiting, or wait with a timeout."
    )
    problem = OrderProblem("wait while holding", tuple(display(h) for h, _ in held), message)
    _found((key, problem), None)


def deadlock(message: str) -> None:
    """The wait-for graph found a deadlock (and raised DeadlockError): part of the
    report while checking is on, neither warned about nor raised again."""
    with _mu:
        _report.problems.append(OrderProblem("deadlock", (), message))


# -- the graph ----------------------------------------------------------------------


def _edges_to(
    held: list[tuple[_Lock, Site]], lock: _Named, taken_at: Site
) -> tuple[frozenset[object], OrderProblem] | None:
    """Record "each held lock, then ``lock`` (taken at ``taken_at``)"; the first
    inversion it closes, if any."""
    key = lock.key
    for i, (h, h_at) in enumerate(held):
        if h is lock:
            continue
        h_key = h.key
        if h_key == key:  # one class: ordered by instance
            a: Node = (h_key, h.serial)
            b: Node = (key, lock.serial)
        else:
            a, b = h_key, key
        edge = _edges.get((a, b))
        if edge is not None and not edge.gate:
            continue  # seen ungated already: nothing new
        if (a, b) in _ignored:
            continue
        gate = frozenset(x.serial for x, _ in held[:i])
        if edge is not None and edge.gate <= gate:
            continue
        with _mu:
            if edge is None:
                if _is_ignored(h, h_at, lock):
                    _ignored.add((a, b))
                    continue
                edge = _Edge(
                    gate,
                    display(h),
                    display(lock),
                    threading.current_thread().name,
                    site_text(h_at),
                    site_text(taken_at),
                )
                _edges[(a, b)] = edge
                _succ.setdefault(a, set()).add(b)
            else:
                edge.gate &= gate
            if _edges_fd:
                _publish()
            found = _cycle(a, b, edge.gate)
        if found is not None:
            return found
    return None


def _cycle(
    a: Node, b: Node, gate: frozenset[object]
) -> tuple[frozenset[object], OrderProblem] | None:
    """An ungated cycle through the edge a -> b, as a problem not reported before, or
    None (graph lock held). A cycle is gated when one lock was held before every
    edge of it."""
    stack: list[tuple[Node, frozenset[object], tuple[tuple[Node, Node], ...]]] = [
        (b, gate, ((a, b),))
    ]
    visited: set[tuple[Node, frozenset[object]]] = set()
    while stack:
        node, common, path = stack.pop()
        if node == a:
            if not common:
                key = frozenset(path)
                if key not in _seen:
                    ring = [_edges[e] for e in path]
                    return key, _inversion(ring[1:] + ring[:1])  # the new edge last
            continue
        if (node, common) in visited:
            continue
        visited.add((node, common))
        for nxt in _succ.get(node, ()):
            stack.append((nxt, common & _edges[(node, nxt)].gate, (*path, (node, nxt))))
    return None


def _inversion(edges: list[_Edge]) -> OrderProblem:
    orders = ", ".join(f"{e.first} then {e.then}" for e in edges)
    taken = "; ".join(
        f"thread {e.thread} took {_short(e.first)} at {e.first_at}, then {_short(e.then)} at "
        f"{e.then_at}"
        for e in edges
    )
    ring = "two threads" if len(edges) == 2 else f"{len(edges)} threads"
    message = (
        f"lock order inversion: {orders} ({taken}). If {ring} took "
        f"them in these orders at the same time, they would deadlock: take them in one "
        f"order everywhere (or under one lock taken first)."
    )
    return OrderProblem("inversion", tuple(e.first for e in edges), message)


def _found(
    found: tuple[frozenset[object], OrderProblem], lock: _Lock | None, merged: bool = False
) -> None:
    """Report a problem by the policy; one seen in merged edges (no thread of this
    process showed it) is warned about under "raise" too."""
    key, problem = found
    with _mu:
        if key in _seen:
            return
        _seen.add(key)
        _report.problems.append(problem)
        policy = _settings.on_problem
    if policy == "warn" or (policy == "raise" and merged):
        warnings.warn(LockOrderWarning(problem.message), stacklevel=_outside()[1])
    elif policy == "raise":
        if lock is not None:
            lock.release()  # not in the stack yet: the caller appends after
        raise LockOrderError(problem.message)


def _is_ignored(first: _Named, first_at: Site, then: _Named) -> bool:
    patterns = _settings.ignore
    if not patterns:
        return False
    names = (
        first.name,
        then.name,
        first._created,
        then._created,
        site_text(first_at),
        site_text(then._taken),
    )
    return any(fnmatch.fnmatchcase(n, p) for p in patterns for n in names)


# -- across processes ---------------------------------------------------------------


Exported = tuple[Node, Node, tuple[object, ...], str, str, str, str, str]


def export_edges() -> list[Exported]:
    """This process's edges, plain and picklable, for :func:`merge_edges` in another."""
    with _mu:
        return _export()


def _export() -> list[Exported]:
    pid = os.getpid()
    return [
        (
            _tag(a, pid),
            _tag(b, pid),
            tuple((pid, g) for g in e.gate),
            e.first,
            e.then,
            f"{e.thread} of process {pid}",
            e.first_at,
            e.then_at,
        )
        for (a, b), e in _edges.items()
    ]


_edges_fd: list[int] = []  # in a worker process: the file its parent reads them from


def publish_edges_to(fd: int) -> None:
    """In a worker process: keep ``fd`` holding this process's edges, rewritten
    whenever one is added or its gate shrinks (rare: the same orders repeat), so that
    the parent has them even if this process dies."""
    _edges_fd[:] = [fd]
    with _mu:
        _publish()


def _publish() -> None:
    """(graph lock held)"""
    rewrite(_edges_fd[0], pickle.dumps(_export(), protocol=5))


def rewrite(fd: int, data: bytes) -> None:
    """Make the file ``fd`` hold ``data`` (a worker process's note for its parent);
    a failure only costs the parent that note."""
    try:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    except OSError:
        pass


def merge_edges(edges: Iterable[Exported]) -> list[OrderProblem]:
    """Add another process's edges (from :func:`export_edges`) to this one's graph;
    the inversions the merged graph shows are reported as usual and returned."""
    problems: list[OrderProblem] = []
    for a, b, gate, first, then, thread, first_at, then_at in edges:
        with _mu:
            edge = _edges.get((a, b))
            if edge is None:
                edge = _edges[(a, b)] = _Edge(
                    frozenset(gate), first, then, thread, first_at, then_at
                )
                _succ.setdefault(a, set()).add(b)
            elif not edge.gate <= frozenset(gate):
                edge.gate &= frozenset(gate)
            else:
                continue
            found = _cycle(a, b, edge.gate)
        if found is not None:
            problems.append(found[1])
            _found(found, None, merged=True)
    return problems


def settings_for_workers() -> tuple[tuple[str, ...]] | None:
    """What a worker process needs to check its own locks' order, or None when
    checking is off here: sent to it when it starts."""
    return (_settings.ignore,) if on else None


def start_in_worker(settings: tuple[tuple[str, ...]] | None, fd: int) -> None:
    """In a worker process: check lock order if its parent does, and keep the edges
    in ``fd`` for it; problems are only recorded here, the parent reports them from
    the merged graph."""
    if settings is not None:
        check_order(True, on_problem="record", ignore=settings[0])
        publish_edges_to(fd)


def merge_file(fd: int) -> None:
    """In the parent: merge the edges a worker process left in ``fd`` (see
    :func:`publish_edges_to`), then empty it."""
    data = os.pread(fd, os.fstat(fd).st_size, 0)
    if data:
        os.ftruncate(fd, 0)
        merge_edges(pickle.loads(data))


def _tag(node: Node, pid: int) -> Node:
    """An instance node is one process's lock: tag it with the pid."""
    return node if isinstance(node, str) or len(node) == 3 else (node[0], node[1], pid)


# -- naming -------------------------------------------------------------------------


def site_text(site: Site) -> str:
    """``file:line``, or "?"."""
    return "?" if site is None else f"{site[0]}:{site[1]}"


def display(lock: _Named) -> str:
    """The lock's name, or the name it is assigned to where it was made (``mutexA``,
    ``self.lock``), with that place."""
    if lock._name:
        return lock._name
    filename, _, line = lock._created.rpartition(":")
    match = _ASSIGNED.match(linecache.getline(filename, int(line))) if line.isdigit() else None
    if match is None:
        return lock.name
    return f"{match.group(1)} (made at {lock._created})"


def _short(display: str) -> str:
    """``mutexA`` of ``mutexA (made at app.py:3)``."""
    return display.split(" (made at ", 1)[0]


def _outside() -> tuple[FrameType | None, int]:
    """The innermost frame of the calling stack outside this package and
    ``threading``, and how far up it is (1: the caller of this function; a
    ``stacklevel`` for ``warnings.warn`` when called from the function that warns)."""
    frame: FrameType | None = sys._getframe(1)
    depth = 1
    while frame is not None and (
        os.path.dirname(frame.f_code.co_filename) == _HERE
        or frame.f_code.co_filename == threading.__file__
    ):
        frame = frame.f_back
        depth += 1
    return frame, depth


def caller_site() -> Site:
    """(file, line) of the user's code that called into this package."""
    frame, _ = _outside()
    return None if frame is None else (frame.f_code.co_filename, frame.f_lineno)


def stack_text(frame: FrameType | None) -> str:
    """A thread's stack from ``frame`` outwards, as ``traceback`` prints it, without the
    frames of this package (where the lock machinery waits)."""
    if frame is None:
        return "(gone)"
    summary = traceback.extract_stack(frame)
    kept = [f for f in summary if os.path.dirname(f.filename) != _HERE]
    return "".join(traceback.format_list(kept)).rstrip()
