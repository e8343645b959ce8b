"""``conveyor gil``: the GIL, measured on this machine.

The lesson of the course notes, with the user's own numbers: a pure-Python loop
gets nothing from threads (one thread runs Python at a time) and ~Nx from
processes (each has its own interpreter and GIL), while work that releases the
GIL, C code such as hashing, or waiting, scales on threads. Shape::

    plan: calibrate ──▶ measure: serial, threads, processes ──▶ analyze ──▶ render
    (size each workload      (one Timing per row)            (speed-ups,     rich table,
     to the time budget)                                      lessons)       text or JSON

* **Workloads.** Each :class:`Workload` is a module-level function of one integer,
  ``fn(units)``, that does ``units`` of work: turns of a Python loop (:func:`spin`),
  1 MiB buffers hashed with sha256 (:func:`hash_blocks`: hashlib releases the GIL
  for inputs of 2 KiB or more), or sleeps (:func:`sleep_tasks`). A workload is
  measured once serially (the baseline) and then on each of its runners, with the
  same total work split into one share per thread or process. Measuring another
  function (a user's, say) is one more Workload: plan, measure and analyze take any.
* **Honest windows.** Threads and processes start first, report that they are
  ready (processes after a short warm-up), and wait; the clock starts when they
  are all released together and stops when the last one finishes (each records
  its own end on the system-wide monotonic clock). Start-up is never timed. CPU
  time is each thread's or process's own CPU clock over its share, summed.
* **Lessons follow the numbers.** :func:`choose_lesson` reads the measured
  speed-up against the ideal one and the GIL state of the interpreter (a
  free-threaded build may run with the GIL off, or on again): it never states
  the textbook result when the machine measured something else.

Processes come from ``multiprocessing`` with the ``forkserver`` start method
(``spawn`` where there is none), not from conveyor's own launcher
(``_workers/_zygote.py``). The launcher forks stage workers that speak the
engine's protocol (a data socket, the run's control memory, batches of items);
using it here would mean either a new message in that protocol or running a
Pipeline, whose hand-offs and batching would then sit inside the timed window.
The benchmark needs only N bare processes that start, say they are ready, wait
for one signal and report their clocks, which ``multiprocessing`` gives with a
pipe each. ``forkserver`` never forks this process (which may be running
threads, and has just run the thread rows): children are forked from a
single-threaded server started with fork+exec, which imports a ``__main__``
that is a file once for all of them. What the server costs to start is start-up,
outside the timed window.
"""

from __future__ import annotations

import functools
import hashlib
import signal
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ._gil import free_threaded_build, gil_enabled
from ._gil import usable_cpus as available_cpus

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from multiprocessing.connection import Connection
    from multiprocessing.context import BaseContext

    from rich.table import Table

__all__ = [
    "GilState",
    "Report",
    "Row",
    "Runner",
    "Timing",
    "Workload",
    "analyze",
    "available_cpus",
    "build_table",
    "choose_lesson",
    "default_workers",
    "gil_state",
    "measure",
    "plan",
    "run_benchmark",
]

RunnerKind = Literal["serial", "threads", "processes"]
Outcome = Literal["baseline", "scales", "partial", "none", "slower"]

# Time budget: every row is measured ROUNDS times (the fastest counts), and each
# serial run of the CPU loop and of hashing is sized to take about SERIAL_SECONDS;
# the whole default command then takes a few seconds, --quick about one.
ROUNDS = 3
QUICK_ROUNDS = 2
SERIAL_SECONDS = 0.2
QUICK_SERIAL_SECONDS = 0.06
# A calibration probe runs the workload until one call takes at least this long.
PROBE_SECONDS = 0.03
QUICK_PROBE_SECONDS = 0.015
# The sleeping workload: SLEEP_TASKS sleeps of SLEEP_SECONDS, then on SLEEP_THREADS.
SLEEP_TASKS = 64
SLEEP_THREADS = 64
SLEEP_SECONDS = 0.004
QUICK_SLEEP_SECONDS = 0.002
HASH_BLOCK_BYTES = 1 << 20
# Thresholds on the speed-up s against the ideal one: the work "scales" when s
# wins at least half of the ideal's gain, and it got "none" below NO_GAIN.
SCALES_SHARE = 0.5
NO_GAIN = 1.25
SLOWER = 0.85
# A serial run that got less of a CPU than this was sharing it with other programs.
CONTENDED = 0.85
# --workers above this is a typo, not a machine: each worker is a process.
MAX_WORKERS = 1024
# Catches a child that never gets ready (a hang, not a pace).
READY_TIMEOUT = 60.0


