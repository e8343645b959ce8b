"""Shared state between processes: conveyor.shared against Manager and multiprocessing.Value.

One command runs every case and prints one table::

    .venv/bin/python bench/bench_shared.py                  # everything (~1 min)
    .venv/bin/python bench/bench_shared.py --quick          # smoke run (~15 s)
    .venv/bin/python bench/bench_shared.py --json bench/results/shared.json

Operations (each one atomic: no update may be lost):

* ``counter``: add 1 to a shared number.
  - ``conveyor``             ``c = shared.Counter(0)``; ``c.add(1)``
  - ``mp.Value + its lock``  ``v = Value("q", 0)``; ``with v.get_lock(): v.value += 1``
  - ``Manager + Manager.Lock``  ``with lock: d["n"] = d["n"] + 1`` on a ``Manager().dict()``
    with a ``Manager().Lock()`` (the course notes' way)
  - ``Manager + mp.Lock``    the same with a ``multiprocessing.Lock`` (a semaphore, no
    round trip to the manager for the lock)
* ``dict``: the read-modify-write ``d[k] = fn(d[k])`` on a dict of 16 int keys, each
  process going round the keys.
  - ``conveyor``             ``d = shared.Dict(...)``; ``d.update(k, fn)``
  - ``Manager + Manager.Lock`` and ``Manager + mp.Lock`` as above.

Each case runs in a fresh interpreter that starts 1, 2 or 4 worker processes (start
method spawn); they meet at a barrier, then each repeats the operation for
``--seconds`` and counts. Operations per second are all the counts over the time from
the first start to the last end. The final state is checked against the counts (a
lost update shows as "wrong"). Repetitions are interleaved and the table gives the
median; "x Manager" is conveyor's rate over the Manager + Manager.Lock rate of the
same operation and process count.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Runs, child_result

KEYS = [f"k{i}" for i in range(16)]
IMPLS = {
    "counter": ["conveyor", "mp.Value + its lock", "Manager + Manager.Lock", "Manager + mp.Lock"],
    "dict": ["conveyor", "Manager + Manager.Lock", "Manager + mp.Lock"],
}
BASELINE = "Manager + Manager.Lock"


def _inc(v: int) -> int:
    return v + 1


def worker(
    op: str, impl: str, state: Any, lock: Any, barrier: Any, seconds: float, out: Any
) -> None:
    barrier.wait()
    n = 0
    start = time.perf_counter()
    end = start + seconds
    if op == "counter" and impl == "conveyor":
        add = state.add
        while time.perf_counter() < end:
            for _ in range(100):
                add(1)
            n += 100
    elif op == "counter" and impl.startswith("mp.Value"):
        get_lock = state.get_lock
        while time.perf_counter() < end:
            for _ in range(100):
                with get_lock():
                    state.value += 1
            n += 100
    elif op == "counter":
        while time.perf_counter() < end:
            for _ in range(10):
                with lock:
                    state["n"] = state["n"] + 1
            n += 10
    elif impl == "conveyor":
        update = state.update
        while time.perf_counter() < end:
            for k in KEYS:
                update(k, _inc)
            n += len(KEYS)
    else:
        while time.perf_counter() < end:
            for k in KEYS:
                with lock:
                    state[k] = state[k] + 1
            n += len(KEYS)
    out.put((n, start, time.perf_counter()))


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    """In the child interpreter: one case, one JSON result."""
    op, impl, procs, seconds = case["op"], case["impl"], case["procs"], case["seconds"]
    ctx = multiprocessing.get_context("spawn")
    manager = None
    lock: Any = None
    if impl == "conveyor":
        import conveyor as cv

        state: Any = (
            cv.shared.Counter(0) if op == "counter" else cv.shared.Dict(dict.fromkeys(KEYS, 0))
        )
    elif impl.startswith("mp.Value"):
        state = ctx.Value("q", 0)
    else:
        manager = ctx.Manager()
        state = manager.dict({"n": 0} if op == "counter" else dict.fromkeys(KEYS, 0))
        lock = manager.Lock() if impl == "Manager + Manager.Lock" else ctx.Lock()
    barrier = ctx.Barrier(procs)
    out = ctx.Queue()
    workers = [
        ctx.Process(target=worker, args=(op, impl, state, lock, barrier, seconds, out))
        for _ in range(procs)
    ]
    for w in workers:
        w.start()
    results = [out.get(timeout=seconds + 120) for _ in workers]
    for w in workers:
        w.join()
    ops = sum(r[0] for r in results)
    elapsed = max(r[2] for r in results) - min(r[1] for r in results)
    if op == "counter":
        final = state.value if impl in ("conveyor",) or impl.startswith("mp.Value") else state["n"]
    else:
        final = sum(state[k] for k in KEYS)
    if manager is not None:
        manager.shutdown()
    return {
        "cid": case["cid"],
        "ops": ops,
        "seconds": elapsed,
        "rate": ops / elapsed,
        "ok": final == ops,
        "check": f"final {final} after {ops} operations",
    }


def cases(seconds: float, procs_list: list[int]) -> list[dict[str, Any]]:
    out = []
    for op, impls in IMPLS.items():
        for procs in procs_list:
            for impl in impls:
                cid = f"{op}/{procs}/{impl}"
                out.append({"cid": cid, "op": op, "impl": impl, "procs": procs, "seconds": seconds})
    return out


def render(runs: list[Runs]) -> str:
    lines = [
        "SHARED STATE: atomic operations per second (median; higher is better)",
        f"  {'operation':<10}{'procs':>6}  {'implementation':<26}{'ops/s':>12}"
        f"{'min':>12}{'max':>12}{'x Manager':>11}",
        "  " + "-" * 89,
    ]
    by_cid = {r.case["cid"]: r for r in runs}
    ratios = []
    for r in runs:
        op, procs, impl = r.case["op"], r.case["procs"], r.case["impl"]
        if r.problem:
            lines.append(f"  {op:<10}{procs:>6}  {impl:<26}  {r.problem}")
            continue
        base = by_cid.get(f"{op}/{procs}/{BASELINE}")
        rate = r.median("rate")
        ratio = ""
        if base is not None and base.good:
            ratio = f"{rate / base.median('rate'):>10.1f}x"
        lines.append(
            f"  {op:<10}{procs:>6}  {impl:<26}{rate:>12,.0f}"
            f"{min(r.values('rate')):>12,.0f}{max(r.values('rate')):>12,.0f}{ratio:>11}"
        )
        if impl == "conveyor":
            for other in IMPLS[op][1:]:
                o = by_cid.get(f"{op}/{procs}/{other}")
                if o is not None and o.good:
                    ratios.append(
                        f"  {op}, {procs} process(es): conveyor / {other} = "
                        f"{rate / o.median('rate'):.1f}x"
                    )
    return "\n".join([*lines, "", "RATIOS (same run)", *ratios])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs, one repetition")
    parser.add_argument("--seconds", type=float, default=1.0, help="time each case runs")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each case")
    parser.add_argument("--procs", default="1,2,4", help="process counts, comma-separated")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))), flush=True)
        return
    seconds, reps = (0.3, 1) if args.quick else (args.seconds, args.reps)
    todo = [Runs(case) for case in cases(seconds, [int(p) for p in args.procs.split(",")])]
    t0 = time.monotonic()
    for rep in range(1, reps + 1):
        for r in todo:
            proc = subprocess.run(
                [sys.executable, __file__, "--case", json.dumps(r.case)],
                capture_output=True,
                text=True,
                timeout=600,
            )
            result = child_result(r.case["cid"], proc)
            r.runs.append(result)
            shown = f"{result['rate']:,.0f} ops/s" if "rate" in result else result.get("error")
            print(f"  [{time.monotonic() - t0:6.0f}s] rep {rep} {r.case['cid']:<36} {shown}")
    print()
    print(render(todo))
    if args.json:
        Path(args.json).write_text(json.dumps([{"case": r.case, "runs": r.runs} for r in todo]))


if __name__ == "__main__":
    main()
