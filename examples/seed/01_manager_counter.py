"""A counter shared by ten processes: without shared state, then with it.

Reproduces from the notes: 1.进程间通信 -- "a、用Manager". There, ten processes
share ``Manager().dict({'num': 10})``; each one does the read-modify-write
``temp = dic['num']; time.sleep(0.1); dic['num'] = temp - 1`` while it holds a
``multiprocessing.Lock``, and the parent finally prints ``{'num': 0}``. Without
the lock the ten updates overlap and most of them are lost.

What changes with conveyor: nothing is shared, so nothing needs a lock. Ten
process workers each *return* their change (-1) and the consumer, the main
process iterating over the run, applies them to its own dict. Every value has
exactly one writer, so no update can be lost, and the result is the notes' one:
num goes from 10 to 0.

The second half is the notes' version itself, with shared state: ten process
workers share ``conveyor.shared.Dict({'num': 10})`` and each does the same
read-modify-write, ``temp = dic['num']; sleep(0.1); return temp - 1``, through
``dic.update('num', ...)``, which runs it holding the dict's lock. No lock is
written by hand, no update is lost, and the main process prints ``{'num': 0}``.
"""

import os
import sys
import time

import conveyor as cv

# Sleeps follow the notes; CONVEYOR_EXAMPLES_FAST=1 or --fast makes them ten times shorter.
FAST = "--fast" in sys.argv[1:] or os.environ.get("CONVEYOR_EXAMPLES_FAST", "") not in ("", "0")
SCALE = 0.1 if FAST else 1.0


def sleep(seconds: float) -> None:
    """time.sleep, scaled for fast runs."""
    time.sleep(seconds * SCALE)


def task(_: int) -> tuple[int, int]:
    """The notes' task, minus the shared dict: do the work, report the change."""
    sleep(0.1)  # the notes sleep between reading and writing dic['num']
    return os.getpid(), -1


shared_dic = cv.shared.Dict({"num": 10})  # the notes' Manager().dict({'num': 10})


def shared_task(_: int) -> int:
    """The notes' task on shared state: the read-modify-write, atomic without a lock."""

    def decrement(temp: int) -> int:
        sleep(0.1)  # between the read and the write, as in the notes
        return temp - 1

    shared_dic.update("num", decrement)
    return os.getpid()


def main() -> None:
    dic = {"num": 10}  # owned by the main process: only it ever writes here
    print("before:", dic)

    pipeline = (
        cv.Pipeline(name="counter")
        .source(range(10))  # ten tasks, like the notes' ten Process objects
        .map(task, workers=10, kind="process")
    )
    pids = set()
    for pid, change in pipeline:  # the consumer: results arrive here, one by one
        pids.add(pid)
        dic["num"] += change

    outside = os.getpid() not in pids
    print(f"10 changes computed in worker processes, none in the main one: {outside}")
    print("after:", dic)  # {'num': 0}, as in the notes

    print("shared, before:", shared_dic.to_dict())
    pipeline = (
        cv.Pipeline(name="shared-counter")
        .source(range(10))
        .map(shared_task, workers=10, kind="process")
    )
    pids = set(pipeline)
    print(f"10 updates made in worker processes, none in the main one: {os.getpid() not in pids}")
    print("shared, after:", shared_dic.to_dict())  # {'num': 0}


if __name__ == "__main__":
    main()
