"""conveyor.sync: locks that raise DeadlockError instead of waiting for ever."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

import conveyor
from conveyor import sync
from conveyor.sync import _locks
from tests.sync_implementations import lock_implementation  # noqa: F401 (autouse)

JOIN = 30.0  # only reached if something hangs
KINDS = ["Lock", "RLock"]


@pytest.fixture(params=KINDS)
def make(request: pytest.FixtureRequest) -> Callable[[str], sync.Lock | sync.RLock]:
    cls = getattr(sync, request.param)
    return lambda name: cls(name)  # type: ignore[no-any-return]


class Worker(threading.Thread):
    """A thread whose exception the test collects with a bounded join."""

    def __init__(self, fn: Callable[[], object], name: str) -> None:
        super().__init__(daemon=True, name=name)
        self.fn = fn
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.fn()
        except BaseException as exc:
            self.error = exc

    def finish(self) -> BaseException | None:
        self.join(JOIN)
        assert not self.is_alive(), "thread hung"
        return self.error


def waiting_for(lock: sync.Lock | sync.RLock) -> Callable[[], bool]:
    return lambda: lock in _locks._waiting.values()


def wait_state(predicate: Callable[[], bool]) -> None:
    done = threading.Event()
    for _ in range(int(JOIN / 0.001)):
        if predicate():
            return
        done.wait(0.001)
    raise AssertionError("state never reached")


def crossed(make: Callable[[str], sync.Lock | sync.RLock], n: int) -> list[BaseException | None]:
    """n threads, thread i holds lock i and then takes lock i+1 (mod n): a cycle."""
    locks = [make(f"lock-{i}") for i in range(n)]
    holding = threading.Barrier(n)

    def body(i: int) -> None:
        with locks[i]:
            holding.wait(JOIN)
            with locks[(i + 1) % n]:
                pass

    workers = [Worker(lambda i=i: body(i), f"T{i}") for i in range(n)]  # type: ignore[misc]
    return [w.finish() for w in workers]


@pytest.mark.parametrize("n", [2, 3])
def test_a_cycle_raises_in_one_thread_and_the_others_go_on(
    make: Callable[[str], sync.Lock | sync.RLock], n: int
) -> None:
    errors = crossed(make, n)
    raised = [e for e in errors if e is not None]
    assert len(raised) == 1
    error = raised[0]
    assert isinstance(error, conveyor.DeadlockError)
    assert len(error.cycle_threads) == n
    message = str(error)
    assert message.startswith("deadlock: thread T")
    for i in range(n):
        assert f"lock-{i}" in message
        assert f"T{i}" in message
    assert "holds lock-" in message
    assert "taken at " in message
    assert "waits for lock-" in message
    assert message.count("stack of T") == n


def test_the_ab_ba_message_spells_the_cycle_out() -> None:
    a, b = sync.Lock("a"), sync.Lock("b")
    a_held = threading.Event()

    def first() -> None:
        with a:
            a_held.set()
            wait_state(waiting_for(a))  # the other thread holds b and waits for a
            with b:
                pass

    def second() -> None:
        a_held.wait(JOIN)
        with b, a:
            pass

    t1 = Worker(first, "T1")
    t2 = Worker(second, "T2")
    e1, e2 = t1.finish(), t2.finish()
    assert e2 is None  # T2 got a once T1 gave up and let it go
    assert isinstance(e1, conveyor.DeadlockError)
    head = str(e1).splitlines()[0]
    assert head.startswith("deadlock: thread T1 holds a (taken at ")
    assert "and waits for b, held by T2; which is thread T2 holds b (taken at " in head
    assert head.endswith("and waits for a, held by T1 (the first).")


def test_rlock_reentry_is_not_a_deadlock() -> None:
    lock = sync.RLock("r")

    def nested(depth: int) -> int:
        with lock:
            return depth if depth == 0 else nested(depth - 1)

    assert nested(5) == 0
    assert lock.owner is None


def test_waiting_without_a_cycle_just_waits(make: Callable[[str], sync.Lock | sync.RLock]) -> None:
    lock = make("l")
    got = threading.Event()
    lock.acquire()

    def take() -> None:
        with lock:
            got.set()

    w = Worker(take, "taker")
    wait_state(waiting_for(lock))
    assert not got.is_set()
    lock.release()
    assert w.finish() is None
    assert got.is_set()


def test_non_blocking_and_timed_acquires_are_not_deadlocks(
    make: Callable[[str], sync.Lock | sync.RLock],
) -> None:
    """Each thread holds one lock and tries the other's, which never waits for ever."""
    a, b = make("a"), make("b")
    holding, tried = threading.Barrier(2), threading.Barrier(2)
    results: dict[str, bool] = {}

    def first() -> None:
        with a:
            holding.wait(JOIN)
            results["timed"] = b.acquire(timeout=0.05)
            tried.wait(JOIN)

    def second() -> None:
        with b:
            holding.wait(JOIN)
            results["non-blocking"] = a.acquire(blocking=False)
            tried.wait(JOIN)

    workers = [Worker(first, "T1"), Worker(second, "T2")]
    assert [w.finish() for w in workers] == [None, None]
    assert results == {"timed": False, "non-blocking": False}


def test_locks_drop_in_for_threading(make: Callable[[str], sync.Lock | sync.RLock]) -> None:
    lock = make("x")
    assert lock.acquire()
    assert lock.owner == threading.get_ident()
    assert "held by" in repr(lock)
    lock.release()
    assert lock.owner is None
    assert "unlocked" in repr(lock)
    count = 0

    def bump() -> None:
        nonlocal count
        for _ in range(2000):
            with lock:
                count += 1

    workers = [Worker(bump, f"w{i}") for i in range(4)]
    assert [w.finish() for w in workers] == [None] * 4
    assert count == 8000


