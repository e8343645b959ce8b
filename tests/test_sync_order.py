"""Lock-order checking: the scenario suite. No false positive (re-entry, condition
wait, ordered philosophers, a gate lock, producer-consumer with a condition,
non-blocking and timed acquires, a lock released by another thread) and no false
negative (AB/BA, a three-lock ring, philosophers whose forks come from one line,
waiting on a condition while holding another lock). The threads of a scenario run
one after the other: an inversion is found without ever hanging."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from conveyor import sync
from conveyor.sync import _order
from tests.sync_implementations import lock_implementation  # noqa: F401 (autouse)

JOIN = 30.0  # only reached if something hangs


@pytest.fixture
def report() -> Iterator[sync.OrderReport]:
    with sync.checking_order() as found:
        yield found


def in_thread(fn: Callable[[], object], name: str) -> None:
    """Run fn in a thread of that name, to the end; re-raise what it raised."""
    errors: list[BaseException] = []

    def body() -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=body, name=name, daemon=True)
    t.start()
    t.join(JOIN)
    assert not t.is_alive(), f"{name} hung"
    if errors:
        raise errors[0]


def kinds(report: sync.OrderReport) -> list[str]:
    return [p.kind for p in report.problems]


# -- no false negative ----------------------------------------------------------------


def test_ab_then_ba_is_an_inversion_with_both_orders_and_places(
    report: sync.OrderReport,
) -> None:
    a, b = sync.Lock("a"), sync.Lock("b")

    def ab() -> None:
        with a, b:
            pass

    def ba() -> None:
        with b, a:
            pass

    in_thread(ab, "T1")
    in_thread(ba, "T2")
    assert kinds(report) == ["inversion"]
    message = report.problems[0].message
    assert message.startswith("lock order inversion: ")
    assert "a then b" in message
    assert "b then a" in message
    assert "thread T2 took b at " in message
    assert "thread T1 took a at " in message
    assert f"{__file__}:" in message
    assert "would deadlock" in message


def test_a_ring_of_three_locks(report: sync.OrderReport) -> None:
    locks = [sync.Lock(n) for n in "abc"]
    for i in range(3):
        first, then = locks[i], locks[(i + 1) % 3]

        def take(first: sync.Lock = first, then: sync.Lock = then) -> None:
            with first, then:
                pass

        in_thread(take, f"T{i}")
    assert kinds(report) == ["inversion"]
    message = report.problems[0].message
    for order in ("a then b", "b then c", "c then a"):
        assert order in message
    assert "3 threads" in message


def test_philosophers_whose_forks_come_from_one_line(report: sync.OrderReport) -> None:
    forks = [sync.Lock() for _ in range(5)]  # one class: one line made them all
    for i in range(5):
        left, right = forks[i], forks[(i + 1) % 5]

        def eat(left: sync.Lock = left, right: sync.Lock = right) -> None:
            with left, right:
                pass

        in_thread(eat, f"philosopher {i}")
    assert kinds(report) == ["inversion"]
    assert report.problems[0].message.count(" then ") >= 5


def test_a_gate_held_for_only_one_of_the_orders_does_not_protect(
    report: sync.OrderReport,
) -> None:
    gate, a, b = sync.Lock("gate"), sync.Lock("a"), sync.Lock("b")

    def gated_ab() -> None:
        with gate, a, b:
            pass

    def bare_ba() -> None:
        with b, a:
            pass

    in_thread(gated_ab, "T1")
    in_thread(bare_ba, "T2")
    assert kinds(report) == ["inversion"]


def test_a_gate_taken_between_the_two_locks_does_not_protect(
    report: sync.OrderReport,
) -> None:
    gate, a, b = sync.Lock("gate"), sync.Lock("a"), sync.Lock("b")

    def one() -> None:
        with a, gate, b:
            pass

    def other() -> None:
        with b, gate, a:
            pass

    in_thread(one, "T1")
    in_thread(other, "T2")
    assert "inversion" in kinds(report)


@pytest.mark.parametrize("kind", ["Lock", "RLock"])
def test_waiting_on_a_condition_while_holding_another_lock(
    report: sync.OrderReport, kind: str
) -> None:
    outer = getattr(sync, kind)("outer")
    cond = sync.Condition(name="ready")
    waiting = threading.Event()
    flag: list[bool] = []

    def waiter() -> None:
        with outer, cond:
            waiting.set()
            cond.wait_for(lambda: bool(flag))  # untimed, holding outer

    t = threading.Thread(target=waiter, name="waiter", daemon=True)
    t.start()
    waiting.wait(JOIN)
    with cond:  # the notifier does not need outer: no hang here
        flag.append(True)
        cond.notify()
    t.join(JOIN)
    assert not t.is_alive()
    assert kinds(report) == ["wait while holding"]
    message = report.problems[0].message
    assert message.startswith("condition wait while holding a lock: thread waiter waits on ")
    assert "while holding outer (taken at " in message
    assert f"{__file__}:" in message


@pytest.mark.parametrize("kind", ["Event", "Semaphore"])
def test_waiting_on_an_event_or_semaphore_while_holding_a_lock(
    report: sync.OrderReport, kind: str
) -> None:
    lock = sync.Lock("held")
    waitable = sync.Event("go") if kind == "Event" else sync.Semaphore(0, name="go")
    started = threading.Event()

    def waiter() -> None:
        with lock:
            started.set()
            if isinstance(waitable, sync.Event):
                waitable.wait()
            else:
                waitable.acquire()

    t = threading.Thread(target=waiter, name="waiter", daemon=True)
    t.start()
    started.wait(JOIN)
    for _ in range(int(JOIN / 0.001)):  # until the waiter is on record as waiting
        if sync.blocked_on(t.ident or 0):
            break
        started.wait(0.001)
    waitable.set() if isinstance(waitable, sync.Event) else waitable.release()
    t.join(JOIN)
    assert not t.is_alive()
    assert kinds(report) == ["wait while holding"]
    assert "wait while holding a lock" in report.problems[0].message
    assert "held (taken at " in report.problems[0].message


def test_the_seed_deadlock_without_its_sleeps(report: sync.OrderReport) -> None:
    """The course's deadlock: func1 takes A then B, func2 takes B then A; ten threads
    run both. Without the sleep between the two acquires it usually completes, and
    the inversion is reported anyway."""
    mutex_a = sync.Lock()
    mutex_b = sync.Lock()

    def func1() -> None:
        mutex_a.acquire()
        mutex_b.acquire()
        mutex_b.release()
        mutex_a.release()

    def func2() -> None:
        mutex_b.acquire()
        mutex_a.acquire()
        mutex_a.release()
        mutex_b.release()

    for i in range(10):
        in_thread(lambda: (func1(), func2()), f"Thread-{i + 1}")
    assert kinds(report) == ["inversion"]
    message = report.problems[0].message
    assert "mutex_a (made at " in message
    assert "mutex_b (made at " in message


# -- no false positive ----------------------------------------------------------------


def test_rlock_reentry_and_nested_locks_in_one_order(report: sync.OrderReport) -> None:
    r, a = sync.RLock("r"), sync.Lock("a")

    def nested() -> None:
        with r, r, a, r:  # re-entering r while holding a: not a new order
            pass

    for i in range(3):
        in_thread(nested, f"T{i}")
    assert report.problems == []


def test_ordered_philosophers(report: sync.OrderReport) -> None:
    forks = [sync.Lock() for _ in range(5)]
    for i in range(5):
        low, high = sorted((i, (i + 1) % 5))

        def eat(low: int = low, high: int = high) -> None:
            with forks[low], forks[high]:
                pass

        in_thread(eat, f"philosopher {i}")
    assert report.problems == []


def test_a_gate_lock_that_orders_everything(report: sync.OrderReport) -> None:
    gate, a, b = sync.Lock("gate"), sync.Lock("a"), sync.Lock("b")

    def ab() -> None:
        with gate, a, b:
            pass

    def ba() -> None:
        with gate, b, a:
            pass

    in_thread(ab, "T1")
    in_thread(ba, "T2")
    assert report.problems == []


def test_producer_consumer_with_a_condition(report: sync.OrderReport) -> None:
    stats = sync.Lock("stats")
    cond = sync.Condition(name="queue")
    items: list[int] = []
    got: list[int] = []
    n = 200

    def produce() -> None:
        for i in range(n):
            with cond:
                items.append(i)
                cond.notify()
                with stats:  # always cond, then stats
                    pass

    def consume() -> None:
        while len(got) < n:
            with cond:
                cond.wait_for(lambda: bool(items))
                got.extend(items)
                items.clear()
                with stats:
                    pass

    threads = [threading.Thread(target=f, daemon=True) for f in (consume, produce)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN)
        assert not t.is_alive()
    assert got == list(range(n))
    assert report.problems == []


@pytest.mark.parametrize("kind", ["Lock", "RLock"])
def test_non_blocking_and_timed_acquires_record_no_order(
    report: sync.OrderReport, kind: str
) -> None:
    a, b = getattr(sync, kind)("a"), getattr(sync, kind)("b")

    def ab() -> None:
        with a:
            assert b.acquire(blocking=False)
            b.release()

    def ba() -> None:
        with b:
            assert a.acquire(timeout=JOIN)
            a.release()

    in_thread(ab, "T1")
    in_thread(ba, "T2")
    assert report.problems == []


def test_a_lock_released_by_another_thread_leaves_its_holder(
    report: sync.OrderReport,
) -> None:
    signal, a = sync.Lock("signal"), sync.Lock("a")
    taken = threading.Event()
    signal.acquire()  # main takes it; a worker lets it go, as a one-shot signal

    def let_go() -> None:
        signal.release()

    in_thread(let_go, "releaser")
    taken.set()

    def a_then_signal() -> None:
        with a, signal:
            pass

    with a:  # had signal stayed on main's stack, this would be "signal then a"
        pass
    in_thread(a_then_signal, "T1")
    assert report.problems == []


def test_condition_wait_lets_its_own_lock_go(report: sync.OrderReport) -> None:
    cond = sync.Condition(sync.Lock("own"))
    with cond:
        assert not cond.wait(0.001)
    done: list[bool] = []

    def waiter() -> None:
        with cond:
            cond.wait_for(lambda: bool(done))

    t = threading.Thread(target=waiter, daemon=True)
    t.start()
    with cond:
        done.append(True)
        cond.notify()
    t.join(JOIN)
    assert report.problems == []


# -- settings ------------------------------------------------------------------------


def test_off_by_default_and_nothing_recorded_when_off() -> None:
    assert not _order.on
    a, b = sync.Lock("a"), sync.Lock("b")
    with a, b:
        pass
    with b, a:
        pass
    assert not _order._edges


def test_warn_policy() -> None:
    a, b = sync.Lock("a"), sync.Lock("b")
    with sync.checking_order(on_problem="warn"):
        with a, b:
            pass
        with pytest.warns(sync.LockOrderWarning, match="lock order inversion: "):
            with b, a:
                pass


def test_raise_policy_lets_the_lock_go() -> None:
    a, b = sync.Lock("a"), sync.Lock("b")
    with sync.checking_order(on_problem="raise"):
        with a, b:
            pass
        with b, pytest.raises(sync.LockOrderError, match="b then a"):
            a.acquire()
        assert not a.locked()
        assert not b.locked()


def test_suppressions_by_site_and_name(report: sync.OrderReport) -> None:
    a, b = sync.Lock("a"), sync.Lock("b")
    with sync.checking_order(ignore=[f"{__file__}:*"]) as quiet:
        with a, b:
            pass
        with b, a:
            pass
    assert quiet.problems == []
    with sync.checking_order(ignore="b") as named:
        with a, b:
            pass
        with b, a:
            pass
    assert named.problems == []


def test_bad_settings_say_what_to_change() -> None:
    with pytest.raises(ValueError, match="on_problem must be 'warn', 'raise' or 'record'"):
        sync.check_order(on_problem="loud")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="deadlock_policy must be 'one' or 'all'"):
        sync.deadlock_policy("some")  # type: ignore[arg-type]


def test_merged_edges_of_two_processes_show_an_inversion() -> None:
    a, b = sync.Lock("a"), sync.Lock("b")
    with sync.checking_order():
        with a, b:
            pass
        theirs = _order.export_edges()
    with sync.checking_order() as mine:
        with b, a:
            pass
        assert mine.problems == []
        found = _order.merge_edges(theirs)
    assert [p.kind for p in found] == ["inversion"]
    assert "of process " in found[0].message