def _clock() -> float:
    # CLOCK_MONOTONIC is system-wide on Linux: a child's reading compares with ours
    return time.clock_gettime(time.CLOCK_MONOTONIC)


# -- the machine and the interpreter ---------------------------------------------------


def default_workers() -> int:
    """N: one worker per available CPU, at least 2 (one worker shows nothing)."""
    return max(2, available_cpus())


@dataclass(frozen=True)
class GilState:
    """Which interpreter was measured: a free-threaded build, and whether the GIL is on."""

    free_threaded_build: bool
    enabled: bool

    def describe(self) -> str:
        if not self.free_threaded_build:
            return "GIL enabled (standard build)"
        if self.enabled:
            return "GIL enabled (free-threaded build, with the GIL turned back on)"
        return "GIL disabled (free-threaded build)"


def gil_state() -> GilState:
    """The running interpreter's GIL: ``Py_GIL_DISABLED`` says how it was built, and
    ``sys._is_gil_enabled()`` (3.13+) whether the GIL is on now (a free-threaded
    build turns it back on with PYTHON_GIL=1 or for an extension that needs it)."""
    return GilState(free_threaded_build=free_threaded_build(), enabled=gil_enabled())


def interpreter_name() -> str:
    """Such as "CPython 3.13.1"."""
    import platform

    return f"{platform.python_implementation()} {platform.python_version()}"


# -- workloads -------------------------------------------------------------------------


def spin(units: int) -> int:
    """Pure-Python CPU work: ``units`` turns of an integer loop, holding the GIL."""
    x = 0
    for i in range(units):
        x = (x * 31 + i) & 0xFFFF
    return x


