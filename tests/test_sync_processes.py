"""Lock order across process workers: each worker checks its own locks when the
parent checks, and sends its orders back when it ends; the parent checks the merged
graph. Here stage 1's process takes a then b, stage 2's takes b then a: neither
process alone shows an inversion, the merged graph does."""

from __future__ import annotations

import os

import conveyor as cv
from conveyor import sync
from conveyor.sync import _order

# made at import, in every process: one class each (the place they are made)
LOCK_A = sync.Lock()
LOCK_B = sync.Lock()


def a_then_b(x: int) -> int:
    with LOCK_A, LOCK_B:
        return x


def b_then_a(x: int) -> int:
    with LOCK_B, LOCK_A:
        return x


def a_then_b_then_crash(x: int) -> int:
    with LOCK_A, LOCK_B:
        pass
    os._exit(3)  # dies: its lock orders must reach the parent all the same


def pipeline() -> cv.Pipeline:
    return (
        cv.Pipeline(name="orders")
        .source(range(4))
        .map(a_then_b, kind="process", workers=1)
        .map(b_then_a, kind="process", workers=1)
    )


def test_an_inversion_between_two_worker_processes_is_found_by_the_parent() -> None:
    with sync.checking_order() as report:
        assert list(pipeline()) == [0, 1, 2, 3]
    assert [p.kind for p in report.problems] == ["inversion"]
    message = report.problems[0].message
    assert "LOCK_A (made at " in message
    assert "LOCK_B (made at " in message
    assert message.count(" of process ") == 2  # each order seen in its own worker


def test_workers_do_not_check_when_the_parent_does_not() -> None:
    _order._reset()
    assert list(pipeline()) == [0, 1, 2, 3]
    assert not _order._edges  # no worker sent any


def test_the_lock_orders_of_a_worker_that_crashed_still_count() -> None:
    with sync.checking_order() as report:
        crashed = (
            cv.Pipeline()
            .source(range(2))
            .map(a_then_b_then_crash, kind="process", workers=1, on_error="skip")
            .run()
        )
        crashed.wait()
        assert len(crashed.failures) == 2
        assert report.problems == []  # one order only, so far
        assert list(cv.Pipeline().source(range(3)).map(b_then_a, kind="process")) == [0, 1, 2]
    assert [p.kind for p in report.problems] == ["inversion"]
