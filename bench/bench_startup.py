"""Process start-up on this machine: multiprocessing's start methods against conveyor's launcher.

conveyor starts worker processes by forking them from a small single-threaded launcher
process (the zygote, ``src/conveyor/_workers/_zygote.py``). This benchmark is the
evidence for that choice. It measures:

1. Start-up time. multiprocessing ``fork``, ``forkserver`` and ``spawn``: create N
   processes that each import a small module (``fractions`` by default) and report back
   on a SimpleQueue. conveyor: a pipeline of N process workers over N items whose stage
   class imports the same module in ``setup()``. Each measurement is a fresh interpreter
   that does it twice: the first run pays for starting a forkserver or the zygote, the
   second reuses it. The parent runs with no other thread, with idle threads, and with
   busy threads (pure-Python loops that compete for the GIL): a library cannot choose
   the process it is called from. Times are from the call to the first result, to the
   last result, and to every process having exited.
2. The hazard. ``fork`` copies a process that runs threads, and a lock that another
   thread held at that moment stays locked in the child forever. The probe forks
   children while a parent thread holds a lock about half of the time, and counts the
   children that find it held (each would deadlock on it). ``forkserver``, ``spawn`` and
   conveyor's workers never inherit the caller's memory, so they cannot hit it; the probe
   checks that for ``forkserver`` and ``spawn`` too.

Usage (from the repository root; conveyor is the only dependency)::

    .venv/bin/python bench/bench_startup.py                      # 5 reps, N = 2 and 16
    .venv/bin/python bench/bench_startup.py --reps 9 --workers 2,4,16 --threads 8
    .venv/bin/python bench/bench_startup.py --quick              # smoke run
    .venv/bin/python bench/bench_startup.py --json bench/results/startup.json

Every (case, repetition) runs in a fresh interpreter, repetitions interleaved across cases.
Medians in milliseconds, with min-max of the "last result" column.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
from typing import Any

METHODS = ("fork", "forkserver", "spawn", "conveyor")
PARENTS = ("none", "idle", "busy")
DEFAULT_MODULE = "fractions"

# The hazard probe's lock: a parent thread holds it about half of the time.
LOCK = threading.Lock()


# -- what a started process does -------------------------------------------------------


def mp_target(q: Any, module: str) -> None:
    importlib.import_module(module)
    q.put(os.getpid())


class Touch:
    """conveyor's stage: import the module once per worker, then pass items on."""

    module = DEFAULT_MODULE

    def setup(self) -> None:
        importlib.import_module(self.module)

    def process(self, item: int) -> int:
        return os.getpid()


def probe_target(q: Any) -> None:
    """Report whether this child could take LOCK (False: it would block forever)."""
    got = LOCK.acquire(timeout=0.5)
    q.put(got)


# -- parent threads ----------------------------------------------------------------------


def start_parent_threads(kind: str, count: int) -> threading.Event:
    """Start ``count`` daemon threads: "idle" ones wait on an event, "busy" ones loop."""
    stop = threading.Event()

    def idle() -> None:
        stop.wait()

    def busy() -> None:
        while not stop.is_set():
            sum(range(2000))

    if kind != "none":
        for i in range(count):
            target = idle if kind == "idle" else busy
            threading.Thread(target=target, name=f"parent-{kind}-{i}", daemon=True).start()
    return stop


# -- one run, in the child interpreter ---------------------------------------------------


def run_mp(method: str, n: int, module: str) -> dict[str, float]:
    import multiprocessing as mp

    ctx: Any = mp.get_context(method)  # a fork, forkserver or spawn context
    q = ctx.SimpleQueue()
    t0 = time.perf_counter()
    procs = [ctx.Process(target=mp_target, args=(q, module)) for _ in range(n)]
    for p in procs:
        p.start()
    first = 0.0
    for i in range(n):
        q.get()
        if i == 0:
            first = time.perf_counter() - t0
    last = time.perf_counter() - t0
    for p in procs:
        p.join()
    return {"first": first, "last": last, "exited": time.perf_counter() - t0}


