"""kind="auto" against hand-written and hand-tuned versions of the same jobs.

Run (from the repository root)::

    .venv-bench/bin/python bench/bench_auto.py --reps 5
    .venv-bench/bin/python bench/bench_auto.py --quick          # smoke run (~30 s)
    .venv-bench/bin/python bench/bench_auto.py --only mixed --mixed-items 8000
    .venv-bench/bin/python bench/bench_auto.py --json bench/results/auto.json  # raw results

Workloads:

* ``parse``  a real job nobody tuned for: parse every ``.py`` file of this interpreter's
  standard library (``site-packages`` left out) with ``ast`` and count the node types
  (a ``Counter`` of ``type(node).__name__`` over ``ast.walk``); files that do not
  decode as UTF-8 or do not parse are skipped and counted. Every variant must give
  the same Counter and the same numbers of files parsed and skipped.

  - ``serial``: a plain loop in the main process, reading and parsing.
  - ``Pool.imap_unordered``: multiprocessing, forkserver, one worker per usable CPU,
    chunksize 8, the file read in the worker (the parent sends paths), and the same
    with the file read in the parent (the parent sends texts).
  - ``conveyor auto``: ``.map(read_text, workers=8).map(parse_and_count, workers=N)
    .sink(merge_into_total)``, no ``kind=`` anywhere.
  - ``conveyor hand-tuned``: the same with kind thread, process, thread.

  Goal: auto within 25% of the best hand-written version (serial or Pool).

* ``mixed``  2,000 items through three stages: sleep 2 ms (8 workers), ~1 ms of
  pure-Python CPU (N workers, calibrated by CPU time), sleep 2 ms (8 workers); auto
  against the kinds chosen by hand, the right ones (thread, process, thread) and
  wrong ones. Goal: auto within 10% of the best choice. The table also splits each
  run's time at the first quarter of the outputs: what auto costs while it measures
  shows in the first part, the pace of the kinds it chose in the second.

Method (as bench_peers.py): every (case, repetition) runs in a fresh interpreter, the
libraries imported before the clock; the clock runs from building the pipeline or
creating the pool to the last result, start-up and shutdown included (the file list is
made before the clock, the same for every variant). Repetitions are interleaved, in
alternating order. The table gives the wall time's median, min and max, the CPU time
of the whole process tree (workers, the forkserver and conveyor's launcher included),
and "bg load", the share of the machine's CPU used by other processes during the run
(from /proc/stat). What auto decided, per stage and repetition, is printed under the
tables.
"""

from __future__ import annotations

import argparse
import ast
import collections
import functools
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from typing import Any

from _harness import (
    Runs,
    child_result,
    conveyor_revision,
    machine_busy_seconds,
    tree_cpu_seconds,
)

QUICK = os.environ.get("BENCH_QUICK") == "1"
BURN_ITERS = int(os.environ.get("BENCH_BURN_ITERS") or 0)  # ~1 ms of CPU; set by the driver


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


N = usable_cpus()
READ_WORKERS = 8
POOL_CHUNKSIZE = 8
MIXED_ITEMS = int(os.environ.get("BENCH_MIXED_ITEMS") or (200 if QUICK else 2_000))
MIXED_IO_WORKERS = 8
MIXED_SLEEP = 0.002
MIXED_CPU_S = 0.001
GOALS = {"parse": 1.25, "mixed": 1.10}  # auto's time / the best other's time, at most

# -- the parse job (module level: the process workers must be able to pickle it) ---------

SKIP = (UnicodeDecodeError, SyntaxError, ValueError)  # ValueError: null bytes (3.11)


def stdlib_paths() -> list[str]:
    """Every .py file of the standard library, sorted; every 10th with --quick."""
    root = sysconfig.get_paths()["stdlib"]
    paths = []
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x != "site-packages")
        paths += [os.path.join(d, f) for f in sorted(files) if f.endswith(".py")]
    return paths[::10] if QUICK else paths


