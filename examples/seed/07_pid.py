"""Threads share their process's pid; process workers have their own.

Reproduces from the notes: 三、进程vs线程 -- 1、瞅一瞅PID. There, a thread prints
``os.getpid()`` and so does the main thread: the same number ("一个进程中的子线程
pid相同").

What changes with conveyor: the same function runs as a thread stage and as a
process stage (only ``kind=`` differs); the thread worker reports the main
process's pid, the process worker another one. ``run.workers()`` tells the same
from the outside: each worker's pid and native thread id.
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


def say(*parts: object) -> None:
    """print() for concurrent code: one write per line, so that lines never interleave."""
    sys.stdout.write(" ".join(map(str, parts)) + "\n")
    sys.stdout.flush()


def task(_: object) -> int:
    say(f"{os.getpid()} is running  ({cv.current_worker().kind} worker)")
    sleep(3)
    return os.getpid()


def main() -> None:
    me = os.getpid()
    say("主线程", me)
    # Both runs start at once and run side by side.
    in_thread = cv.Pipeline(name="thread").source([1]).map(task, kind="thread").run()
    in_process = cv.Pipeline(name="process").source([1]).map(task, kind="process").run()
    [thread_pid] = list(in_thread)
    [process_pid] = list(in_process)
    say(f"thread worker: same pid as the main thread: {thread_pid == me}")
    say(f"process worker: same pid as the main thread: {process_pid == me}")
    for run in (in_thread, in_process):
        for w in run.workers():
            if w.stage == "task":
                say(f"  {run.name} worker {w.name}: pid is main's: {w.pid == me}")


if __name__ == "__main__":
    main()
