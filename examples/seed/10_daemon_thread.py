"""Daemon threads, part one: background work that does not keep the program alive.

Reproduces from the notes: 五、守护线程 (first example). There, ``t1`` (named
'第一个线程') is made a daemon (``t1.daemon = True``) before ``start()``; it prints
"第一个线程 is running" and sleeps 3 s, but the main thread only prints '主线程'
and ends, so the daemon is killed with the process: "只要进程内没有可执行的代码守护就结束".

What changes with conveyor: there is no daemon flag, there is a lifecycle policy.
Workers never outlive their run, and a run never outlives the main program:

* ``run.cancel()`` stops a run: sources stop being read, each worker stops after
  its current item, and ``run.wait()`` raises ``conveyor.Cancelled``. That is
  the clean way to stop background work (part 1: a heartbeat that would run
  forever).
* Process workers follow the same policy (part 2): a run on worker processes
  that nobody waits for is stopped at exit too (see part 3), and no orphan
  process is left behind -- conveyor's worker processes die even when the main
  process is killed with ``kill -9``.
* A run that nobody waits for is what a daemon thread was (part 3, the notes'
  example): when the main code ends, conveyor cancels it at interpreter exit.
  Unlike a daemon thread, which dies wherever it is, a worker first gets the
  run's ``grace`` seconds (``run(grace=...)``, default 2 s, 0.5 s here) to
  finish its current item; after that, worker processes are killed and threads
  still in user code are abandoned (conveyor's worker threads are daemon
  threads, so an abandoned one then dies with the interpreter, like the notes'
  t1, which never gets to the end of its 3 s sleep).

An ``atexit`` hook registered before the first run runs after conveyor's own
exit hook (hooks run last-in, first-out), so it can show what became of the
background runs.
"""

import atexit
import itertools
import os
import sys
import threading
import time
from collections.abc import Iterator

import conveyor as cv

# Sleeps follow the notes; CONVEYOR_EXAMPLES_FAST=1 or --fast makes them ten times shorter.
FAST = "--fast" in sys.argv[1:] or os.environ.get("CONVEYOR_EXAMPLES_FAST", "") not in ("", "0")
SCALE = 0.1 if FAST else 1.0

# At exit, how long a background worker may take to finish the item it holds.
GRACE = 0.5

background: list[cv.Run[None]] = []  # the runs left running when the main code ends
beats_seen = threading.Event()
started = threading.Event()


def sleep(seconds: float) -> None:
    """time.sleep, scaled for fast runs."""
    time.sleep(seconds * SCALE)


def say(*parts: object) -> None:
    """print() for concurrent code: one write per line, so that lines never interleave."""
    sys.stdout.write(" ".join(map(str, parts)) + "\n")
    sys.stdout.flush()


def heartbeat() -> Iterator[int]:
    """A producer that never ends, like a daemon thread's ``while True`` loop."""
    for n in itertools.count(1):
        sleep(0.5)
        yield n


def show_beat(n: int) -> None:
    if n <= 3:
        say(f"heartbeat {n}")
    if n == 3:
        beats_seen.set()


def task(_: str) -> None:
    """The notes' daemon task."""
    say(f"{cv.current_worker().name} is running")
    started.set()
    time.sleep(3)  # not scaled: nobody waits for it, the program ends first


def quiet_task(_: str) -> None:
    """The same work in a worker process (silent: a process worker may not even have
    started its item when the main code ends, and then it never will)."""
    time.sleep(3)  # not scaled either


def worker_pid(run: cv.Run[None]) -> int:
    """The pid of the run's (only) worker process, once it has one."""
    deadline = time.monotonic() + 60
    while True:
        pids = [w.pid for w in run.workers() if w.kind == "process" and w.pid is not None]
        if pids:
            return pids[0]
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run.name!r} has no worker process")
        time.sleep(0.001)


def report_at_exit() -> None:
    for run in background:
        say(f"at exit: background run {run.name!r} is {run.state}")
        for w in run.workers():
            if w.stage != "source":
                say(f"  worker {w.name} ({w.kind}): alive={w.alive} abandoned={w.abandoned}")


def main() -> None:
    atexit.register(report_at_exit)  # before the first run: see the module docstring

    # Part 1: background work stopped on purpose.
    beat = cv.Pipeline(name="heartbeat").source(heartbeat).sink(show_beat, kind="thread").run()
    beats_seen.wait(60)
    beat.cancel()
    try:
        beat.wait()
    except cv.Cancelled as exc:
        say(f"cancel(): {exc}")

    # Part 2: background work on a worker process. Start it, do not wait for it.
    proc = cv.Pipeline(name="daemon-process").source(["egon"]).sink(quiet_task, kind="process")
    proc_run = proc.run(grace=GRACE)
    background.append(proc_run)
    say(f"background worker process pid={worker_pid(proc_run)}")

    # Part 3: the notes' example. Start it, do not wait for it.
    daemon = cv.Pipeline(name="daemon").source(["egon"])
    daemon = daemon.sink(task, kind="thread", name="第一个线程")
    background.append(daemon.run(grace=GRACE))
    started.wait(60)  # let it start, as the notes' thread usually has by now

    say("主线程")
    # The main code ends here, with both background runs still going.


if __name__ == "__main__":
    main()
