"""Daemon threads, part two: a daemon and a normal thread side by side.

Reproduces from the notes: 五、守护线程 (second example). There, ``foo`` (print
123, sleep 5 s, print "end123") runs in a daemon thread and ``bar`` (print 456,
sleep 3 s, print "end456") in a normal one. The main thread prints "main-------"
and then waits for the non-daemon ``bar``; when ``bar`` is done the process ends
and takes the daemon with it, so the output is::

    123
    456
    main-------
    end456

and "end123" never appears ("主线程:所以子线程结束才结束", sic, and the daemon is not
waited for).

What changes with conveyor: a thread is "non-daemon" when the main code waits
for its run (``bar_run.wait()``), and "daemon" when nobody does: conveyor cancels
that run when the interpreter exits. ``grace=0`` gives the daemon run no time to
finish its current item at exit -- exactly a daemon thread's fate. With the
default grace (2 s), conveyor would give ``foo`` up to 2 s to finish the item
it holds before giving up on it; either way no worker outlives the program.
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


said_123 = threading.Event()
said_456 = threading.Event()


def foo(_: object) -> None:
    say(123)
    said_123.set()
    time.sleep(5)  # not scaled: nobody waits for foo, the program ends first
    say("end123")


def bar(_: object) -> None:
    say(456)
    said_456.set()
    sleep(3)
    say("end456")


def main() -> None:
    # t1.daemon = True
    foo_run = cv.Pipeline(name="foo").source([None]).sink(foo, kind="thread").run(grace=0)
    said_123.wait(60)  # the notes get "123, 456, main-------" from timing; make it certain
    bar_run = cv.Pipeline(name="bar").source([None]).sink(bar, kind="thread").run()  # t2
    said_456.wait(60)
    say("main-------")
    bar_run.wait()  # what the main thread does for every non-daemon thread
    say(f"(foo is still {foo_run.state}; conveyor cancels it at exit, end123 never comes)")
    # The end: foo_run is cancelled at exit, "end123" is never printed.


if __name__ == "__main__":
    main()