@functools.cache
def _block() -> bytes:
    return bytes(range(256)) * (HASH_BLOCK_BYTES // 256)


def hash_blocks(units: int) -> bytes:
    """``units`` sha256 digests of a 1 MiB buffer: C code that releases the GIL."""
    block = _block()
    digest = b""
    for _ in range(units):
        digest = hashlib.sha256(block).digest()
    return digest


def sleep_tasks(units: int, seconds: float) -> None:
    """``units`` waits of ``seconds`` each: like I/O, time.sleep releases the GIL."""
    for _ in range(units):
        time.sleep(seconds)


@dataclass(frozen=True)
class Runner:
    """Where a workload's shares run: one thread serially, or N threads or processes."""

    kind: RunnerKind
    workers: int

    def label(self) -> str:
        noun = {"serial": "thread", "threads": "thread", "processes": "process"}[self.kind]
        if self.workers != 1:
            noun = "processes" if noun == "process" else noun + "s"
        return f"{self.workers} {noun}"


SERIAL = Runner("serial", 1)


@dataclass(frozen=True)
class Workload:
    """One function measured serially and then on each of ``runners``."""

    key: str
    """Names it in JSON and picks its lessons: cpu, hash or sleep."""
    label: str
    """What the table says it is."""
    work: str
    """The total work, in words."""
    fn: Callable[[int], object]
    """Does ``units`` of work; picklable by reference (processes run it)."""
    units: int
    cpu_bound: bool
    """Its speed-up cannot exceed the CPUs available."""
    runners: tuple[Runner, ...]
    warmup: int = 1
    """Units a process runs before it says it is ready."""

    def shares(self, runner: Runner) -> list[int]:
        """``units`` split over the runner's workers as evenly as can be."""
        n = min(runner.workers, self.units)
        q, r = divmod(self.units, n)
        return [q + 1] * r + [q] * (n - r)

    def ideal(self, runner: Runner, cpus: int) -> float:
        """The speed-up if nothing but the split held it back."""
        best = self.units / max(self.shares(runner))
        return min(best, float(cpus)) if self.cpu_bound else best


def _rate(fn: Callable[[int], object], units: int, probe: float) -> float:
    """Units per second of ``fn``, from calls grown until one lasts ``probe`` seconds."""
    fn(units)  # warm-up: caches, the adaptive interpreter
    while True:
        t0 = _clock()
        fn(units)
        dt = _clock() - t0
        if dt >= probe:
            return units / dt
        grow = 16.0 if dt <= 0 else min(16.0, 1.5 * probe / dt)
        units = max(units + 1, int(units * grow))


def plan(
    workers: int,
    *,
    quick: bool = False,
    rate: Callable[[Callable[[int], object], int, float], float] = _rate,
) -> list[Workload]:
    """The three workloads, each sized so that its serial run fits the time budget."""
    budget = QUICK_SERIAL_SECONDS if quick else SERIAL_SECONDS
    probe = QUICK_PROBE_SECONDS if quick else PROBE_SECONDS
    on_threads = Runner("threads", workers)
    turns = max(workers, round(rate(spin, 10_000, probe) * budget / workers) * workers)
    blocks = max(workers, round(rate(hash_blocks, 1, probe) * budget / workers) * workers)
    nap = QUICK_SLEEP_SECONDS if quick else SLEEP_SECONDS
    return [
        Workload(
            key="cpu",
            label="pure-Python loop",
            work=f"{turns:,} loop turns",
            fn=spin,
            units=turns,
            cpu_bound=True,
            runners=(on_threads, Runner("processes", workers)),
            warmup=10_000,
        ),
        Workload(
            key="hash",
            label="sha256 of 1 MiB buffers",
            work=f"{blocks:,} MiB hashed",
            fn=hash_blocks,
            units=blocks,
            cpu_bound=True,
            runners=(on_threads,),
        ),
        Workload(
            key="sleep",
            label=f"{SLEEP_TASKS} sleeps of {nap * 1000:g} ms",
            work=f"{SLEEP_TASKS} x time.sleep({nap:g})",
            fn=functools.partial(sleep_tasks, seconds=nap),
            units=SLEEP_TASKS,
            cpu_bound=False,
            runners=(Runner("threads", SLEEP_THREADS),),
        ),
    ]


# -- measuring ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    wall: float
    """Seconds from the release of every worker to the last finish."""
    cpu: float
    """CPU seconds spent on the work, summed over threads or processes."""


def run_threads(fn: Callable[[int], object], shares: Sequence[int]) -> Timing:
    n = len(shares)
    ready = threading.Barrier(n + 1)
    go = threading.Event()
    ends = [0.0] * n
    cpus = [0.0] * n
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            ready.wait()
        except threading.BrokenBarrierError:
            return
        go.wait()
        c0 = time.thread_time()
        try:
            fn(shares[i])
        except BaseException as exc:
            errors.append(exc)
        ends[i] = _clock()
        cpus[i] = time.thread_time() - c0

    # daemon: a Ctrl-C during the measurement must not wait for the work to end
    threads = [
        threading.Thread(target=work, args=(i,), name=f"gil-{i}", daemon=True) for i in range(n)
    ]
    for t in threads:
        t.start()
    try:
        ready.wait(READY_TIMEOUT)
    except threading.BrokenBarrierError:
        raise RuntimeError(
            f"{n} measuring threads did not start within {READY_TIMEOUT:g}s"
        ) from None
    t0 = _clock()
    go.set()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return Timing(wall=max(ends) - t0, cpu=sum(cpus))


def process_context() -> BaseContext:
    """forkserver where the platform has it, else spawn; never fork (module docstring)."""
    import multiprocessing

    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def _child(conn: Connection, fn: Callable[[int], object], share: int, warmup: int) -> None:
    """A measuring process: warm up, say ready, wait for the release, work, report."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    fn(warmup)
    conn.send_bytes(b"ready")
    conn.recv_bytes()
    c0 = time.thread_time()
    fn(share)
    end = _clock()
    conn.send((end, time.thread_time() - c0))
    conn.close()


def run_processes(
    fn: Callable[[int], object],
    shares: Sequence[int],
    *,
    warmup: int = 1,
    context: BaseContext | None = None,
) -> Timing:
    ctx = context if context is not None else process_context()
    procs: list[Any] = []
    conns: list[Connection] = []
    done = False
    try:
        for i, share in enumerate(shares):
            ours, theirs = ctx.Pipe()
            p = ctx.Process(  # type: ignore[attr-defined]
                target=_child, args=(theirs, fn, share, warmup), name=f"gil-{i}", daemon=True
            )
            p.start()
            theirs.close()
            procs.append(p)
            conns.append(ours)
        for i, conn in enumerate(conns):
            # poll() is also true when the child died: recv_bytes then raises EOFError
            if not conn.poll(READY_TIMEOUT):
                raise RuntimeError(f"measuring process {i} was not ready in {READY_TIMEOUT:g}s")
            try:
                conn.recv_bytes()
            except EOFError:
                procs[i].join(READY_TIMEOUT)
                raise RuntimeError(
                    f"measuring process {i} exited (code {procs[i].exitcode}) before it was ready"
                ) from None
        t0 = _clock()
        for conn in conns:
            conn.send_bytes(b"go")
        results: list[tuple[float, float]] = []
        for i, conn in enumerate(conns):
            try:
                results.append(conn.recv())
            except EOFError:
                procs[i].join(READY_TIMEOUT)
                raise RuntimeError(
                    f"measuring process {i} exited (code {procs[i].exitcode}) while working"
                ) from None
        done = True
        return Timing(wall=max(end for end, _ in results) - t0, cpu=sum(c for _, c in results))
    finally:
        # after an error or Ctrl-C, children still waiting or working are killed;
        # otherwise they have sent their result and are exiting
        for conn in conns:
            conn.close()
        for p in procs:
            if not done:
                p.kill()
            p.join(READY_TIMEOUT)
            if p.is_alive():
                p.kill()
                p.join()


def measure(
    workloads: Sequence[Workload],
    *,
    rounds: int = 1,
    progress: Callable[[str], object] | None = None,
    context: BaseContext | None = None,
) -> list[list[Timing]]:
    """Per workload, the serial Timing and then one per runner, in order.

    Each is the fastest of ``rounds``: a round runs the serial baseline and every
    runner once, so that a burst of load from other programs hits them alike, and
    the fastest run is the one it disturbed least (the reasoning of ``timeit``).
    """
    timings: list[list[Timing]] = []
    for w in workloads:
        runners = (SERIAL, *w.runners)
        best: list[Timing | None] = [None] * len(runners)
        for n in range(rounds):
            for i, runner in enumerate(runners):
                if progress is not None:
                    progress(f"{w.label} on {runner.label()}, round {n + 1} of {rounds}")
                if runner.kind != "processes":
                    # the baseline too runs on a thread started and released for it:
                    # it differs from the threads row only in the number of threads
                    t = run_threads(w.fn, w.shares(runner))
                else:
                    if context is None:
                        context = process_context()
                    t = run_processes(w.fn, w.shares(runner), warmup=w.warmup, context=context)
                kept = best[i]
                if kept is None or t.wall < kept.wall:
                    best[i] = t
        timings.append([t for t in best if t is not None])
    return timings


# -- what the numbers say ------------------------------------------------------------------


def outcome(speedup: float, ideal: float) -> Outcome:
    """scales: at least half the ideal's gain; none: below NO_GAIN; slower: below SLOWER."""
    if ideal > 1 and speedup >= 1 + SCALES_SHARE * (ideal - 1):
        return "scales"
    if speedup < SLOWER:
        return "slower"
    if speedup < NO_GAIN:
        return "none"
    return "partial"


def shortfall(base: Timing, t: Timing, ideal: float) -> str:
    """Why a row that should scale fell short, read from its CPU time.

    speed-up / ideal = on_cpu / cost x base.wall / base.cpu, where ``on_cpu`` is
    the share of ``ideal`` CPUs' time its workers were running (other programs had
    the rest, or they waited) and ``cost`` its CPU time against the serial run's
    (the same work can cost more CPU elsewhere: cores that share caches, units or
    clock speed, another process's memory). The larger loss is the one stated,
    as measured; the cause is only suggested.
    """
    on_cpu = t.cpu / max(t.wall * ideal, 1e-9)
    cost = t.cpu / max(base.cpu, 1e-9)
    if on_cpu <= 1 / cost:
        return f"its workers ran {on_cpu:.0%} of the time (other load?)"
    return f"the work took {cost:.1f}x the serial CPU time"


_BASELINES = {
    "cpu": "baseline: one thread runs the loop, holding the GIL",
    "hash": "baseline: one thread; sha256 runs in C",
    "sleep": "baseline: one thread, the waits add up one after another",
}


def choose_lesson(
    key: str, runner: RunnerKind, base: Timing, t: Timing, ideal: float, gil: GilState
) -> tuple[Outcome, str]:
    """What a row teaches, from its numbers (``t`` against its serial run ``base``)
    and the GIL state measured, not from the textbook."""
    if runner == "serial":
        return "baseline", _BASELINES.get(key, "baseline: one thread")
    speedup = base.wall / max(t.wall, 1e-9)
    got = outcome(speedup, ideal)
    s = f"{speedup:.1f}x"
    of = f"{speedup:.1f}x of {ideal:g}x"
    if ideal <= 1:
        return got, f"{runner}: {s}; one CPU is available, so nothing can run in parallel"
    if key == "cpu" and runner == "threads":
        if not gil.enabled:
            if got == "scales":
                return got, f"threads: ~{s}, the GIL is off here: threads run Python in parallel"
            if got == "partial":
                return got, f"threads: {of}, no GIL here; {shortfall(base, t, ideal)}"
            return got, f"threads: no speed-up although the GIL is off: {shortfall(base, t, ideal)}"
        if got == "none":
            return got, "threads: no speed-up, the GIL lets one thread run Python at a time"
        if got == "slower":
            return got, f"threads: {s}, slower: they take turns at the GIL and pay for each switch"
        return got, (
            f"threads: {s} with the GIL on, unexpected: was the serial run slowed by other "
            "programs? run it again"
        )
    if runner == "processes":
        if got == "scales":
            return got, f"processes: ~{s}, each has its own interpreter and GIL"
        if got == "partial":
            return got, f"processes: {of}, each has its own GIL; {shortfall(base, t, ideal)}"
        return got, f"processes: no speed-up measured: {shortfall(base, t, ideal)}"
    if key == "hash":
        if got == "scales":
            return got, f"hashing releases the GIL: threads scale (~{s})"
        why = shortfall(base, t, ideal)
        if got == "partial":
            return got, f"hashing releases the GIL: threads scale, {of}; {why}"
        return got, f"hashing on threads: no speed-up measured: {why}"
    if key == "sleep":
        if got == "scales":
            return got, f"sleeping releases the GIL: threads overlap waits (~{speedup:.0f}x)"
        if got == "partial":
            return got, (
                f"sleeping releases the GIL: threads overlap waits, {speedup:.0f}x of "
                f"{ideal:g}x (waking the threads costs a little)"
            )
        return got, "threads: the waits did not overlap, unexpected: is the machine overloaded?"
    return got, f"{runner}: {of}"


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    workload: str
    label: str
    work: str
    units: int
    runner: RunnerKind
    runs_on: str
    workers: int
    wall_seconds: float
    cpu_seconds: float
    speedup: float
    """Against the workload's serial run (1.0 for that run)."""
    ideal_speedup: float
    outcome: Outcome
    lesson: str


@dataclass(frozen=True)
class Report:
    """What ``conveyor gil`` measured, and what it means."""

    interpreter: str
    gil: GilState
    cpus: int
    workers: int
    quick: bool
    seconds: float
    """How long the command measured, calibration and start-ups included."""
    rows: tuple[Row, ...]

    @property
    def serial_cpu_share(self) -> float:
        """The share of a CPU the serial CPU-bound runs got: well below 1.0, other
        programs were running on this one and every number is noisy."""
        shares = [
            r.cpu_seconds / r.wall_seconds
            for r in self.rows
            if r.runner == "serial" and r.workload != "sleep" and r.wall_seconds > 0
        ]
        return min(1.0, min(shares)) if shares else 1.0

    def header(self) -> str:
        return (
            f"conveyor gil: {self.interpreter}, {self.gil.describe()}; "
            f"{self.cpus} CPU{'s' if self.cpus != 1 else ''} available, N = {self.workers}"
        )

    def footer(self) -> str:
        lines = [
            "wall: from the release of all workers to the last finish (start-up excluded), "
            "the fastest of a few rounds; CPU: summed over threads or processes; "
            f"measured in {self.seconds:.1f}s" + (" (--quick: coarser)" if self.quick else "")
        ]
        share = self.serial_cpu_share
        if share < CONTENDED:
            lines.append(
                f"note: a serial run got only {share:.0%} of a CPU: other programs were busy "
                "on this machine, so these numbers are noisy"
            )
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "interpreter": self.interpreter,
            "free_threaded_build": self.gil.free_threaded_build,
            "gil_enabled": self.gil.enabled,
            "cpus": self.cpus,
            "workers": self.workers,
            "quick": self.quick,
            "seconds": round(self.seconds, 3),
            "serial_cpu_share": round(self.serial_cpu_share, 3),
            "rows": [
                {
                    "workload": r.workload,
                    "label": r.label,
                    "work": r.work,
                    "units": r.units,
                    "runner": r.runner,
                    "workers": r.workers,
                    "wall_seconds": round(r.wall_seconds, 6),
                    "cpu_seconds": round(r.cpu_seconds, 6),
                    "speedup": round(r.speedup, 3),
                    "ideal_speedup": round(r.ideal_speedup, 3),
                    "outcome": r.outcome,
                    "lesson": r.lesson,
                }
                for r in self.rows
            ],
        }

    def render(self) -> str:
        """The table as plain aligned text."""
        width = max(len(r.label) for r in self.rows)
        head = (
            f"{'workload':<{width}}  {'runs on':<12} {'wall s':>7} {'CPU s':>7} "
            f"{'speed-up':>8} {'ideal':>6}  lesson"
        )
        lines = [self.header(), head, "-" * len(head)]
        for r in self.rows:
            lines.append(
                f"{r.label:<{width}}  {r.runs_on:<12} {r.wall_seconds:>7.3f} "
                f"{r.cpu_seconds:>7.3f} {r.speedup:>7.2f}x {r.ideal_speedup:>5g}x  {r.lesson}"
            )
        lines.append(self.footer())
        return "\n".join(lines)