def read_text(path: str) -> str | None:
    """The file's text, or None if it is not UTF-8."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError:
        return None


def parse_and_count(text: str | None) -> collections.Counter[str] | None:
    """The node types of the module, or None if it does not parse."""
    if text is None:
        return None
    try:
        tree = ast.parse(text)
    except SKIP:
        return None
    return collections.Counter(type(node).__name__ for node in ast.walk(tree))


def read_parse_count(path: str) -> collections.Counter[str] | None:
    return parse_and_count(read_text(path))


# The sink merges into these: it writes this process's state, so it must run here.
TOTAL: collections.Counter[str] = collections.Counter()
FILES: collections.Counter[str] = collections.Counter()


def merge_into_total(counts: collections.Counter[str] | None) -> None:
    if counts is None:
        FILES.update(skipped=1)
    else:
        FILES.update(parsed=1)
        TOTAL.update(counts)


def parse_serial(paths: list[str]) -> None:
    for path in paths:
        merge_into_total(read_parse_count(path))


def parse_pool(paths: list[str], read_in_parent: bool = False) -> None:
    import multiprocessing as mp

    pool = mp.get_context("forkserver").Pool(N)
    try:
        if read_in_parent:
            texts = map(read_text, paths)
            results = pool.imap_unordered(parse_and_count, texts, chunksize=POOL_CHUNKSIZE)
        else:
            results = pool.imap_unordered(read_parse_count, paths, chunksize=POOL_CHUNKSIZE)
        for counts in results:
            merge_into_total(counts)
        pool.close()
        pool.join()
    finally:
        pool.terminate()


def parse_conveyor(paths: list[str], kinds: tuple[str, str, str] | None = None) -> Any:
    import conveyor as cv

    k: list[dict[str, str]] = [{"kind": kind} for kind in kinds] if kinds else [{}, {}, {}]
    run = (
        cv.Pipeline()
        .source(paths)
        .map(read_text, workers=READ_WORKERS, **k[0])
        .map(parse_and_count, workers=N, **k[1])
        .sink(merge_into_total, **k[2])
        .run()
    )
    run.wait()
    return run


# -- the mixed pipeline -------------------------------------------------------------------


def burn(x: int, iters: int) -> int:
    """Pure-Python CPU work that holds the GIL throughout; the result depends on x only."""
    s = 0
    for i in range(iters):
        s += i * i
    return x * 2 + (s & 0)


def calibrate_burn(target_s: float = MIXED_CPU_S) -> int:
    """Iterations of burn() that cost ``target_s`` of CPU time (median of 7 probes):
    CPU time, not wall time, so that a busy machine does not shrink the work unit."""
    probe = 200_000
    samples = []
    for _ in range(7):
        t = time.process_time()
        burn(0, probe)
        samples.append(time.process_time() - t)
    return max(1, int(probe * target_s / statistics.median(samples)))


def fetch(x: int) -> int:
    time.sleep(MIXED_SLEEP)
    return x


def store(x: int) -> int:
    time.sleep(MIXED_SLEEP)
    return x + 1


def mixed_conveyor(
    n: int, kinds: tuple[str, str, str] | None = None
) -> tuple[list[int], Any, float]:
    """The outputs, the run, and perf_counter() when the first quarter of them was out."""
    import conveyor as cv

    k: list[dict[str, str]] = [{"kind": kind} for kind in kinds] if kinds else [{}, {}, {}]
    crunch = functools.partial(burn, iters=BURN_ITERS)
    run = (
        cv.Pipeline()
        .source(range(n))
        .map(fetch, workers=MIXED_IO_WORKERS, **k[0])
        .map(crunch, workers=N, name="crunch", **k[1])
        .map(store, workers=MIXED_IO_WORKERS, **k[2])
        .run()
    )
    out: list[int] = []
    quarter = 0.0
    for x in run:
        out.append(x)
        if len(out) == n // 4:
            quarter = time.perf_counter()
    return out, run, quarter


# -- the cases ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    cid: str  # workload.key
    label: str
    kinds: tuple[str, str, str] | None = None  # conveyor: explicit kinds (None: auto)
    hand_written: bool = False  # parse: a candidate for "the best hand-written version"

    @property
    def workload(self) -> str:
        return self.cid.split(".")[0]

    @property
    def auto(self) -> bool:
        return self.cid.endswith(".auto")


TPT = ("thread", "process", "thread")
# fmt: off
CASES = {c.cid: c for c in (
    Case("parse.serial", "serial loop, read + parse in the main process", hand_written=True),
    Case("parse.pool", f"Pool.imap_unordered forkserver {N}w cs={POOL_CHUNKSIZE}, read in worker",
         hand_written=True),
    Case("parse.pool_parent", f"Pool.imap_unordered forkserver {N}w cs={POOL_CHUNKSIZE}, "
         "read in parent", hand_written=True),
    Case("parse.auto", "conveyor auto (no kind=)"),
    Case("parse.hand", "conveyor hand-tuned thread/process/thread", TPT),
    Case("mixed.auto", "conveyor auto (no kind=)"),
    Case("mixed.tpt", "conveyor thread/process/thread", TPT),
    Case("mixed.ttt", "conveyor thread/thread/thread", ("thread", "thread", "thread")),
    Case("mixed.ptp", "conveyor process/thread/process", ("process", "thread", "process")),
    Case("mixed.ppp", "conveyor process/process/process", ("process", "process", "process")),
)}
# fmt: on

# -- measuring, in the child interpreter -------------------------------------------------


def preimport() -> None:
    """What a run uses, before the clock (``import conveyor`` is lazy)."""
    import multiprocessing.pool
    import multiprocessing.popen_forkserver  # noqa: F401

    import cloudpickle  # noqa: F401

    import conveyor._engine._local
    import conveyor._gil
    import conveyor._run
    import conveyor._workers._auto
    import conveyor._workers._process
    import conveyor._workers._thread  # noqa: F401


def decisions_of(run: Any) -> dict[str, tuple[str, str]]:
    """Per stage (the source left out): its kind, and why (empty: the kind was given)."""
    return {s.name: (s.kind, s.decision) for s in run.stats().stages[1:]}


def child(cid: str) -> None:
    case = CASES[cid]
    preimport()
    paths = stdlib_paths() if case.workload == "parse" else []
    me = os.getpid()
    cpu0, busy0 = tree_cpu_seconds(me), machine_busy_seconds()
    t0 = time.perf_counter()
    run = None
    out: list[int] = []
    result: dict[str, Any] = {"cid": cid}
    if cid == "parse.serial":
        parse_serial(paths)
    elif cid == "parse.pool":
        parse_pool(paths)
    elif cid == "parse.pool_parent":
        parse_pool(paths, read_in_parent=True)
    elif case.workload == "parse":
        run = parse_conveyor(paths, case.kinds)
    else:
        out, run, quarter = mixed_conveyor(MIXED_ITEMS, case.kinds)
        result["quarter_s"] = quarter - t0
    seconds = time.perf_counter() - t0
    cpu = tree_cpu_seconds(me) - cpu0
    busy = machine_busy_seconds() - busy0
    result.update(seconds=seconds, cpu_s=cpu)
    result["bg_share"] = max(0.0, busy - cpu) / (seconds * N) if seconds >= 0.1 else None
    if case.workload == "parse":
        digest = hashlib.sha256(repr(sorted(TOTAL.items())).encode()).hexdigest()[:12]
        result["check"] = f"{FILES['parsed']} parsed, {FILES['skipped']} skipped, {digest}"
        result["ok"] = FILES["parsed"] + FILES["skipped"] == len(paths) and FILES["parsed"] > 0
        result["nodes"] = sum(TOTAL.values())
    else:
        result["check"] = f"{len(out)} results"
        result["ok"] = out == [2 * x + 1 for x in range(MIXED_ITEMS)]
    if run is not None:
        result["decisions"] = decisions_of(run)
    print(json.dumps(result), flush=True)


# -- the driver ---------------------------------------------------------------------------


def run_once(case: Case, env: dict[str, str], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", case.cid]
    try:
        p = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=timeout, start_new_session=True
        )
    except subprocess.TimeoutExpired:
        return {"cid": case.cid, "error": f"TIMEOUT after {timeout:.0f}s"}
    return child_result(case.cid, p)


class Row(Runs):
    case: Case

    def checks(self) -> set[str]:
        return {str(r.get("check")) for r in self.good}

    def bg(self) -> str:
        shares = [r.get("bg_share") for r in self.good]
        if not shares or any(s is None for s in shares):
            return "-"
        return f"{min(1.0, statistics.median(shares)):.0%}"


TITLES = {
    "parse": "PARSE: every .py file of the standard library, ast.parse + Counter of node types "
    "(seconds, lower is better)",
    "mixed": f"MIXED: {MIXED_ITEMS:,} items, sleep {MIXED_SLEEP * 1000:g} ms ({MIXED_IO_WORKERS}w)"
    f" -> ~{MIXED_CPU_S * 1000:g} ms CPU ({N}w) -> sleep {MIXED_SLEEP * 1000:g} ms "
    f"({MIXED_IO_WORKERS}w) (seconds, lower is better)",
}


def report(workload: str, rows: list[Row]) -> tuple[list[str], dict[str, Any]]:
    """The table, the goal line and auto's decisions of one workload, as lines; and the
    goal's numbers."""
    width = 58
    split = workload == "mixed"  # also: the first quarter of the outputs, and the rest
    hdr = (
        f"  {'case':{width}s} {'median s':>9s} {'min':>7s} {'max':>7s} {'vs auto':>8s} "
        f"{'CPU s':>7s} {'bg load':>8s}"
    )
    if split:
        hdr += f" {'1st 25% s':>10s} {'last 75% s':>11s}"
    lines = ["", TITLES[workload], hdr, "  " + "-" * (len(hdr) - 2)]
    auto = next((r for r in rows if r.case.auto and r.good), None)
    for row in rows:
        label = f"  {row.case.label:{width}s}"
        if not row.good:
            lines.append(f"{label} FAILED: {row.problem}"[:220])
            continue
        v, med = row.values(), row.median()
        rel = f"{med / auto.median():.2f}x" if auto else "-"
        flag = f"  (!) {row.problem}" if row.problem else ""
        line = (
            f"{label} {med:9.3f} {min(v):7.3f} {max(v):7.3f} {rel:>8s} "
            f"{row.median('cpu_s'):7.2f} {row.bg():>8s}"
        )
        if split:
            quarter = row.median("quarter_s")
            rest = statistics.median(r["seconds"] - r["quarter_s"] for r in row.good)
            line += f" {quarter:10.3f} {rest:11.3f}"
        lines.append(line + flag)
    checks = {c for row in rows for c in row.checks()}
    if workload == "parse":
        same = len(checks) == 1 and not any(row.problem for row in rows)
        what = next(iter(checks)) if same else " | ".join(sorted(checks))
        lines.append(f"  results: {'identical in every run' if same else 'DIFFER'}: {what}")
        others = [r for r in rows if r.case.hand_written and r.good]
        best_what = "the best hand-written version"
    else:
        same = not any(row.problem for row in rows)
        lines.append(f"  results: {'all correct and in order' if same else 'WRONG somewhere'}")
        others = [r for r in rows if not r.case.auto and r.good]
        best_what = "the best hand-chosen kinds"
    goal: dict[str, Any] = {"workload": workload, "limit": GOALS[workload]}
    if auto is not None and others:
        best = min(others, key=Row.median)
        ratio = auto.median() / best.median()
        ok = ratio <= GOALS[workload] and same
        goal.update(ratio=ratio, best=best.case.label, ok=ok)
        lines.append(
            f"  GOAL {workload}: auto / {best_what} ({best.case.label}) = "
            f"{auto.median():.3f} / {best.median():.3f} = {ratio:.2f}x "
            f"(goal <= {GOALS[workload]:.2f}x): {'PASS' if ok else 'FAIL'}"
        )
        if workload == "mixed":
            worst = max(others, key=Row.median)
            lines.append(
                f"  worst choice measured: {worst.case.label}, {worst.median():.3f} s "
                f"({worst.median() / auto.median():.2f}x auto)"
            )
    if auto is not None:
        lines += decision_lines(auto)
    return lines, goal