def run_conveyor(n: int, module: str) -> dict[str, float]:
    import conveyor as cv

    Touch.module = module
    t0 = time.perf_counter()
    first = last = 0.0
    got = 0
    for _ in cv.Pipeline().source(range(n)).map(Touch, workers=n, kind="process"):
        got += 1
        last = time.perf_counter() - t0
        if got == 1:
            first = last
    exited = time.perf_counter() - t0  # the loop ends when the run is over
    assert got == n, f"got {got} of {n} results"
    return {"first": first, "last": last, "exited": exited}


def child(method: str, n: int, parent: str, threads: int, module: str) -> None:
    assert module not in sys.modules, f"{module} is already imported in the parent"
    if method == "conveyor":
        import conveyor  # noqa: F401  (the import is not what this measures)
    else:
        import multiprocessing.context  # noqa: F401
    stop = start_parent_threads(parent, threads)
    runs = []
    for _ in range(2):  # first run, then a second one in the same interpreter
        if method == "conveyor":
            runs.append(run_conveyor(n, module))
        else:
            runs.append(run_mp(method, n, module))
    stop.set()
    print(json.dumps({"runs": runs}), flush=True)


def probe_child(method: str, n: int) -> None:
    """Fork (or start) ``n`` children while a thread holds LOCK about half of the time."""
    import multiprocessing as mp

    stop = threading.Event()

    def hold() -> None:
        while not stop.is_set():
            with LOCK:
                sum(range(3000))
            sum(range(3000))

    threading.Thread(target=hold, daemon=True).start()
    ctx: Any = mp.get_context(method)  # a fork, forkserver or spawn context
    q = ctx.SimpleQueue()
    stuck = 0
    for start in range(0, n, 10):  # 10 at a time: the stuck ones each wait 0.5 s
        procs = [ctx.Process(target=probe_target, args=(q,)) for _ in range(min(10, n - start))]
        for p in procs:
            p.start()
        stuck += sum(1 for _ in procs if not q.get())
        for p in procs:
            p.join()
    stop.set()
    print(json.dumps({"stuck": stuck, "n": n}), flush=True)


# -- the driver --------------------------------------------------------------------------


def run_child(args: list[str], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), *args]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"TIMEOUT after {timeout:.0f}s"}
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("{"):
            result: dict[str, Any] = json.loads(line)
            return result
    tail = " | ".join(p.stderr.strip().splitlines()[-3:])
    return {"error": f"rc={p.returncode} {tail}"}