def analyze(
    workloads: Sequence[Workload],
    timings: Sequence[Sequence[Timing]],
    *,
    gil: GilState,
    cpus: int,
    workers: int,
    quick: bool = False,
    seconds: float = 0.0,
    interpreter: str | None = None,
) -> Report:
    """Speed-ups against each workload's serial run, and the lesson of every row."""
    rows: list[Row] = []
    for w, measured in zip(workloads, timings, strict=True):
        base = measured[0]
        for runner, t in zip((SERIAL, *w.runners), measured, strict=True):
            ideal = 1.0 if runner.kind == "serial" else w.ideal(runner, cpus)
            got, lesson = choose_lesson(w.key, runner.kind, base, t, ideal, gil)
            rows.append(
                Row(
                    workload=w.key,
                    label=w.label,
                    work=w.work,
                    units=w.units,
                    runner=runner.kind,
                    runs_on=runner.label(),
                    workers=runner.workers,
                    wall_seconds=t.wall,
                    cpu_seconds=t.cpu,
                    speedup=base.wall / max(t.wall, 1e-9),
                    ideal_speedup=ideal,
                    outcome=got,
                    lesson=lesson,
                )
            )
    return Report(
        interpreter=interpreter if interpreter is not None else interpreter_name(),
        gil=gil,
        cpus=cpus,
        workers=workers,
        quick=quick,
        seconds=seconds,
        rows=tuple(rows),
    )