def test_a_lock_is_named_by_where_it_was_made() -> None:
    lock = sync.Lock()
    assert lock.name.startswith("lock created at ")
    assert __file__ in lock.name


def test_rlock_release_by_another_thread_is_refused() -> None:
    lock = sync.RLock("r")
    lock.acquire()
    w = Worker(lock.release, "other")
    error = w.finish()
    assert isinstance(error, RuntimeError)
    lock.release()


# -- Condition --------------------------------------------------------------------------


def test_producer_consumer_with_a_condition_is_not_a_deadlock() -> None:
    cond = sync.Condition(name="queue")
    items: list[int] = []
    got: list[int] = []
    n = 500

    def produce() -> None:
        for i in range(n):
            with cond:
                items.append(i)
                cond.notify()

    def consume() -> None:
        while len(got) < n:
            with cond:
                cond.wait_for(lambda: bool(items), timeout=JOIN)
                got.extend(items)
                items.clear()

    workers = [Worker(consume, "consumer"), Worker(produce, "producer")]
    assert [w.finish() for w in workers] == [None, None]
    assert got == list(range(n))


def test_condition_wait_lets_go_of_every_level_of_an_rlock() -> None:
    lock = sync.RLock("r")
    cond = sync.Condition(lock)
    ready = threading.Event()
    seen: list[object] = []

    def waiter() -> None:
        with lock, lock:  # two levels
            ready.set()
            assert cond.wait(JOIN)
            seen.append(lock._count)
        seen.append(lock.owner)

    w = Worker(waiter, "waiter")
    ready.wait(JOIN)
    with cond:  # possible only if wait() let go of both levels
        cond.notify()
    assert w.finish() is None
    assert seen == [2, None]


def test_a_condition_over_a_lock_and_its_default_name() -> None:
    cond = sync.Condition(sync.Lock("plain"))
    with cond:
        assert not cond.wait(0.01)  # times out, holding the lock again
        cond.notify_all()
    default = sync.Condition()
    assert default._lock.name.startswith("condition created at ")  # type: ignore[attr-defined]
    assert __file__ in default._lock.name  # type: ignore[attr-defined]


def test_deadlock_policy_all_raises_in_every_thread_of_the_cycle(
    make: Callable[[str], sync.Lock | sync.RLock],
) -> None:
    assert sync.deadlock_policy() == "one"
    sync.deadlock_policy("all")
    try:
        errors = crossed(make, 3)
    finally:
        sync.deadlock_policy("one")
    assert all(isinstance(e, conveyor.DeadlockError) for e in errors)
    assert len({str(e) for e in errors}) == 1  # one cycle, told to each of its threads


# -- Semaphore, BoundedSemaphore, Event: drop-in, and described while waited on -------


@pytest.mark.parametrize("kind", ["Semaphore", "BoundedSemaphore"])
def test_semaphores_behave_as_threading_s(kind: str) -> None:
    ours, theirs = getattr(sync, kind)(2, name="s"), getattr(threading, kind)(2)
    for sem in (ours, theirs):
        assert sem.acquire()
        assert sem.acquire(blocking=False)
        assert not sem.acquire(blocking=False)
        assert not sem.acquire(timeout=0.001)
        sem.release()
        with sem:
            assert not sem.acquire(blocking=False)
        sem.release()
        if kind == "BoundedSemaphore":
            with pytest.raises(ValueError, match="released too many times"):
                sem.release()
        else:
            sem.release(2)
            assert sem.acquire(blocking=False)


def test_event_behaves_as_threading_s() -> None:
    ev = sync.Event("go")
    assert not ev.is_set()
    assert not ev.wait(0.001)
    w = Worker(lambda: ev.wait(JOIN) or (_ for _ in ()).throw(AssertionError("not set")), "w")
    ev.set()
    assert w.finish() is None
    assert ev.wait()
    assert ev.is_set()
    ev.clear()
    assert not ev.is_set()


@pytest.mark.parametrize("kind", ["lock", "semaphore", "event", "condition"])
def test_blocked_on_describes_what_a_thread_waits_for(kind: str) -> None:
    lock = sync.Lock("the lock")
    sem = sync.Semaphore(0, name="the semaphore")
    ev = sync.Event("the event")
    cond = sync.Condition(name="the condition")
    lock.acquire()
    wait: Callable[[], object] = {
        "lock": lambda: lock.acquire() and lock.release(),  # type: ignore[func-returns-value]
        "semaphore": sem.acquire,
        "event": ev.wait,
        "condition": lambda: cond.acquire() and cond.wait() and cond.release(),  # type: ignore[func-returns-value]
    }[kind]
    w = Worker(wait, "waiter")
    wait_state(lambda: sync.blocked_on(w.ident or 0) is not None)
    text = sync.blocked_on(w.ident or 0)
    assert text is not None
    expected = {
        "lock": "the lock, held by MainThread (taken at ",
        "semaphore": "the semaphore (none of its permits free)",
        "event": "the event (not set)",
        "condition": "condition the condition",
    }[kind]
    assert text.startswith(expected), text
    lock.release()
    sem.release()
    ev.set()
    with cond:
        cond.notify()
    assert w.finish() is None
    assert sync.blocked_on(w.ident or 0) is None
    assert sync.blocked_on(threading.get_ident()) is None
