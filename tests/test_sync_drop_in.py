"""conveyor.sync's Lock and RLock, both implementations, against threading's: the same
errors for the same misuse, waits that a signal interrupts, the fork protocol, and
where the owner took the lock."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from conveyor import sync
from tests.sync_implementations import lock_implementation  # noqa: F401 (autouse)

JOIN = 30.0  # only reached if something hangs
PAIRS = [("Lock", threading.Lock), ("RLock", threading.RLock)]


@contextlib.contextmanager
def held_by_another_thread(lock: sync.Lock | sync.RLock) -> Iterator[None]:
    """Inside the block, another thread holds ``lock``; after it, the lock is free."""
    held, done = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            done.wait(JOIN)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(JOIN)
    try:
        yield
    finally:
        done.set()
        t.join(JOIN)
        assert not t.is_alive()


def error_of(call: Callable[[], object]) -> tuple[type[BaseException], str] | None:
    try:
        call()
    except Exception as exc:
        return type(exc), str(exc)
    return None


@pytest.mark.parametrize(("kind", "theirs"), PAIRS, ids=[k for k, _ in PAIRS])
@pytest.mark.parametrize(
    "args",
    [
        {"blocking": False, "timeout": 1},
        {"timeout": -2},
        {"timeout": -0.5},
        {"timeout": "1"},
        {"timeout": threading.TIMEOUT_MAX * 2},
    ],
    ids=["non-blocking with a timeout", "-2", "-0.5", "a string", "too large"],
)
def test_bad_acquire_arguments_fail_as_threading_s(
    kind: str, theirs: Callable[[], object], args: dict[str, object]
) -> None:
    ours = getattr(sync, kind)("x")
    expected = error_of(lambda: theirs().acquire(**args))  # type: ignore[attr-defined]
    assert expected is not None
    got = error_of(lambda: ours.acquire(**args))
    assert got is not None
    assert got[0] is expected[0]
    if expected[0] is ValueError:
        assert got[1] == expected[1]
    assert not ours.locked() if kind == "Lock" else ours.owner is None


def test_releasing_an_unlocked_lock_fails_as_threading_s() -> None:
    expected = error_of(threading.Lock().release)
    assert error_of(sync.Lock("x").release) == expected == (RuntimeError, "release unlocked lock")


def test_rlock_release_by_a_non_owner_fails_as_threading_s() -> None:
    message = (RuntimeError, "cannot release un-acquired lock")
    assert error_of(sync.RLock("r").release) == error_of(threading.RLock().release) == message
    lock = sync.RLock("r")
    lock.acquire()
    errors: list[object] = []
    t = threading.Thread(target=lambda: errors.append(error_of(lock.release)))
    t.start()
    t.join(JOIN)
    assert errors == [message]
    assert lock.owner == threading.get_ident()
    lock.release()
    assert lock.owner is None


@pytest.mark.parametrize("kind", ["Lock", "RLock"])
def test_acquire_takes_threading_s_arguments(kind: str) -> None:
    lock = getattr(sync, kind)("x")
    assert lock.acquire(True, -1)
    lock.release()
    assert lock.acquire(blocking=False)
    lock.release()
    assert lock.acquire(timeout=0)
    lock.release()
    assert lock.acquire(True, 0.5)
    lock.release()
    with pytest.raises(TypeError):
        lock.acquire(True, -1, 3)
    with pytest.raises(TypeError):
        lock.acquire(wait=True)


@pytest.mark.parametrize("kind", ["Lock", "RLock"])
def test_a_timed_acquire_times_out(kind: str) -> None:
    lock = getattr(sync, kind)("x")
    with held_by_another_thread(lock):
        start = time.monotonic()
        assert not lock.acquire(timeout=0.05)
        assert time.monotonic() - start >= 0.04
        assert not lock.acquire(blocking=False)
    assert lock.acquire(timeout=JOIN)
    lock.release()


class Interrupted(Exception):
    pass


@pytest.fixture
def alarm() -> Iterator[Callable[[float], None]]:
    """``alarm(seconds)``: SIGALRM then, whose handler raises Interrupted (as Ctrl-C
    raises KeyboardInterrupt)."""
    if not hasattr(signal, "setitimer"):
        pytest.skip("no setitimer here")

    def handler(signum: int, frame: object) -> None:
        raise Interrupted

    before = signal.signal(signal.SIGALRM, handler)
    try:
        yield lambda seconds: signal.setitimer(signal.ITIMER_REAL, seconds) and None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)


@pytest.mark.parametrize("kind", ["Lock", "RLock"])
@pytest.mark.parametrize("timeout", [-1, JOIN], ids=["untimed", "timed"])
def test_a_signal_interrupts_a_wait(
    kind: str, timeout: float, alarm: Callable[[float], None]
) -> None:
    lock = getattr(sync, kind)("x")
    with held_by_another_thread(lock):
        start = time.monotonic()
        alarm(0.1)
        with pytest.raises(Interrupted):
            lock.acquire(timeout=timeout)
        assert time.monotonic() - start < JOIN / 2
    with lock:  # still works, and free again after
        pass
    assert lock.owner is None


@pytest.mark.parametrize("kind", ["Lock", "RLock"])
def test_at_fork_reinit_leaves_the_lock_free(kind: str) -> None:
    lock = getattr(sync, kind)("x")
    lock.acquire()
    lock._at_fork_reinit()
    assert lock.owner is None
    assert lock.acquire(blocking=False)
    assert lock.owner == threading.get_ident()
    lock.release()
    assert lock.owner is None


@pytest.mark.parametrize("kind", ["Lock", "RLock"])
def test_taken_is_where_the_owner_took_it(kind: str) -> None:
    lock = getattr(sync, kind)("x")
    line = sys._getframe().f_lineno
    lock.acquire()
    assert lock._taken == (__file__, line + 1)
    lock.release()
    with lock:
        assert lock._taken == (__file__, line + 4)
    for _ in range(2):  # the same place twice, then another
        with lock:
            assert lock._taken == (__file__, line + 7)
    assert lock.acquire(timeout=1)
    assert lock._taken == (__file__, line + 9)
    assert lock.taken_at == f"{__file__}:{line + 9}"
    lock.release()


@pytest.mark.parametrize("kind", ["Lock", "RLock"])
def test_after_a_condition_wait_taken_is_where_it_waited(kind: str) -> None:
    lock = getattr(sync, kind)("x")
    cond = sync.Condition(lock)
    with cond:
        line = sys._getframe().f_lineno
        assert not cond.wait(0.001)
        assert lock._taken == (__file__, line + 1)
        assert cond._is_owned()  # type: ignore[attr-defined]
    assert not cond._is_owned()  # type: ignore[attr-defined]


def test_locks_are_weakly_referenceable_and_collected() -> None:
    import gc
    import weakref

    for kind in ("Lock", "RLock"):
        lock = getattr(sync, kind)("x")
        lock.acquire()
        ref = weakref.ref(lock)
        del lock
        gc.collect()
        assert ref() is None
