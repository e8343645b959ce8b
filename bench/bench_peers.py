"""conveyor against its peers: the same workloads, in one run, in one table.

Peers: multiprocessing.Pool / ThreadPool, concurrent.futures, loky, joblib, mpire,
pypeln and pyper. A peer that is not installed is skipped with a note, so the script
runs with conveyor alone. Set up the peers once (from the repository root)::

    python -m venv .venv-bench
    .venv-bench/bin/pip install -e . -r bench/requirements-peers.txt

Run::

    .venv-bench/bin/python bench/bench_peers.py --reps 3          # everything (~10 min)
    .venv-bench/bin/python bench/bench_peers.py --quick           # smoke run (~30 s)
    .venv-bench/bin/python bench/bench_peers.py --only pipeline,million --reps 5
    .venv-bench/bin/python bench/bench_peers.py --only pipeline --scale 5   # 10,000 items
    .venv-bench/bin/python bench/bench_peers.py --list            # the case ids
    .venv-bench/bin/python bench/bench_peers.py --json bench/results/peers.json
    .venv-bench/bin/python bench/bench_peers.py --render bench/results/peers.json  # again

Workloads (items are ints; every case checks its results, conveyor's also their order):

* ``startup``  create the pool or pipeline, 2 trivial items, shut down (seconds)
* ``overhead`` 200,000 items of x*2 on 2 process workers
* ``cpu``      2,000 items of ~2 ms pure-Python CPU on 2 workers, processes vs threads
* ``io``       2,000 items sleeping 5 ms on 16 threads
* ``pipeline`` stage 1: ~0.5 ms CPU on 2 processes -> stage 2: 2 ms sleep on 8 threads
* ``million``  1,000,000 items of x*2 on 2 processes, from building the pipeline to the
  last result, start-up and shutdown included: conveyor with no chunk size given
  against multiprocessing.Pool.map with its automatic chunksize
* ``start``    ``import`` of each library in a bare fresh interpreter, and the first
  process pipeline of a fresh interpreter (2 workers, 2 items, build -> last result)

Method: every (case, repetition) runs in a fresh interpreter, so each figure is what a
user pays for one call, pool start-up and shutdown included (the library is imported
before the clock starts; ``start`` measures the imports). Repetitions are interleaved
(repetition 1 of every case, then repetition 2, ...) so background load on a shared
machine spreads over all cases. The tables give the median, min and max; "CPU us/it",
the CPU time of the whole process tree (workers, launchers and managers included) per
item, steadier than wall time on a busy machine; and "bg load", the share of the
machine's CPU used by other processes during the run (from /proc/stat). The work unit
of the cpu and pipeline workloads is calibrated by CPU time, not wall time, so a busy
machine does not shrink it. The ratios at the end compare conveyor with the relevant
peer measured in the same run.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import itertools
import json
import os
import platform
import queue
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from _harness import (
    Runs,
    background_share,
    child_result,
    conveyor_revision,
    machine_busy_seconds,
    tree_cpu_seconds,
)

Fn = Callable[[int], int]
P = functools.partial

# -- work functions (module level: every backend must be able to pickle them) ---------


def double(x: int) -> int:
    return x * 2


def burn(x: int, iters: int) -> int:
    """Pure-Python CPU work that holds the GIL throughout; the result depends on x only."""
    s = 0
    for i in range(iters):
        s += i * i
    return x * 2 + (s & 0)


def snooze(x: int, secs: float) -> int:
    time.sleep(secs)
    return x * 2


async def asnooze(x: int, secs: float) -> int:
    import asyncio

    await asyncio.sleep(secs)
    return x * 2


def calibrate_burn(target_s: float = 0.002) -> int:
    """Iterations of burn() that cost ``target_s`` of CPU time (median of 7 probes).

    CPU time, not wall time: on a busy machine the work unit stays the same size.
    """
    probe = 200_000
    samples = []
    for _ in range(7):
        t = time.process_time()
        burn(0, probe)
        samples.append(time.process_time() - t)
    return max(1, int(probe * target_s / statistics.median(samples)))


BURN_ITERS = int(os.environ.get("BENCH_BURN_ITERS") or 0)  # ~2 ms of CPU; set by the driver
QUICK = os.environ.get("BENCH_QUICK") == "1"
SCALE = float(os.environ.get("BENCH_SCALE") or (0.1 if QUICK else 1))  # item counts x SCALE
IO_SLEEP = 0.005
IO_THREADS = 16
S1_WORKERS = 2
S2_WORKERS = 8
S2_SLEEP = 0.002


def cpu_fn() -> Fn:
    return P(burn, iters=BURN_ITERS)


def io_fn() -> Fn:
    return P(snooze, secs=IO_SLEEP)


def stage1_fn() -> Fn:
    return P(burn, iters=max(1, BURN_ITERS // 4))  # ~0.5 ms of CPU


def stage2(x: int) -> int:
    time.sleep(S2_SLEEP)
    return x + 1


# -- runners: run(fn, n, workers) returns or yields the results -----------------------


def run_serial(fn: Fn, n: int, workers: int) -> list[int]:
    return list(map(fn, range(n)))


def run_conveyor(
    fn: Fn, n: int, workers: int, kind: str = "process", ordered: bool = True
) -> Iterator[int]:
    import conveyor as cv

    yield from cv.Pipeline().source(range(n)).map(fn, workers=workers, kind=kind, ordered=ordered)


def run_mp_pool(fn: Fn, n: int, workers: int, chunksize: int | None = 1) -> Iterator[int]:
    import multiprocessing as mp

    with mp.Pool(workers) as pool:
        if chunksize is None:  # Pool.map with its automatic chunksize
            yield from pool.map(fn, range(n))
        else:
            yield from pool.imap(fn, range(n), chunksize=chunksize)


def run_mp_threadpool(fn: Fn, n: int, workers: int) -> list[int]:
    from multiprocessing.pool import ThreadPool

    with ThreadPool(workers) as pool:
        return list(pool.imap(fn, range(n)))


def run_ppe(fn: Fn, n: int, workers: int, chunksize: int = 1) -> list[int]:
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers) as ex:
        return list(ex.map(fn, range(n), chunksize=chunksize))


def run_tpe(fn: Fn, n: int, workers: int) -> list[int]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as ex:
        return list(ex.map(fn, range(n)))


def run_loky(fn: Fn, n: int, workers: int, chunksize: int = 1) -> list[int]:
    from loky import get_reusable_executor

    ex = get_reusable_executor(max_workers=workers)
    out = list(ex.map(fn, range(n), chunksize=chunksize))
    ex.shutdown(wait=True)
    return out


def run_joblib(fn: Fn, n: int, workers: int, backend: str = "loky") -> list[int]:
    from joblib import Parallel, delayed

    par = Parallel(n_jobs=workers, backend=backend, return_as="generator")
    out = list(par(delayed(fn)(x) for x in range(n)))
    if backend == "loky":
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True)
    return out


def run_mpire(
    fn: Fn, n: int, workers: int, start_method: str = "fork", imap: bool = False
) -> list[int]:
    from mpire import WorkerPool

    with WorkerPool(n_jobs=workers, start_method=start_method) as pool:
        if imap:
            return list(pool.imap(fn, range(n), iterable_len=n))
        return list(pool.map(fn, range(n), iterable_len=n))


def run_pypeln(fn: Callable[..., Any], n: int, workers: int, kind: str = "process") -> list[int]:
    import pypeln as pl

    module = {"process": pl.process, "thread": pl.thread, "task": pl.task}[kind]
    return list(module.map(fn, range(n), workers=workers, maxsize=0))


def run_pypeln_task(fn: Fn, n: int, workers: int) -> list[int]:
    return run_pypeln(P(asnooze, secs=IO_SLEEP), n, workers, "task")


def _range_source(n: int) -> Iterator[int]:
    yield from range(n)  # pyper's first task has one worker: a branching generator feeds it


def run_pyper(fn: Fn, n: int, workers: int, multiprocess: bool = True) -> list[int]:
    from pyper import task

    p = task(_range_source, branch=True) | task(fn, workers=workers, multiprocess=multiprocess)
    return list(p(n))


def run_pyper_async(fn: Fn, n: int, workers: int) -> list[int]:
    import asyncio

    from pyper import task

    p = task(_range_source, branch=True) | task(P(asnooze, secs=IO_SLEEP), workers=workers)

    async def collect() -> list[int]:
        return [x async for x in p(n)]

    return asyncio.run(collect())


# -- two-stage pipelines (fn and workers are fixed by the workload) --------------------


def pipe_conveyor(fn: Fn, n: int, workers: int, ordered: bool = True) -> Iterator[int]:
    import conveyor as cv

    yield from (
        cv.Pipeline()
        .source(range(n))
        .map(stage1_fn(), workers=S1_WORKERS, kind="process", ordered=ordered)
        .map(stage2, workers=S2_WORKERS, kind="thread", ordered=ordered)
    )


def pipe_stdlib_phases(fn: Fn, n: int, workers: int) -> list[int]:
    """Not pipelined: all of stage 1, then all of stage 2."""
    import multiprocessing as mp
    from multiprocessing.pool import ThreadPool

    with mp.Pool(S1_WORKERS) as pool:
        mid = pool.map(stage1_fn(), range(n))
    with ThreadPool(S2_WORKERS) as tpool:
        return tpool.map(stage2, mid)


def pipe_stdlib_compose(fn: Fn, n: int, workers: int) -> list[int]:
    """Pool.imap feeding ThreadPoolExecutor.map: pipelined, unbounded."""
    import multiprocessing as mp
    from concurrent.futures import ThreadPoolExecutor

    with mp.Pool(S1_WORKERS) as pool, ThreadPoolExecutor(S2_WORKERS) as ex:
        return list(ex.map(stage2, pool.imap(stage1_fn(), range(n))))


def pipe_stdlib_queue(fn: Fn, n: int, workers: int) -> list[int]:
    """Written by hand: Pool.imap -> queue.Queue(64) -> 8 consumer threads (unordered)."""
    import multiprocessing as mp

    q: queue.Queue[int | None] = queue.Queue(maxsize=64)
    out: list[int] = []
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            while (item := q.get()) is not None:
                out.append(stage2(item))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=consume, daemon=True) for _ in range(S2_WORKERS)]
    for t in threads:
        t.start()
    with mp.Pool(S1_WORKERS) as pool:
        for r in pool.imap(stage1_fn(), range(n)):
            q.put(r)
    for _ in threads:
        q.put(None)
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


def pipe_mpire(fn: Fn, n: int, workers: int) -> list[int]:
    from concurrent.futures import ThreadPoolExecutor

    from mpire import WorkerPool

    with WorkerPool(n_jobs=S1_WORKERS) as pool, ThreadPoolExecutor(S2_WORKERS) as ex:
        return list(ex.map(stage2, pool.imap(stage1_fn(), range(n), iterable_len=n)))


def pipe_pypeln(fn: Fn, n: int, workers: int) -> list[int]:
    import pypeln as pl

    s = pl.process.map(stage1_fn(), range(n), workers=S1_WORKERS, maxsize=64)
    return list(pl.thread.map(stage2, s, workers=S2_WORKERS, maxsize=64))


def pipe_pyper(fn: Fn, n: int, workers: int, throttle: int = 0) -> list[int]:
    from pyper import task

    p = (
        task(_range_source, branch=True, throttle=throttle)
        | task(stage1_fn(), workers=S1_WORKERS, multiprocess=True, throttle=throttle)
        | task(stage2, workers=S2_WORKERS, throttle=throttle)
    )
    return list(p(n))


# -- the cases: workload x runner -----------------------------------------------------

Runner = Callable[[Fn, int, int], Iterable[int]]

# key -> (label, runner, workers' kind shown in the cpu table). A key's peer is its prefix.
# fmt: off
RUNNERS: dict[str, tuple[str, Runner, str]] = {
    "serial":           ("serial list(map) [baseline]", run_serial, ""),
    "conveyor_proc":    ("conveyor map(kind=process)", run_conveyor, "proc"),
    "conveyor_proc_unordered": ("conveyor map(kind=process, ordered=False)",
                         P(run_conveyor, ordered=False), "proc"),
    "conveyor_thread":  ("conveyor map(kind=thread)", P(run_conveyor, kind="thread"), "thread"),
    "mp_pool":          ("mp.Pool.imap chunksize=1", run_mp_pool, "proc"),
    "mp_pool_cs1000":   ("mp.Pool.imap chunksize=1000", P(run_mp_pool, chunksize=1000), "proc"),
    "mp_map":           ("mp.Pool.map (auto chunksize)", P(run_mp_pool, chunksize=None), "proc"),
    "mp_threadpool":    ("mp.pool.ThreadPool.imap chunksize=1", run_mp_threadpool, "thread"),
    "ppe":              ("ProcessPoolExecutor.map chunksize=1", run_ppe, "proc"),
    "ppe_cs256":        ("ProcessPoolExecutor.map chunksize=256", P(run_ppe, chunksize=256),
                         "proc"),
    "tpe":              ("ThreadPoolExecutor.map", run_tpe, "thread"),
    "loky":             ("loky executor.map chunksize=1", run_loky, "proc"),
    "loky_cs256":       ("loky executor.map chunksize=256", P(run_loky, chunksize=256), "proc"),
    "joblib_loky":      ("joblib Parallel loky, generator", run_joblib, "proc"),
    "joblib_threading": ("joblib Parallel threading", P(run_joblib, backend="threading"), "thread"),
    "mpire":            ("mpire WorkerPool fork .map", run_mpire, "proc"),
    "mpire_imap":       ("mpire WorkerPool fork .imap", P(run_mpire, imap=True), "proc"),
    "mpire_threading":  ("mpire WorkerPool threading", P(run_mpire, start_method="threading"),
                         "thread"),
    "pypeln_proc":      ("pypeln process.map", run_pypeln, "proc"),
    "pypeln_thread":    ("pypeln thread.map", P(run_pypeln, kind="thread"), "thread"),
    "pypeln_task":      ("pypeln task.map, asyncio.sleep", run_pypeln_task, "async"),
    "pyper_proc":       ("pyper task(multiprocess=True)", run_pyper, "proc"),
    "pyper_thread":     ("pyper task, threads", P(run_pyper, multiprocess=False), "thread"),
    "pyper_async":      ("pyper task, asyncio.sleep", run_pyper_async, "async"),
    # the pipeline workload: stage 1 on processes, stage 2 on threads
    "p_conveyor":       ("conveyor .map(s1, process).map(s2, thread)", pipe_conveyor, ""),
    "p_conveyor_unordered": ("conveyor same, ordered=False", P(pipe_conveyor, ordered=False), ""),
    "p_stdlib_phases":  ("stdlib Pool.map, then ThreadPool.map (no overlap)", pipe_stdlib_phases,
                         ""),
    "p_stdlib_compose": ("stdlib TPE.map(s2, Pool.imap(s1))", pipe_stdlib_compose, ""),
    "p_stdlib_queue":   ("stdlib Pool.imap -> Queue(64) -> 8 threads", pipe_stdlib_queue, ""),
    "p_mpire":          ("mpire imap -> TPE.map (composed by hand)", pipe_mpire, ""),
    "p_pypeln":         ("pypeln process.map | thread.map (maxsize=64)", pipe_pypeln, ""),
    "p_pyper":          ("pyper src | s1(mp) | s2", pipe_pyper, ""),
    "p_pyper_t64":      ("pyper same, throttle=64", P(pipe_pyper, throttle=64), ""),
}
# fmt: on
PEERS = ("conveyor", "loky", "joblib", "mpire", "pypeln", "pyper")  # importable module names

# The import cases run `python -c IMPORT_CODE spec` in a bare interpreter: nothing is
# imported before the clock. A spec "module:name" also gets the name from the module, which
# counts what a lazy package imports on first use.
IMPORT_CODE = (
    "import importlib, sys, time; module, _, name = sys.argv[1].partition(':'); "
    "t = time.perf_counter(); m = importlib.import_module(module); name and getattr(m, name); "
    "print(time.perf_counter() - t)"
)
IMPORTS = {
    "conveyor": "conveyor",
    "conveyor_pipeline": "conveyor:Pipeline",
    "mp_pool": "multiprocessing.pool",
    "futures": "concurrent.futures",
    "loky": "loky",
    "joblib": "joblib",
    "mpire": "mpire",
    "pypeln": "pypeln",
    "pyper": "pyper",
}


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    n: int
    workers: int
    fn: Callable[[], Fn]
    runners: tuple[str, ...]
    expect_offset: int = 0  # results are 2x + expect_offset

    @property
    def ideal_rate(self) -> float | None:
        """Items/s of a perfect 2-core machine with zero overhead."""
        return {
            "io": IO_THREADS / IO_SLEEP,
            "pipeline": min(S1_WORKERS / 0.0005, S2_WORKERS / S2_SLEEP),
        }.get(self.name)


def _workloads() -> dict[str, Workload]:
    mp_peers = ("mp_pool", "ppe", "loky", "joblib_loky", "mpire", "pypeln_proc", "pyper_proc")
    thread_peers = ("mp_threadpool", "tpe", "joblib_threading", "mpire_threading")
    pipes = tuple(k for k in RUNNERS if k.startswith("p_"))
    full = {"ovh": 200_000, "cpu": 2_000, "io": 2_000, "pipe": 2_000, "mil": 1_000_000}
    n = {k: max(2, round(v * SCALE)) for k, v in full.items()}
    # fmt: off
    ws = [
        Workload("startup", "STARTUP: create + 2 trivial items + shutdown, 2 workers "
                 "(seconds, lower is better)", 2, 2, lambda: double,
                 ("conveyor_proc", "conveyor_thread", *mp_peers, "pypeln_thread",
                  "pyper_thread", "tpe")),
        Workload("overhead", f"OVERHEAD: {n['ovh']:,} items, x*2, 2 process workers (items/s)",
                 n["ovh"], 2, lambda: double,
                 ("serial", "conveyor_proc", "conveyor_proc_unordered", "mp_pool",
                  "mp_pool_cs1000", "mp_map", "ppe", "ppe_cs256", "loky", "loky_cs256",
                  "joblib_loky", "mpire", "mpire_imap", "pypeln_proc", "pyper_proc")),
        Workload("cpu", f"CPU-BOUND: {n['cpu']:,} items x ~2 ms pure-Python CPU, 2 workers "
                 "(items/s; ideal: 2.00x serial)", n["cpu"], 2, cpu_fn,
                 ("serial", "conveyor_proc", "conveyor_thread", *mp_peers, *thread_peers,
                  "pypeln_thread", "pyper_thread")),
        Workload("io", f"IO-BOUND: {n['io']:,} items x sleep 5 ms, 16 threads "
                 "(items/s; ideal 3,200)", n["io"], IO_THREADS, io_fn,
                 ("conveyor_thread", *thread_peers, "pypeln_thread", "pypeln_task",
                  "pyper_thread", "pyper_async")),
        Workload("pipeline", f"PIPELINE: {n['pipe']:,} items, s1 ~0.5 ms CPU (2 proc) -> "
                 "s2 sleep 2 ms (8 threads) (items/s; ideal 4,000)", n["pipe"], 2, lambda: double,
                 pipes, expect_offset=1),
        Workload("million", f"MILLION: {n['mil']:,} items, x*2, 2 process workers, build -> "
                 "last result incl. start-up and shutdown (seconds, lower is better)",
                 n["mil"], 2, lambda: double, ("serial", "conveyor_proc", "mp_map")),
        Workload("start", "START: import in a bare fresh interpreter; first process pipeline "
                 "of a fresh interpreter, 2 workers, 2 items, build -> last result "
                 "(seconds, lower is better)", 2, 2, lambda: double,
                 ("conveyor_proc", "mp_pool")),
    ]
    # fmt: on
    return {w.name: w for w in ws}


WORKLOADS = _workloads()


@dataclass(frozen=True)
class Case:
    cid: str  # workload.key
    workload: Workload
    label: str
    run: Runner | None  # None: an import case
    needs: tuple[str, ...]  # modules that must be importable
    ordered: bool  # check that the results come in input order

    @property
    def n(self) -> int:
        return 1 if self.run is None else self.workload.n


def _needs(key: str) -> tuple[str, ...]:
    key = key.removeprefix("p_")
    return tuple(p for p in PEERS if key.startswith(p))


def build_cases() -> dict[str, Case]:
    cases: list[Case] = []
    for w in WORKLOADS.values():
        for key in w.runners:
            label, run, kind = RUNNERS[key]
            if w.name == "start":
                label = f"first run: {label}"
            elif w.name == "cpu" and kind:
                label = f"{label:41s} [{kind}]"
            ordered = "conveyor" in key and "unordered" not in key
            cases.append(Case(f"{w.name}.{key}", w, label, run, _needs(key), ordered))
    start = WORKLOADS["start"]
    for key, spec in IMPORTS.items():
        module, _, name = spec.partition(":")
        label = f"from {module} import {name}" if name else f"import {module}"
        cases.append(Case(f"start.import_{key}", start, label, None, _needs(key), False))
    return {c.cid: c for c in cases}


# -- measuring, in the child interpreter ----------------------------------------------


def preimport(case: Case) -> None:
    """Import the library before the clock starts (``start`` measures imports)."""
    import concurrent.futures  # noqa: F401
    import multiprocessing.pool  # noqa: F401

    for module in case.needs:
        __import__(module)
    if "joblib" in case.needs:
        import joblib.externals.loky  # noqa: F401
    if "conveyor" in case.needs:
        # `import conveyor` is lazy: load what a run uses, as `import pypeln` does
        import cloudpickle  # noqa: F401

        import conveyor._engine._local
        import conveyor._run
        import conveyor._workers._process
        import conveyor._workers._thread  # noqa: F401


def stop_helpers(case: Case) -> None:
    """pypeln leaves a multiprocessing Manager running; stop it so its CPU is counted."""
    if "pypeln" in case.needs:
        try:
            from pypeln.process import utils

            if utils.MANAGER is not None:
                utils.MANAGER.shutdown()
        except Exception:
            pass


def child(cid: str) -> None:
    case = build_cases()[cid]
    assert case.run is not None
    w = case.workload
    preimport(case)
    fn = w.fn()
    me = os.getpid()
    cpu0, busy0 = tree_cpu_seconds(me), machine_busy_seconds()
    t0 = time.perf_counter()
    t_last = t0
    out: list[int] = []
    if w.name == "start":  # also note when the last result arrived, before shutdown
        for x in case.run(fn, w.n, w.workers):
            out.append(x)
            t_last = time.perf_counter()
    else:
        out = list(case.run(fn, w.n, w.workers))
    seconds = time.perf_counter() - t0
    stop_helpers(case)
    cpu = tree_cpu_seconds(me) - cpu0
    busy = machine_busy_seconds() - busy0
    bg = background_share(busy - cpu, seconds)
    n = w.n
    ok = len(out) == n and sum(out) == n * (n - 1) + w.expect_offset * n
    if ok and case.ordered:
        ok = all(a < b for a, b in itertools.pairwise(out))
    result = {"cid": cid, "seconds": seconds, "n": n, "ok": ok, "got": len(out)}
    result.update(cpu_s=cpu, bg_share=bg, last_result_s=t_last - t0)
    print(json.dumps(result), flush=True)


# -- the driver -----------------------------------------------------------------------


def run_once(case: Case, env: dict[str, str], timeout: float) -> dict[str, Any]:
    if case.run is None:
        spec = IMPORTS[case.cid.removeprefix("start.import_")]
        cmd = [sys.executable, "-c", IMPORT_CODE, spec]
    else:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", case.cid]
    busy0, t0 = machine_busy_seconds(), time.perf_counter()
    try:
        p = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=timeout, start_new_session=True
        )
    except subprocess.TimeoutExpired:
        return {"cid": case.cid, "error": f"TIMEOUT after {timeout:.0f}s"}
    wall = time.perf_counter() - t0
    lines = p.stdout.strip().splitlines()
    if case.run is None and p.returncode == 0 and lines:
        bg = background_share(machine_busy_seconds() - busy0 - wall, wall)
        return {
            "cid": case.cid,
            "seconds": float(lines[-1]),
            "n": 1,
            "ok": True,
            "interpreter_s": wall,
            "bg_share": bg,
        }
    return child_result(case.cid, p)


class Row(Runs):
    case: Case

    def wrong(self, result: dict[str, Any]) -> str:
        return f"got {result.get('got')} of {result.get('n')}, or bad sum/order"

    def rates(self) -> list[float]:
        return [r["n"] / r["seconds"] for r in self.good]

    def rate(self) -> float:
        return statistics.median(self.rates())

    def cpu_us(self) -> float:
        return self.median("cpu_s") / self.case.n * 1e6

    def bg(self) -> str:
        if any(r.get("bg_share") is None for r in self.good):  # a run too short to tell
            return "-"
        return f"{min(1.0, self.median('bg_share')):.0%}"


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def table(w: Workload, rows: list[Row]) -> list[str]:
    """The table of one workload, as lines."""
    width = 50
    seconds = w.name in ("startup", "million", "start")
    if w.name == "start":
        cols = f"{'median s':>9s} {'min':>8s} {'max':>8s}  {'then':27s} {'bg load':>7s}"
    elif seconds:
        cols = f"{'median s':>9s} {'min':>8s} {'max':>8s}"
        if w.name == "million":
            cols += f" {'items/s':>11s} {'vs serial':>9s} {'CPU us/it':>10s}"
        cols += f" {'bg load':>8s}"
    else:
        rel = "% ideal" if w.ideal_rate else "vs serial"
        cols = (
            f"{'median/s':>10s} {'min/s':>10s} {'max/s':>10s} {'spread':>7s} {rel:>9s} "
            f"{'CPU us/it':>10s} {'bg load':>8s}"
        )
    hdr = f"  {'case':{width}s} {cols}"
    lines = ["", w.title, hdr, "  " + "-" * (len(hdr) - 2)]
    base = next((r for r in rows if r.case.cid.endswith(".serial") and r.good), None)
    for row in rows:
        label = f"  {row.case.label:{width}s}"
        if not row.good:
            lines.append(f"{label} FAILED: {row.problem}"[:220])
            continue
        flag = f"  (!) {row.problem}" if row.problem else ""
        if w.name == "start":
            key = "seconds" if row.case.run is None else "last_result_s"
            then = (
                f"interpreter total {row.median('interpreter_s'):.3f}s"
                if row.case.run is None
                else f"run over at {row.median():.3f}s"
            )
            v = row.values(key)
            line = f"{label} {row.median(key):9.3f} {min(v):8.3f} {max(v):8.3f}  {then:27s}"
            lines.append(f"{line} {row.bg():>7s}{flag}")
        elif seconds:
            v = row.values()
            med = row.median()
            line = f"{label} {med:9.3f} {min(v):8.3f} {max(v):8.3f}"
            if w.name == "million":
                rel = f"{base.median() / med:.2f}x" if base else "-"
                line += f" {fmt_rate(w.n / med):>11s} {rel:>9s} {row.cpu_us():10.2f}"
            lines.append(f"{line} {row.bg():>8s}{flag}")
        else:
            rates, med = row.rates(), row.rate()
            spread = f"{(max(rates) - min(rates)) / med:.0%}"
            if w.ideal_rate:
                rel = f"{med / w.ideal_rate:.0%}"
            else:
                rel = f"{med / base.rate():.2f}x" if base else "-"
            lines.append(
                f"{label} {fmt_rate(med):>10s} {fmt_rate(min(rates)):>10s} "
                f"{fmt_rate(max(rates)):>10s} {spread:>7s} {rel:>9s} "
                f"{row.cpu_us():10.1f} {row.bg():>8s}{flag}"
            )
    return lines


@dataclass(frozen=True)
class Ratio:
    label: str
    ours: str  # conveyor's case id
    theirs: str  # the peer's case id
    measure: str  # "rate": throughput ratio (higher is better); "time": time ratio
    floor: float | None = None  # the floor: rate ratio >= floor, time ratio <= floor


# fmt: off
RATIOS = (
    Ratio("startup: conveyor process time / mp.Pool time", "startup.conveyor_proc",
          "startup.mp_pool", "time"),
    Ratio("startup: conveyor process time / pypeln process time", "startup.conveyor_proc",
          "startup.pypeln_proc", "time"),
    Ratio("startup: conveyor thread time / ThreadPoolExecutor time", "startup.conveyor_thread",
          "startup.tpe", "time"),
    Ratio("overhead: conveyor / mp.Pool.map (auto chunksize)", "overhead.conveyor_proc",
          "overhead.mp_map", "rate"),
    Ratio("overhead: conveyor / mpire map", "overhead.conveyor_proc", "overhead.mpire", "rate"),
    Ratio("overhead: conveyor / pypeln", "overhead.conveyor_proc", "overhead.pypeln_proc",
          "rate"),
    Ratio("cpu: conveyor process / mp.Pool.imap", "cpu.conveyor_proc", "cpu.mp_pool", "rate"),
    Ratio("cpu: conveyor process / mpire fork", "cpu.conveyor_proc", "cpu.mpire", "rate"),
    Ratio("cpu: conveyor process / pypeln process", "cpu.conveyor_proc", "cpu.pypeln_proc",
          "rate"),
    Ratio("cpu: conveyor thread / ThreadPoolExecutor", "cpu.conveyor_thread", "cpu.tpe", "rate"),
    Ratio("io: conveyor / ThreadPoolExecutor", "io.conveyor_thread", "io.tpe", "rate"),
    Ratio("io: conveyor / pypeln thread", "io.conveyor_thread", "io.pypeln_thread", "rate"),
    Ratio("pipeline: conveyor / pypeln", "pipeline.p_conveyor", "pipeline.p_pypeln", "rate",
          3.0),
    Ratio("pipeline: conveyor / pyper", "pipeline.p_conveyor", "pipeline.p_pyper", "rate"),
    Ratio("pipeline: conveyor / stdlib Pool.imap -> Queue -> threads", "pipeline.p_conveyor",
          "pipeline.p_stdlib_queue", "rate"),
    Ratio("pipeline: conveyor / mpire composed by hand", "pipeline.p_conveyor",
          "pipeline.p_mpire", "rate"),
    Ratio("1M: conveyor time / Pool.map time", "million.conveyor_proc", "million.mp_map",
          "time", 2.0),
    Ratio("first process pipeline, to last result: conveyor / mp.Pool", "start.conveyor_proc",
          "start.mp_pool", "time"),
    Ratio("import: import conveyor / import multiprocessing.pool", "start.import_conveyor",
          "start.import_mp_pool", "time"),
    Ratio("import: from conveyor import Pipeline / import multiprocessing.pool",
          "start.import_conveyor_pipeline", "start.import_mp_pool", "time"),
)
# fmt: on


def ratio_lines(rows: dict[str, Row]) -> tuple[list[str], list[dict[str, Any]]]:
    lines = ["", "RATIOS: conveyor against the peers, medians of this run"]
    data: list[dict[str, Any]] = []
    for r in RATIOS:
        a, b = rows.get(r.ours), rows.get(r.theirs)
        if a is None or b is None or not a.good or not b.good:
            continue
        if r.measure == "rate":
            value = a.rate() / b.rate()
        else:
            first_run = a.case.run is not None and a.case.workload.name == "start"
            key = "last_result_s" if first_run else "seconds"
            value = a.median(key) / b.median(key)
        verdict = ""
        if r.floor is not None:
            ok = value >= r.floor if r.measure == "rate" else value <= r.floor
            sign = ">=" if r.measure == "rate" else "<="
            verdict = f"   floor {sign} {r.floor:g}x: {'PASS' if ok else 'FAIL'}"
            if SCALE != 1:
                verdict += f" (but the floor is for full size; this is --scale {SCALE:g})"
        lines.append(f"  {r.label + ':':70s} {value:7.2f}x{verdict}")
        data.append({"label": r.label, "value": value, "floor": r.floor, "measure": r.measure})
    return lines, data


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for dist in ("conveyor", "mpire", "pypeln", "joblib", "loky", "python-pyper", "tqdm"):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            found[dist] = "not installed"
    found["conveyor"] += conveyor_revision()
    return found


def selects(word: str, case: Case) -> bool:
    """--only: a workload name, or the start of case ids ("pipeline.p_", "cpu.conveyor")."""
    return word == case.workload.name or ("." in word and case.cid.startswith(word))


def report(header: list[str], rows: dict[str, Row]) -> list[dict[str, Any]]:
    """Print the tables and the ratios; return the ratios."""
    out = list(header)
    for w in WORKLOADS.values():
        wrows = [row for row in rows.values() if row.case.workload is w]
        if wrows:
            out += table(w, wrows)
    lines, ratios = ratio_lines(rows)
    print("\n".join(out + lines), flush=True)
    return ratios


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--reps", type=int, default=3, help="repetitions per case (default 3)")
    ap.add_argument("--start-reps", type=int, default=7, help="repetitions of `start` (7)")
    ap.add_argument("--only", default="", help="comma list of workloads or case-id prefixes")
    ap.add_argument("--json", default="", help="also write the raw results to this file")
    ap.add_argument("--render", default="", help="print the tables of a --json file again")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 1 rep, --scale 0.1")
    ap.add_argument(
        "--scale", type=float, default=None, help="multiply the item counts (default 1)"
    )
    ap.add_argument("--timeout", type=float, default=600, help="seconds per run (600)")
    ap.add_argument("--list", action="store_true", help="list the case ids and exit")
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    saved: dict[str, Any] = {}
    if args.render:
        with open(args.render) as f:
            saved = json.load(f)
    scale = args.scale if args.scale is not None else (0.1 if args.quick else 1.0)
    scale = saved.get("scale", scale)
    if scale != SCALE or args.quick != QUICK:
        # the sizes are read at import (by the children too): start over with them set
        os.environ["BENCH_QUICK"] = "1" if args.quick else ""
        os.environ["BENCH_SCALE"] = str(scale)
        os.execv(sys.executable, [sys.executable, *sys.argv])
    reps = 1 if QUICK and "--reps" not in sys.argv else args.reps
    start_reps = 3 if QUICK and "--start-reps" not in sys.argv else max(reps, args.start_reps)

    cases = build_cases()
    if args.list:
        for c in cases.values():
            print(f"{c.cid:34s} {c.label}")
        return
    if saved:
        rows = {cid: Row(cases[cid], runs) for cid, runs in saved["raw"].items()}
        report(saved["header"], rows)
        return
    only = [s for s in args.only.split(",") if s]
    chosen = [c for c in cases.values() if not only or any(selects(s, c) for s in only)]
    missing = sorted({m for c in chosen for m in c.needs if importlib.util.find_spec(m) is None})
    chosen = [c for c in chosen if not set(c.needs) & set(missing)]

    iters = calibrate_burn()
    env = dict(os.environ, BENCH_BURN_ITERS=str(iters), PYTHONWARNINGS="ignore")
    header = [
        f"# bench_peers  python {platform.python_version()}  cpus={os.cpu_count()}  "
        f"reps={reps} (start: {start_reps})  burn_iters(2ms)={iters}  scale={SCALE:g}"
        f"{'  QUICK' if QUICK else ''}",
        "# " + "  ".join(f"{k}={v}" for k, v in versions().items()),
    ]
    if missing:
        header.append(f"# skipped, not installed: {', '.join(missing)}")
    print("\n".join(header), flush=True)

    rows = {c.cid: Row(c) for c in chosen}
    reps_of = {c.cid: start_reps if c.workload.name == "start" else reps for c in chosen}
    started = time.perf_counter()
    for rep in range(max(reps_of.values(), default=0)):
        # alternate the direction, so that no case always runs right after the same one
        for c in chosen if rep % 2 == 0 else chosen[::-1]:
            row = rows[c.cid]
            if rep >= reps_of[c.cid] or any("error" in r for r in row.runs):
                continue
            res = run_once(c, env, args.timeout)
            row.runs.append(res)
            bg = res.get("bg_share")
            took = f"{res.get('seconds', 0):.3f}s" + (f" bg={bg:.0%}" if bg is not None else "")
            msg = took if "seconds" in res else res["error"]
            at = time.perf_counter() - started
            print(f"  [{at:5.0f}s] rep {rep + 1} {c.cid:34s} {msg}", file=sys.stderr, flush=True)

    ratios = report([], rows)
    if args.json:
        raw = {cid: row.runs for cid, row in rows.items()}
        doc = {"header": header, "burn_iters": iters, "reps": reps, "scale": SCALE}
        doc.update(ratios=ratios, raw=raw)
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
        print(f"\n# raw results written to {args.json}")


if __name__ == "__main__":
    main()
