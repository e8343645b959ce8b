"""Starting a thread, way two: a class.

Reproduces from the notes: 二、开启线程的两种方式 -- 方式二. There,
``class MyThread(Thread)`` overrides ``run()`` to print "<name> is running" and
sleep 3 s; ``MyThread().start()`` runs it while the main thread prints '主线程'.

What changes with conveyor: a stage class instead of a Thread subclass. It has
``process(item)`` for every item and, optionally, ``setup()`` and
``teardown()``. conveyor makes one instance per worker: ``setup()`` runs once
when the worker starts (open a connection, load a model), ``process()`` for each
item the worker takes, ``teardown()`` once at the end (also after an error).
The worker's name, the ``self.name`` of the notes, comes from
``conveyor.current_worker()``.
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


class MyThread:
    """The notes' MyThread: run() became process(item), plus setup and teardown."""

    def setup(self) -> None:
        self.name = cv.current_worker().name
        self.done = 0
        say(f"{self.name} setup (once per worker)")

    def process(self, item: str) -> None:
        say(f"{self.name} is running ({item})")
        sleep(3)
        self.done += 1

    def teardown(self) -> None:
        say(f"{self.name} teardown after {self.done} item(s)")


def main() -> None:
    # One worker and two items: setup once, process twice, teardown once.
    run = cv.Pipeline(name="way-2").source(["egon", "alex"]).sink(MyThread, kind="thread").run()
    say("主线程")
    run.wait()
    say(f"run {run.state}")


if __name__ == "__main__":
    main()
