"""A mutex around a read-modify-write, on 100 thread workers.

Reproduces from the notes: 六、线程互斥锁. There, 100 threads each run
``temp = x; time.sleep(0.1); x = temp - 1`` on a global ``x = 100`` while holding
one ``threading.Lock``; the main thread joins them and prints ``主 0`` and the
elapsed time (about 10 s: the lock lets one thread at a time through).

What changes with conveyor: the 100 threads are 100 workers of one thread stage,
fed 100 items. The lock is still needed, for the same reason, and this example
shows it: without it every worker reads ``x`` before the others have written
it, and most decrements are lost. The conveyor way needs no lock at all: each
worker returns its change and the consumer applies it (as in
01_manager_counter.py) -- correct, and since nothing is serialised, 100 times
faster.
"""

import os
import sys
import threading
import time
from collections.abc import Callable

import conveyor as cv

# Sleeps follow the notes; CONVEYOR_EXAMPLES_FAST=1 or --fast makes them ten times shorter.
FAST = "--fast" in sys.argv[1:] or os.environ.get("CONVEYOR_EXAMPLES_FAST", "") not in ("", "0")
SCALE = 0.1 if FAST else 1.0

mutex = threading.Lock()
x = 100


def sleep(seconds: float) -> None:
    """time.sleep, scaled for fast runs."""
    time.sleep(seconds * SCALE)


def task(_: int) -> None:
    """The notes' task: the lock makes the read-modify-write one step."""
    global x
    with mutex:  # mutex.acquire() ... mutex.release(), even if the body raises
        temp = x
        sleep(0.1)
        x = temp - 1


def task_without_lock(_: int) -> None:
    """The same without the lock: reads and writes of different workers interleave."""
    global x
    temp = x
    sleep(0.1)
    x = temp - 1


def decrement(_: int) -> int:
    """The conveyor way: no shared x; return the change."""
    sleep(0.1)
    return -1


def hundred_workers(fn: Callable[[int], None]) -> float:
    """Run ``fn`` on 100 items with 100 thread workers; return the elapsed seconds."""
    global x
    x = 100
    start = time.monotonic()
    run = cv.Pipeline(name="mutex").source(range(100)).sink(fn, workers=100, kind="thread").run()
    run.wait()
    return time.monotonic() - start


def main() -> None:
    elapsed = hundred_workers(task)
    print("主", x)  # 0
    print(f"with the lock: x = {x}, {elapsed:.2f}s (one worker at a time)")

    elapsed = hundred_workers(task_without_lock)
    print(f"without the lock: x = {x}, {elapsed:.2f}s ({x} decrements lost)")

    start = time.monotonic()
    pipeline = cv.Pipeline(name="no-lock").source(range(100)).map(decrement, workers=100)
    total = 100 + sum(pipeline)
    print(f"without shared state: x = {total}, {time.monotonic() - start:.2f}s (no lock needed)")


if __name__ == "__main__":
    main()