def decision_lines(auto: Row) -> list[str]:
    """Per stage: the kinds auto chose, then each repetition's evidence."""
    per_stage: dict[str, list[tuple[str, str]]] = {}
    for r in auto.runs:
        for stage, (kind, why) in r.get("decisions", {}).items():
            per_stage.setdefault(stage, []).append((kind, why))
    lines = ["  decisions of conveyor auto (run.stats().stages[i].decision), per repetition:"]
    for stage, seen in per_stage.items():
        kinds = collections.Counter(kind for kind, _ in seen)
        chosen = ", ".join(f"{kind} {count}/{len(seen)}" for kind, count in kinds.items())
        lines.append(f"    {stage}: {chosen}")
        lines += [f"      {i}. {why}" for i, (_, why) in enumerate(seen, 1)]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--reps", type=int, default=3, help="repetitions per case (default 3)")
    ap.add_argument("--only", default="", help="comma list of workloads or case ids")
    ap.add_argument("--json", default="", help="also write the raw results to this file")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 1 rep, fewer items")
    ap.add_argument("--mixed-items", type=int, default=None, help="items of `mixed` (2000)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per run (300)")
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    items = str(args.mixed_items or "")
    if args.quick != QUICK or items != os.environ.get("BENCH_MIXED_ITEMS", ""):
        # the sizes are read at import (by the children too): start over with them set
        os.environ["BENCH_QUICK"] = "1" if args.quick else ""
        os.environ["BENCH_MIXED_ITEMS"] = items
        os.execv(sys.executable, [sys.executable, *sys.argv])
    reps = 1 if QUICK and "--reps" not in sys.argv else args.reps
    only = [s for s in args.only.split(",") if s]
    chosen = [c for c in CASES.values() if not only or c.workload in only or c.cid in only]

    iters = calibrate_burn()
    env = dict(os.environ, BENCH_BURN_ITERS=str(iters), PYTHONWARNINGS="ignore")
    from importlib.metadata import version

    header = [
        f"# bench_auto  python {platform.python_version()}  usable cpus={N}  reps={reps}  "
        f"burn_iters(1ms)={iters}  stdlib files={len(stdlib_paths())}"
        f"{'  QUICK' if QUICK else ''}",
        f"# conveyor={version('conveyor')}{conveyor_revision()}  "
        f"loadavg before: {os.getloadavg()[0]:.2f}",
    ]
    print("\n".join(header), flush=True)

    rows = {c.cid: Row(c) for c in chosen}
    started = time.perf_counter()
    for rep in range(reps):
        # alternate the direction, so that no case always runs right after the same one
        for c in chosen if rep % 2 == 0 else chosen[::-1]:
            res = run_once(c, env, args.timeout)
            rows[c.cid].runs.append(res)
            msg = res.get("error") or f"{res['seconds']:.3f}s {res.get('check')}"
            if res.get("bg_share") is not None:
                msg += f" bg={res['bg_share']:.0%}"
            at = time.perf_counter() - started
            print(f"  [{at:5.0f}s] rep {rep + 1} {c.cid:18s} {msg}", file=sys.stderr, flush=True)

    out: list[str] = []
    goals = []
    for workload in ("parse", "mixed"):
        wrows = [row for row in rows.values() if row.case.workload == workload]
        if wrows:
            lines, goal = report(workload, wrows)
            out += lines
            goals.append(goal)
    print("\n".join(out), flush=True)
    if args.json:
        doc = {"header": header, "burn_iters": iters, "reps": reps, "goals": goals}
        doc["raw"] = {cid: row.runs for cid, row in rows.items()}
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
        print(f"\n# raw results written to {args.json}")


if __name__ == "__main__":
    main()
