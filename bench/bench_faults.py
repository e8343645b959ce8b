"""What surviving faults costs: recovery time and bookkeeping.

    python bench/bench_faults.py              # both measurements, a table each
    python bench/bench_faults.py --kills 50   # more worker deaths

1. Recovery: a process stage runs; the benchmark kills one of its worker processes
   (SIGKILL) again and again and times, for each death, the wait until the engine
   has a replacement ready (forked, stage loaded, setup() done) and until the item
   the dead worker held has been delivered again and finished.
2. Bookkeeping: 1,000,000 trivial items (x*2) on 2 process workers, from building
   the pipeline to the last result, in fresh interpreters, interleaved: the default
   stage (fail-fast: batches run by the fast loop), on_error="skip" (every item gets
   its own try/except and the results carry the failures), and a timeout (every item
   also reports when it starts, for the watchdog).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time

import conveyor as cv
from conveyor.testing import wait_until

MODES = {
    "default (fail-fast)": "{}",
    'on_error="skip"': "{'on_error': 'skip'}",
    'on_error="skip", timeout=60': "{'on_error': 'skip', 'timeout': 60.0}",
}
MILLION = """
import sys, time
import conveyor as cv
def double(x):
    return x * 2
t = time.perf_counter()
out = list(cv.Pipeline().source(range(1_000_000)).map(double, workers=2, kind="process", **{kw}))
dt = time.perf_counter() - t
assert len(out) == 1_000_000
print(dt)
"""


def slow(x: int) -> int:
    time.sleep(0.002)
    return x


def recovery(kills: int) -> None:
    run = (
        cv.Pipeline()
        .source(range(10**9))
        .sink(slow, workers=2, kind="process", name="w", max_crashes=10**6)
        .run()
    )
    slots = [s for s in run._run._stages[0].slots]  # the engine's live records (internal)
    ready, redone = [], []
    try:
        wait_until(lambda: all(s.state == "busy" for s in slots))
        for _ in range(kills):
            slot = slots[0]
            before_restarts = slot.restarts
            before_done = slot.items_done
            t0 = time.monotonic()
            os.kill(slot.pid or 0, signal.SIGKILL)
            wait_until(lambda: slot.restarts > before_restarts, timeout=30)  # noqa: B023
            ready.append(slot.replaced_at - t0)
            wait_until(lambda: slot.items_done > before_done, timeout=30)  # noqa: B023
            redone.append(time.monotonic() - t0)
    finally:
        run.cancel()
    try:
        run.wait()
    except cv.Cancelled:
        pass

    def row(label: str, xs: list[float]) -> str:
        ms = [x * 1000 for x in xs]
        return f"  {label:<44} {statistics.median(ms):8.1f} {min(ms):8.1f} {max(ms):8.1f}"

    print(f"RECOVERY: SIGKILL of a worker process, {kills} times (ms)")
    print(f"  {'from the death to':<44} {'median':>8} {'min':>8} {'max':>8}")
    print("  " + "-" * 70)
    print(row("a replacement ready (forked, set up)", ready))
    print(row("its item delivered again and done", redone))


def bookkeeping(reps: int) -> None:
    times: dict[str, list[float]] = {m: [] for m in MODES}
    for _ in range(reps):  # interleaved: machine noise spreads over every mode
        for mode, kw in MODES.items():
            code = MILLION.replace("{kw}", kw)
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(out.stderr)
            times[mode].append(float(out.stdout))
    base = statistics.median(times["default (fail-fast)"])
    print(
        f"\nBOOKKEEPING: 1,000,000 items x*2, 2 process workers, build -> last result ({reps} reps)"
    )
    print(f"  {'stage options':<44} {'median s':>9} {'min':>7} {'max':>7} {'vs default':>11}")
    print("  " + "-" * 82)
    for mode, ts in times.items():
        med = statistics.median(ts)
        print(f"  {mode:<44} {med:9.3f} {min(ts):7.3f} {max(ts):7.3f} {med / base:10.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    print(f"# bench_faults  python {sys.version.split()[0]}  cpus={os.cpu_count()}")
    recovery(args.kills)
    bookkeeping(args.reps)


if __name__ == "__main__":
    main()
