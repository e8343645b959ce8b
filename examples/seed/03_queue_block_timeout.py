"""Non-blocking and timed put/get: queue.Full, queue.Empty, and conveyor.Closed.

Reproduces from the notes: 1.进程间通信 -- the "了解" part after ``Queue(3)``:
``put(..., block=False)`` on a full queue raises ``queue.Full``;
``put(..., block=True, timeout=3)`` waits 3 s, then raises ``queue.Full``;
``get(block=False)`` on an empty queue raises ``queue.Empty``;
``get(block=True, timeout=2)`` waits 2 s, then raises ``queue.Empty``; and
"timeout不能和block=False连用" (with block=False the timeout is ignored).

What changes with conveyor: ``conveyor.Channel(3, kind="process")`` raises the
very same ``queue.Full`` and ``queue.Empty`` (conveyor's ``Full`` subclasses
``queue.Full``, so existing ``except queue.Full`` code keeps working). On top of
that a channel can be closed: ``put`` after ``close()`` raises
``conveyor.Closed``, and ``get`` on a closed channel returns what is left, then
raises ``conveyor.Closed`` instead of blocking forever. ``put_many`` says how
many of its items went in before it gave up.
"""

import os
import queue
import sys
import time
from collections.abc import Callable

import conveyor as cv

# Timeouts follow the notes; CONVEYOR_EXAMPLES_FAST=1 or --fast makes them ten times shorter.
FAST = "--fast" in sys.argv[1:] or os.environ.get("CONVEYOR_EXAMPLES_FAST", "") not in ("", "0")
SCALE = 0.1 if FAST else 1.0


def attempt(label: str, call: Callable[[], object]) -> None:
    """Run one channel call and print what it returned or which exception it raised."""
    start = time.monotonic()
    try:
        result = call()
    except queue.Full as exc:
        outcome = f"raised queue.Full ({exc})"
    except queue.Empty:
        outcome = "raised queue.Empty"
    except cv.Closed as exc:
        outcome = f"raised conveyor.Closed ({exc})"
    else:
        outcome = f"-> {result!r}"
    waited = time.monotonic() - start
    note = f"  [after {waited:.1f}s]" if waited >= 0.05 else ""
    print(f"{label:<44} {outcome}{note}")


def main() -> None:
    q: cv.Channel[object] = cv.Channel(3, kind="process")
    put_timeout = 3 * SCALE  # the notes: timeout=3
    get_timeout = 2 * SCALE  # the notes: timeout=2

    print("-- put with block=False")
    attempt("q.put('first', block=False)", lambda: q.put("first", block=False))
    attempt("q.put('second', block=False)", lambda: q.put("second", block=False))
    attempt("q.put('third', block=False)", lambda: q.put("third", block=False))
    attempt("q.put('fourth', block=False)", lambda: q.put("fourth", block=False))

    print("-- get with block=False")
    attempt("q.get(block=False)", lambda: q.get(block=False))
    attempt("q.get(block=False)", lambda: q.get(block=False))
    attempt("q.get(block=False)", lambda: q.get(block=False))
    attempt("q.get(block=False)", lambda: q.get(block=False))

    print("-- put with block=True and a timeout")
    attempt("q.put('first', block=True)", lambda: q.put("first", block=True))
    attempt("q.put('second', block=True)", lambda: q.put("second", block=True))
    attempt("q.put('third', block=True)", lambda: q.put("third", block=True))
    attempt(
        f"q.put('fourth', block=True, timeout={put_timeout:g})",
        lambda: q.put("fourth", block=True, timeout=put_timeout),
    )

    print("-- get with block=True and a timeout")
    attempt("q.get(block=True)", lambda: q.get(block=True))
    attempt("q.get(block=True)", lambda: q.get(block=True))
    attempt("q.get(block=True)", lambda: q.get(block=True))
    attempt(
        f"q.get(block=True, timeout={get_timeout:g})",
        lambda: q.get(block=True, timeout=get_timeout),
    )

    print("-- block=False ignores the timeout, as in the notes")
    attempt("q.get(block=False, timeout=60)", lambda: q.get(block=False, timeout=60))

    print("-- conveyor: put_many tells how many items went in")
    try:
        q.put_many(["a", "b", "c", "d"], block=False)
    except queue.Full as exc:
        print(f"{'q.put_many([a, b, c, d], block=False)':<44} raised queue.Full ({exc})")
    attempt("q.get_many(10)", lambda: q.get_many(10))

    print("-- conveyor: close() ends the stream")
    attempt("q.put('last')", lambda: q.put("last"))
    q.close()
    print(f"{'q.close()':<44} -> {q!r}")
    attempt("q.put('after close')", lambda: q.put("after close"))
    attempt("q.get()  # what is left is still delivered", lambda: q.get())
    attempt("q.get()  # closed and drained: no blocking", lambda: q.get())
    attempt("q.get(block=False)", lambda: q.get(block=False))


if __name__ == "__main__":
    main()
