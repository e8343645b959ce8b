"""Locks: conveyor.sync against threading, per acquire + release.

One command, one table::

    .venv/bin/python bench/bench_sync.py              # ~30 s
    .venv/bin/python bench/bench_sync.py --reps 9 --n 400000
    CONVEYOR_PURE_PYTHON=1 .venv/bin/python bench/bench_sync.py   # the fallback

Cases (each ``with lock: pass`` in a loop; nanoseconds per acquire + release):

* ``uncontended``  one thread
* ``2 threads``    two threads on the same lock, each its share of the loop; the
  figure is wall time over all acquires (on a GIL build the threads mostly take turns)
* ``nested``       one thread takes an outer lock, then an inner one (two acquires and
  releases per loop, the figure per pair): with lock-order checking on, this is the
  path that looks up the edge "outer, then inner"
* ``in a call``    ``uncontended`` with the ``with`` in a function called once per
  loop: each acquire comes from a new frame (on 3.11+ the C locks then make the
  caller's frame object to learn where it was taken; the function call itself, about
  25 ns, is in every lock's figure)

Locks: ``threading.Lock``, ``threading.RLock``, ``conveyor.sync.Lock`` and ``RLock``
(always on: owner tracking, where it was taken, the wait-for graph when an acquire
waits), and the same with lock-order checking on (``check_order()``).

Repetitions are interleaved (every lock once, then again) and the table shows the
median; the goals (issue 6: always-on within 2x of ``threading.Lock``, order checking
within 6x) are ratios of medians of the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from conveyor import sync
from conveyor.sync import _order

Factory = Callable[[], Any]

LOCKS: dict[str, tuple[Factory, bool]] = {
    "threading.Lock": (threading.Lock, False),
    "threading.RLock": (threading.RLock, False),
    "sync.Lock": (sync.Lock, False),
    "sync.RLock": (sync.RLock, False),
    "sync.Lock, order on": (sync.Lock, True),
    "sync.RLock, order on": (sync.RLock, True),
}


def uncontended(make: Factory, n: int) -> float:
    lock = make()
    start = time.perf_counter()
    for _ in range(n):
        with lock:
            pass
    return (time.perf_counter() - start) / n


def two_threads(make: Factory, n: int) -> float:
    lock = make()
    go = threading.Barrier(3)

    def spin() -> None:
        go.wait()
        for _ in range(n // 2):
            with lock:
                pass

    threads = [threading.Thread(target=spin) for _ in range(2)]
    for t in threads:
        t.start()
    go.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return (time.perf_counter() - start) / n


def in_a_call(make: Factory, n: int) -> float:
    lock = make()

    def take() -> None:
        with lock:
            pass

    start = time.perf_counter()
    for _ in range(n):
        take()
    return (time.perf_counter() - start) / n


def nested(make: Factory, n: int) -> float:
    outer, inner = make(), make()
    start = time.perf_counter()
    for _ in range(n):
        with outer, inner:
            pass
    return (time.perf_counter() - start) / n


CASES: dict[str, Callable[[Factory, int], float]] = {
    "uncontended": uncontended,
    "2 threads": two_threads,
    "nested": nested,
    "in a call": in_a_call,
}


def measure(reps: int, n: int) -> dict[str, dict[str, float]]:
    samples: dict[tuple[str, str], list[float]] = {}
    for _ in range(reps):
        for case, fn in CASES.items():
            for name, (make, order) in LOCKS.items():
                sync.check_order(order, on_problem="record")
                try:
                    seconds = fn(make, n)
                finally:
                    sync.check_order(False)
                    _order._reset()
                samples.setdefault((case, name), []).append(seconds * 1e9)
    table: dict[str, dict[str, float]] = {}
    for (case, name), ns in samples.items():
        table.setdefault(name, {})[case] = statistics.median(ns)
    return table


GOALS = [  # (lock, limit as a multiple of threading.Lock's)
    ("sync.Lock", 2.0),
    ("sync.Lock, order on", 6.0),
]


def render(table: dict[str, dict[str, float]]) -> str:
    cases = list(CASES)
    lines = [f"{'ns per acquire + release':26}" + "".join(f"{c:>14}" for c in cases)]
    for name, row in table.items():
        lines.append(f"{name:26}" + "".join(f"{row[c]:14.0f}" for c in cases))
    base = table["threading.Lock"]
    lines.append("")
    lines.append("ratios to threading.Lock (same run):")
    for name, limit in GOALS:
        ratios = "  ".join(f"{c} {table[name][c] / base[c]:.2f}x" for c in cases)
        met = all(table[name][c] / base[c] <= limit for c in cases)
        lines.append(f"  {name:24} {ratios}   goal <= {limit:g}x: {'met' if met else 'NOT met'}")
    for name in ("sync.RLock", "sync.RLock, order on"):
        rbase = table["threading.RLock"]
        ratios = "  ".join(f"{c} {table[name][c] / rbase[c]:.2f}x" for c in cases)
        lines.append(f"  {name:24} {ratios}   (to threading.RLock)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--reps", type=int, default=7, help="repetitions (median shown)")
    parser.add_argument("--n", type=int, default=200_000, help="acquires per repetition")
    parser.add_argument("--json", type=Path, help="also write the table here")
    args = parser.parse_args()
    native = getattr(sync, "NATIVE", None)
    print(f"python {sys.version.split()[0]}, conveyor.sync native: {native}\n")
    table = measure(args.reps, args.n)
    print(render(table))
    if args.json:
        args.json.write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
