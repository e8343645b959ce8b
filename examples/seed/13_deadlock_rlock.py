"""Deadlock, and the recursive lock that removes it.

Reproduces from the notes: 7. 死锁与递归锁. The course's example: two locks,
``mutexA`` and ``mutexB``; ten threads each run ``func1`` (take A, then B) and then
``func2`` (take B, sleep, then A). While one thread sleeps in ``func2`` holding B,
another takes A in ``func1`` and waits for B: each waits for the other's lock, for
ever, and the program hangs. The fix in the notes: one recursive lock,
``mutexA = mutexB = RLock()``, which its owner may take again, and which no other
thread can take while the owner holds it at any depth.

What changes with conveyor: the ten threads are ten workers of one thread stage, and
the locks are ``conveyor.sync``'s, drop-in for ``threading``'s. The hang becomes a
``conveyor.DeadlockError`` in the thread that closed the cycle, naming both locks,
who holds which and where it was taken; with ``on_error="skip"`` the stage records
it and goes on, and its ``with`` blocks let its locks go, so the others finish.
Lock-order checking then finds the same bug in a run that did not hang: taken
without the sleep, the two orders may never meet, and the inversion is reported
anyway. The RLock version comes out clean under both.

``conveyor doctor script.py`` does all of this to a script written with plain
``threading`` locks, without changing a line of it.
"""

import os
import sys
import time

import conveyor as cv
from conveyor import sync

# Sleeps follow the notes; CONVEYOR_EXAMPLES_FAST=1 or --fast makes them shorter.
FAST = "--fast" in sys.argv[1:] or os.environ.get("CONVEYOR_EXAMPLES_FAST", "") not in ("", "0")
SLEEP = 0.1 if FAST else 1.0

mutexA = sync.Lock("mutexA")
mutexB = sync.Lock("mutexB")


def func1() -> None:
    with mutexA:
        with mutexB:
            pass


def func2(sleep: float) -> None:
    with mutexB:
        time.sleep(sleep)  # holding B: the window in which another thread takes A
        with mutexA:
            pass


def ten_threads(sleep: float) -> list[cv.Failure]:
    """The notes' ten threads, as ten thread workers; the failures they recorded."""

    def run(_: int) -> None:
        func1()
        func2(sleep)

    pipeline = cv.Pipeline(name="deadlock").source(range(10))
    run_ = pipeline.sink(run, workers=10, kind="thread", on_error="skip").run()
    run_.wait()
    return run_.failures


def main() -> None:
    global mutexA, mutexB
    failures = ten_threads(SLEEP)
    deadlocks = [f for f in failures if isinstance(f.error, cv.DeadlockError)]
    print(f"two locks, with the sleep: {len(deadlocks)} deadlock(s) reported, none hung")
    print("first report:", str(deadlocks[0].error).splitlines()[0] if deadlocks else "-")

    with sync.checking_order() as report:
        ten_threads(0.0)
    inversions = [p for p in report.problems if p.kind == "inversion"]
    print(f"two locks, without the sleep: {len(inversions)} lock order inversion(s) found")
    print("first finding:", inversions[0].message.split(" (thread ")[0] if inversions else "-")

    mutexA = mutexB = sync.RLock("mutexA = mutexB")  # the notes' fix
    with sync.checking_order() as report:
        failures = ten_threads(SLEEP)
    print(f"one RLock: {len(failures)} failure(s), {len(report.problems)} problem(s) found")


if __name__ == "__main__":
    main()