def median(values: list[float]) -> float:
    import statistics

    return statistics.median(values)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--child", nargs=4, metavar=("METHOD", "N", "PARENT", "THREADS"))
    ap.add_argument("--probe-child", nargs=2, metavar=("METHOD", "N"))
    ap.add_argument("--reps", type=int, default=5, help="fresh interpreters per case (5)")
    ap.add_argument("--workers", default="2,16", help="process counts (2,16)")
    ap.add_argument("--threads", type=int, default=4, help="parent threads when any (4)")
    ap.add_argument("--parents", default=",".join(PARENTS), help="none,idle,busy")
    ap.add_argument("--methods", default=",".join(METHODS), help=",".join(METHODS))
    ap.add_argument("--module", default=DEFAULT_MODULE, help="what each process imports")
    ap.add_argument("--probe", type=int, default=60, help="children per hazard probe (60)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 1 rep, small probe")
    ap.add_argument("--json", default="", help="also write the raw results to this file")
    args = ap.parse_args()
    if args.child:
        method, n, parent, threads = args.child
        child(method, int(n), parent, int(threads), args.module)
        return
    if args.probe_child:
        probe_child(args.probe_child[0], int(args.probe_child[1]))
        return
    reps = 1 if args.quick else args.reps
    probe_n = 10 if args.quick and "--probe" not in sys.argv else args.probe

    workers = [int(x) for x in args.workers.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    parents = [p for p in args.parents.split(",") if p]
    cases = [(m, n, p) for m in methods for n in workers for p in parents]
    print(
        f"# bench_startup  python {platform.python_version()}  cpus={os.cpu_count()}  "
        f"reps={reps}  module={args.module}  parent threads={args.threads}",
        flush=True,
    )

    results: dict[tuple[str, int, str], list[dict[str, Any]]] = {c: [] for c in cases}
    for rep in range(reps):
        for case in cases if rep % 2 == 0 else cases[::-1]:
            m, n, p = case
            argv = ["--child", m, str(n), p, str(args.threads), "--module", args.module]
            res = run_child(argv, timeout=120)
            results[case].append(res)
            msg = res.get("error") or " / ".join(f"{r['last'] * 1e3:.0f}" for r in res["runs"])
            print(f"  rep {rep + 1} {m:10s} n={n:<3d} {p:5s} {msg}", file=sys.stderr, flush=True)

    lines = [
        "",
        f"START-UP: N processes that each import {args.module} and report back; conveyor: a "
        f"pipeline of N process workers over N items (ms, median of {reps} fresh interpreters)",
        f"  parent threads: none; idle = {args.threads} threads waiting; busy = {args.threads} "
        "threads in pure-Python loops",
        "",
        f"  {'':25s}|{'first run':^33s}|{'second run, same interpreter':^33s}|",
        f"  {'method':13s} {'N':>3s} {'parent':7s}|"
        + f"{'first':>7s} {'last':>7s} {'min-max':>9s} {'exited':>7s}|" * 2,
        "  " + "-" * 93,
    ]
    summary: dict[tuple[str, int, str], list[float]] = {}
    for case in cases:
        m, n, p = case
        ok = [r for r in results[case] if "runs" in r]
        label = f"  {'conveyor' if m == 'conveyor' else 'mp ' + m:13s} {n:3d} {p:7s}|"
        if not ok:
            lines.append(f"{label} FAILED: {results[case][0].get('error')}"[:200])
            continue
        cells = []
        meds = []
        for i in range(2):
            runs = [r["runs"][i] for r in ok]
            first, last, exited = (
                median([r[k] * 1e3 for r in runs]) for k in ("first", "last", "exited")
            )
            lo, hi = min(r["last"] * 1e3 for r in runs), max(r["last"] * 1e3 for r in runs)
            cells.append(f"{first:7.1f} {last:7.1f} {f'{lo:.0f}-{hi:.0f}':>9s} {exited:7.1f}|")
            meds += [first, last, exited]
        summary[case] = meds
        lines.append(label + "".join(cells))

    lines += [
        "",
        "RATIOS: time to the last result, conveyor / mp method, same N and parent "
        "(below 1: conveyor is faster)",
    ]
    for n in workers:
        for p in parents:
            ours = summary.get(("conveyor", n, p))
            if not ours:
                continue
            parts = []
            for m in methods:
                theirs = summary.get((m, n, p))
                if m != "conveyor" and theirs:
                    parts.append(f"{m} {ours[1] / theirs[1]:5.2f}x / {ours[4] / theirs[4]:5.2f}x")
            lines.append(f"  N={n:<3d} {p:5s} first run / second run:  " + ",  ".join(parts))

    probe: dict[str, dict[str, Any]] = {}
    if probe_n:
        lines += [
            "",
            f"HAZARD: children started while a parent thread holds a lock ~50% of the time "
            f"({probe_n} per method): children that found it held (each would deadlock)",
        ]
        for m in ("fork", "forkserver", "spawn"):
            if m not in methods:
                continue
            res = run_child(["--probe-child", m, str(probe_n)], timeout=600)
            probe[m] = res
            got = f"{res['stuck']} of {res['n']}" if "stuck" in res else res["error"]
            lines.append(f"  mp {m:11s} {got}")
        if "conveyor" in methods:
            lines.append(
                "  conveyor       0 by construction: workers are forked from the single-threaded "
                "zygote, never from the caller"
            )
    print("\n".join(lines))
    if args.json:
        raw = {f"{m}.{n}.{p}": v for (m, n, p), v in results.items()}
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(
                {"reps": reps, "module": args.module, "raw": raw, "probe": probe}, f, indent=1
            )
        print(f"\n# raw results written to {args.json}")


if __name__ == "__main__":
    main()
