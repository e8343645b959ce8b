"""Starting a thread, way one: a function as the target.

Reproduces from the notes: 二、开启线程的两种方式 -- 方式一. There,
``Thread(target=task, args=('egon',)).start()`` runs ``task`` (it prints
"egon is running" and sleeps 3 s) while the main thread prints '主线程'; the
process ends when the thread is done.

What changes with conveyor: the function becomes a stage, and its argument an
item. ``Pipeline().source(['egon']).sink(task)`` on ``kind="thread"`` (the
default) starts a worker thread; ``.run()`` returns at once, like ``start()``,
and ``run.wait()`` is the ``join()``. Each item goes to the function, so the same
stage serves one name or a million.
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


def task(name: str) -> None:
    say(f"{name} is running")
    w = cv.current_worker()
    say(f"  (in worker {w.name}, a {w.kind}, not the {threading.main_thread().name})")
    sleep(3)


def main() -> None:
    run = cv.Pipeline(name="way-1").source(["egon"]).sink(task, kind="thread").run()  # t.start()
    say("主线程")
    run.wait()  # t.join(): the notes' program, too, only ends once the thread is done
    say(f"run {run.state}")


if __name__ == "__main__":
    main()