def run_benchmark(
    workers: int | None = None,
    *,
    quick: bool = False,
    progress: Callable[[str], object] | None = None,
) -> Report:
    """Calibrate, measure and analyze: the whole of ``conveyor gil``."""
    t0 = _clock()
    n = workers if workers is not None else default_workers()
    if progress is not None:
        progress("calibrating")
    workloads = plan(n, quick=quick)
    rounds = QUICK_ROUNDS if quick else ROUNDS
    timings = measure(workloads, rounds=rounds, progress=progress)
    return analyze(
        workloads,
        timings,
        gil=gil_state(),
        cpus=available_cpus(),
        workers=n,
        quick=quick,
        seconds=_clock() - t0,
    )


# -- the terminal view ---------------------------------------------------------------------

_STYLES = {
    "baseline": "dim",
    "scales": "green",
    "partial": "yellow",
    "none": "red",
    "slower": "red",
}


def build_table(report: Report) -> Table:
    """The rich table of a report (rich is imported here, not before)."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=report.header(), title_justify="left", caption=report.footer())
    table.caption_justify = "left"
    table.add_column("workload", no_wrap=True)
    table.add_column("runs on", no_wrap=True)
    table.add_column("wall s", justify="right")
    table.add_column("CPU s", justify="right")
    table.add_column("speed-up", justify="right")
    table.add_column("ideal", justify="right")
    table.add_column("lesson")
    rows = report.rows
    for i, r in enumerate(rows):
        first = i == 0 or rows[i - 1].workload != r.workload
        last = i == len(rows) - 1 or rows[i + 1].workload != r.workload
        table.add_row(
            r.label if first else "",
            r.runs_on,
            f"{r.wall_seconds:.3f}",
            f"{r.cpu_seconds:.3f}",
            Text(f"{r.speedup:.2f}x", style=_STYLES[r.outcome]),
            f"{r.ideal_speedup:g}x",
            r.lesson,
            end_section=last,
        )
    return table
