"""Three producers, two consumers, one queue -- and a run that ends by itself.

Reproduces from the notes: 2.生产者消费者模型. There, three producer processes
(egon makes 包子, 刘清政 makes 泔水, 杨军 makes 米饭; five items each, sleeping
1-2 s before each) put into one ``Queue``, and two consumer processes (alex and
梁书东) loop ``while True: res = q.get()``, sleep 1-3 s and print what they ate.
The consumers never learn that the producers are done, so the program never
stops.

What changes with conveyor: the producers are the source of a pipeline
(``source(p1, p2, p3, kind="process")``: each yields its items instead of
putting them into a queue) and the consumers are its sink
(``sink(consumer, workers=2, kind="process")``). The channel between them is
bounded and made by conveyor. When every producer has returned, the end of the
stream reaches the consumers: they finish what is left and exit, ``run.wait()``
returns, and the program ends. A consumer learns its name from
``conveyor.current_worker()`` (its index in the stage) and a name table.
"""

import functools
import os
import random
import sys
import time
from collections.abc import Iterator

import conveyor as cv

# Sleeps follow the notes; CONVEYOR_EXAMPLES_FAST=1 or --fast makes them ten times shorter.
FAST = "--fast" in sys.argv[1:] or os.environ.get("CONVEYOR_EXAMPLES_FAST", "") not in ("", "0")
SCALE = 0.1 if FAST else 1.0

PRODUCERS = [("egon", "包子"), ("刘清政", "泔水"), ("杨军", "米饭")]
CONSUMERS = {1: "alex", 2: "梁书东"}  # worker index in the consumer stage -> name


def sleep(seconds: float) -> None:
    """time.sleep, scaled for fast runs."""
    time.sleep(seconds * SCALE)


def say(*parts: object) -> None:
    """print() for concurrent workers: one write per line, so that lines from
    different processes never interleave (print() writes the text and the newline
    separately, which matters when stdout is unbuffered)."""
    sys.stdout.write(" ".join(map(str, parts)) + "\n")
    sys.stdout.flush()


def producer(name: str, food: str) -> Iterator[str]:
    """The notes' ``producer(name, q, food)``: it yields its items instead of
    putting them into ``q``; conveyor puts them into the channel (and waits if it
    is full). ``functools.partial`` binds the arguments, as ``Process(args=...)`` did."""
    for i in range(5):
        sleep(random.randint(1, 2))
        res = f"{food}{i}"
        say(f"\033[45m生产者者===》{name} 生产了 {res}\033[0m")
        yield res


def consumer(res: str) -> None:
    """The body of the notes' ``while True`` loop: conveyor does the get()."""
    name = CONSUMERS[cv.current_worker().index]
    sleep(random.randint(1, 3))
    say(f"\033[46m消费者===》{name} 吃了 {res}\033[0m")


def main() -> None:
    run = (
        cv.Pipeline(name="canteen")
        .source(
            *(functools.partial(producer, name, food) for name, food in PRODUCERS), kind="process"
        )
        .sink(consumer, workers=2, kind="process", name="consumer")
        .run()
    )
    run.wait()  # returns once the producers are done and the consumers have eaten everything

    print(f"run {run.name!r} ended by itself: {run.state}")
    stats = run.stats()
    print(f"produced: {stats['source'].items_out}, eaten: {stats['consumer'].items_out}")
    for w in sorted(run.workers(), key=lambda w: w.index):
        if w.stage == "consumer":
            print(f"{CONSUMERS[w.index]} ({w.name}) ate {w.items_done} item(s)")


if __name__ == "__main__":
    main()
