"""Thread attributes: name, is_alive(), active_count(), enumerate(), current_thread().

Reproduces from the notes: 四、线程对象的其他方法. There, three threads (one
named '第一个线程') print ``current_thread().name`` and sleep 3 s, while the main
thread prints ``t1.is_alive()`` (True), ``active_count()`` (4, the main thread
included), ``enumerate()`` (the live threads) and its own name (MainThread).

What changes with conveyor: inside a stage, ``conveyor.current_worker()`` gives
the worker's name (``<stage>-<index>``; the stage is named with ``name=``, as a
Thread is), stage and kind. From the main thread, ``run.workers()`` lists every
worker of a live run -- name, kind, pid, thread id, alive, state (idle, busy,
blocked...) and items done -- which covers ``is_alive()``, ``active_count()``
and ``enumerate()`` without mixing in the threads that are not yours. In the main
thread, ``current_worker()`` raises: it is not a worker.
"""

import os
import sys
import threading
import time

import conveyor as cv

# Sleeps follow the notes; CONVEYOR_EXAMPLES_FAST=1 or --fast makes them ten times shorter.
FAST = "--fast" in sys.argv[1:] or os.environ.get("CONVEYOR_EXAMPLES_FAST", "") not in ("", "0")
SCALE = 0.1 if FAST else 1.0


def sleep(seconds: float) -> None:
    """time.sleep, scaled for fast runs."""
    time.sleep(seconds * SCALE)


def say(*parts: object) -> None:
    """print() for concurrent code: one write per line, so that lines never interleave."""
    sys.stdout.write(" ".join(map(str, parts)) + "\n")
    sys.stdout.flush()


running = threading.Semaphore(0)  # one release per worker that has started its item
looked = threading.Event()  # set once the main thread has looked at the workers


def task(_: int) -> None:
    say(f"{cv.current_worker().name} is running")  # the notes: current_thread().name
    running.release()
    sleep(3)
    # The notes count on the 3 s sleep for the main thread to see all three threads
    # alive; on a busy machine that is not certain, so wait for it to have looked.
    looked.wait(60)


def wait_until_running(count: int) -> None:
    """Wait until ``count`` workers are inside ``task``."""
    for _ in range(count):
        if not running.acquire(timeout=60):
            raise TimeoutError("the workers never started")


def main() -> None:
    pipeline = cv.Pipeline(name="attrs").source(range(3))
    run = pipeline.sink(task, workers=3, kind="thread", name="线程").run()
    wait_until_running(3)

    workers = {w.name: w for w in run.workers() if w.stage == "线程"}
    say("is_alive(线程-1):", workers["线程-1"].alive)  # the notes: t1.is_alive() -> True
    say("active workers:", sum(w.alive for w in workers.values()))  # active_count(), minus main
    say("enumerate:")  # the notes: enumerate()
    for w in sorted(workers.values(), key=lambda w: w.name):
        same_pid = w.pid == os.getpid()
        say(f"  {w.name}: kind={w.kind} alive={w.alive} state={w.state} in main pid={same_pid}")
    say("主线程", threading.current_thread().name)  # MainThread
    try:
        cv.current_worker()
    except RuntimeError:
        say("current_worker() in the main thread: RuntimeError (not a worker)")

    looked.set()
    run.wait()
    done = {w.name: w for w in run.workers() if w.stage == "线程"}
    say("after wait(): is_alive(线程-1):", done["线程-1"].alive)
    say("items done:", sorted((name, w.items_done) for name, w in done.items()))


if __name__ == "__main__":
    main()
