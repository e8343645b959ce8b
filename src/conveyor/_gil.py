"""kind="auto": which worker kind a stage runs on, and the evidence for it.

Threads do not run Python code in parallel (the GIL), so a stage that spends its
time in Python bytecode needs processes; one that waits (I/O, sleeps) or spends its
time in C code that lets the GIL go (hashing, compression, numpy) is best on
threads, which need no pickling and share memory. conveyor decides per stage:

1. Before anything runs (:func:`static_choice`): ``async def`` goes to the asyncio
   kind; on a free-threaded CPython with the GIL off, everything goes to threads;
   a function that writes the main process's state (a bound method of a mutable
   object, a closure over a list, dict or set, a function that assigns or mutates
   globals) stays on threads, because in a process its writes would be lost; and a
   function that cannot be sent to a process (a closure over a lock) stays on
   threads with a warning.
2. Otherwise the first items run on threads, measured (:class:`Probe`): the share of
   its running time the function spends on the CPU, corrected for the time its
   thread waited for a CPU (``/proc/thread-self/schedstat``); then, if it is
   CPU-bound, whether it holds the GIL: while it runs, a canary thread sleeps
   briefly, again and again, and times how long it then waits for the GIL (the
   whole switch interval if the function runs Python code, next to nothing if it
   released the GIL). A CPU-bound function that holds the GIL goes to processes
   when the work per item outweighs what sending the item and its result costs;
   otherwise threads.
   Probe items are real items: processed once, their outputs kept.

A measurement too close to call is taken again; a tie goes to threads.
"""

from __future__ import annotations

import dis
import os
import pickle
import sys
import sysconfig
import time
import types
from collections import Counter, OrderedDict, defaultdict, deque
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Decision",
    "decide",
    "free_threaded_build",
    "gil_disabled",
    "gil_enabled",
    "schedstat",
    "shared_state_reason",
    "static_choice",
]

# -- the interpreter ------------------------------------------------------------------


def free_threaded_build() -> bool:
    """CPython built without the GIL (``Py_GIL_DISABLED``); it may still run with it."""
    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def gil_enabled() -> bool:
    """Whether the GIL is on now: ``sys._is_gil_enabled()`` (3.13+), else always (a
    free-threaded build turns it back on with PYTHON_GIL=1 or for an extension module
    that does not support free threading, when it is imported)."""
    is_enabled = getattr(sys, "_is_gil_enabled", None)
    return bool(is_enabled()) if is_enabled is not None else True


def gil_disabled() -> bool:
    """True on a free-threaded CPython whose GIL is off now."""
    return free_threaded_build() and not gil_enabled()


def schedstat(native_id: int | None = None) -> tuple[int, int]:
    """(ns on a CPU, ns waiting in the run queue) of the calling thread (or of the
    thread ``native_id`` of this process), or (0, 0) where Linux does not tell."""
    path = (
        "/proc/thread-self/schedstat"
        if native_id is None
        else f"/proc/self/task/{native_id}/schedstat"
    )
    try:
        with open(path, "rb") as f:
            fields = f.read().split()
        return int(fields[0]), int(fields[1])
    except (OSError, ValueError, IndexError):
        return 0, 0


# -- what a function writes ---------------------------------------------------------------

_MUTABLE = (list, dict, set, bytearray, deque, Counter, OrderedDict, defaultdict)
_MUTATORS = frozenset(
    "append extend insert pop popitem remove clear update add discard setdefault "
    "appendleft extendleft rotate sort reverse __setitem__ __delitem__ __iadd__".split()
)
_IMMUTABLE = (int, float, complex, str, bytes, bool, type(None), tuple, frozenset, range)


def _describe(obj: object) -> str:
    return type(obj).__name__


def _is_mutable_object(obj: object) -> bool:
    """A container or an instance whose state a method could change in this process
    only (``conveyor.shared`` objects change the same memory in every process)."""
    if getattr(type(obj), "__conveyor_process_shared__", False):
        return False
    if isinstance(obj, _MUTABLE):
        return True
    if isinstance(obj, (*_IMMUTABLE, types.ModuleType, type, types.FunctionType)):
        return False
    if isinstance(obj, types.BuiltinFunctionType | types.MethodType):
        return False
    return hasattr(obj, "__dict__") or hasattr(type(obj), "__slots__")


def _code_objects(code: types.CodeType) -> list[types.CodeType]:
    out = [code]
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            out.extend(_code_objects(const))
    return out


def _global_writes(fn: types.FunctionType) -> str | None:
    """Why ``fn``'s code writes a global (assigns one, or mutates a global container)."""
    env = fn.__globals__
    for code in _code_objects(fn.__code__):
        instructions = list(dis.get_instructions(code))
        for i, ins in enumerate(instructions):
            if ins.opname in ("STORE_GLOBAL", "DELETE_GLOBAL"):
                return f"assigns the global {ins.argval!r}"
            if ins.opname != "LOAD_GLOBAL":
                continue
            name = str(ins.argval).removeprefix("NULL + ").removesuffix(" + NULL")
            value = env.get(name)
            if not _is_mutable_object(value):
                continue
            for nxt in instructions[i + 1 : i + 4]:
                if nxt.opname in ("LOAD_METHOD", "LOAD_ATTR") and nxt.argval in _MUTATORS:
                    return f"changes the global {_describe(value)} {name!r} ({nxt.argval})"
                if nxt.opname in ("STORE_SUBSCR", "DELETE_SUBSCR"):
                    return f"changes the global {_describe(value)} {name!r} (item assignment)"
                if nxt.opname in ("STORE_ATTR", "DELETE_ATTR"):
                    return f"changes the global {_describe(value)} {name!r} (.{nxt.argval} =)"
    return None


def shared_state_reason(target: Any) -> str | None:
    """Why running ``target`` in another process would lose writes it makes to this
    process's state, or None. Conservative: a write it cannot see is not found, and a
    mutable object it only reads still keeps it on threads."""
    import functools

    from ._workers._apply import is_stage_class, is_stage_object

    if is_stage_class(target) or is_stage_object(target):
        # one instance per worker (a copy of an object), on threads as in processes;
        # only what process() does to globals differs
        process = getattr(target if is_stage_class(target) else type(target), "process", None)
        if isinstance(process, types.FunctionType):
            return _global_writes(process)
        return None
    fn = target
    while isinstance(fn, functools.partial):
        for arg in (*fn.args, *fn.keywords.values()):
            if isinstance(arg, _MUTABLE):
                return f"a partial over a {_describe(arg)} (a process would change a copy)"
        fn = fn.func
    if isinstance(fn, types.MethodType):
        owner = fn.__self__
        if not isinstance(owner, type) and _is_mutable_object(owner):
            return (
                f"a bound method of a {_describe(owner)} object ({fn.__name__}): a process "
                "would change a copy of it"
            )
        fn = fn.__func__
    if isinstance(fn, types.BuiltinMethodType):
        owner = getattr(fn, "__self__", None)
        if owner is not None and _is_mutable_object(owner):
            name = fn.__name__
            return f"a method of a {_describe(owner)} ({name}): a process would change a copy"
        return None
    if not isinstance(fn, types.FunctionType):
        if isinstance(fn, type):
            return None  # a stage class: one instance per worker, made in the worker
        if _is_mutable_object(fn) and callable(fn):
            return f"a {_describe(fn)} object: a process would change a copy of its state"
        return None
    for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=False):
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if isinstance(value, _MUTABLE):
            return (
                f"a closure over the {_describe(value)} {name!r}: a process would change a "
                "copy of it"
            )
    if fn.__code__.co_freevars and any(
        ins.opname in ("STORE_DEREF", "DELETE_DEREF")
        for code in _code_objects(fn.__code__)
        for ins in dis.get_instructions(code)
    ):
        return "assigns a variable of its enclosing function (nonlocal)"
    return _global_writes(fn)


# -- the decision --------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    kind: str
    evidence: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.evidence}"


def static_choice(
    target: Any, is_async: bool, sendable_error: str | None, workers: int = 2
) -> Decision | None:
    """The kind for a stage that needs no measuring, or None (measure it)."""
    if is_async:
        return Decision("asyncio", "async def")
    if gil_disabled():
        return Decision("thread", "free-threaded CPython with the GIL off")
    reason = shared_state_reason(target)
    if reason is not None:
        return Decision("thread", f"writes this process's state: {reason}")
    if workers < 2:
        return Decision("thread", "one worker: processes would not run it faster")
    if sendable_error is not None:
        return Decision("thread", f"cannot be sent to a process: {sendable_error}")
    return None


# thresholds
IO_BOUND = 0.35  # CPU share below this: waits more than it computes -> threads
# The share of its time a canary thread waited for the GIL while the function ran: a
# function running Python code keeps the GIL until the switch interval (5 ms) makes
# it let go, so the canary waits nearly all the time; one that released it lets the
# canary in within about 0.1 ms. Under load some looks get in at once even when the
# GIL is held (its holder waits for a CPU after a hand-off), so it is a share of time,
# not every look, that decides.
GIL_HELD = 0.5  # above: held
GIL_FREE = 0.2  # below: released (between: measure again, then threads)
PROCESS_GAIN = 1.3  # processes must be this much faster than threads to be chosen
SEND_FIXED_S = 2e-6  # per item in the engine, besides pickling (framing, sequencing)
CANARY_SLEEP_S = 0.0005


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def send_cost(items: list[Any], results: list[Any]) -> float:
    """Seconds per item to pickle an item and its result and unpickle both (what a
    process worker adds per item, on each side), from a few of them."""
    pairs = list(zip(items, results, strict=False))[:8] or [(items[0] if items else None, None)]
    t0 = time.thread_time()  # CPU time: waits for the GIL are not the pickles' cost
    try:
        for item, result in pairs:
            pickle.loads(pickle.dumps(item, 5))
            pickle.loads(pickle.dumps(result, 5))
    except Exception:
        return float("inf")  # results that cannot be pickled: processes cannot run it
    return (time.thread_time() - t0) / len(pairs) + SEND_FIXED_S


def gil_wait_sample(other: int) -> tuple[float, float] | None:
    """One look of the canary: how long this thread waited for the GIL after a short
    sleep, beyond the sleep and beyond any wait for a CPU, while thread ``other``
    (a native id) runs the function. A thread running Python code keeps the GIL until
    the interpreter makes it let go (``sys.getswitchinterval()``, 5 ms); one in C code
    that released it (hashing, numpy, I/O) lets the canary in at once. Returns (the
    wait, the look's length), both without the canary's own waits for a CPU; None if
    ``other`` waited for a CPU during the look (the GIL then sits unused, whoever
    holds it): under load, such looks say nothing and are left out."""
    q0 = schedstat()[1]
    other_c0, other_q0 = schedstat(other)
    t0 = time.perf_counter()
    time.sleep(CANARY_SLEEP_S)
    elapsed = time.perf_counter() - t0
    other_c1, other_q1 = schedstat(other)
    if (other_q1 - other_q0) / 1e9 > 0.3 * elapsed:
        return None
    if elapsed > 2 * CANARY_SLEEP_S and (other_c1 - other_c0) / 1e9 < 0.5 * elapsed:
        return None  # a long look while ``other`` hardly ran (its clocks lag while queued)
    span = max(CANARY_SLEEP_S, elapsed - (schedstat()[1] - q0) / 1e9)
    return span - CANARY_SLEEP_S, span


def decide(
    share: float,
    per_item: float,
    gil_blocked: float | None,
    workers: int,
    cost: float,
    cpus: int | None = None,
) -> Decision | None:
    """The kind from the probe's measurements: ``share``, the share of its running time
    the function spent on a CPU; ``per_item``, its CPU seconds per item; ``gil_blocked``,
    the share of its time a canary thread waited for the GIL while the function ran
    (None: not measured yet);
    ``cost``, seconds to send an item and its result to a process. None means: measure
    the GIL (or measure it again, if too close to call).

    A low CPU share alone is not trusted: a thread that waits for the GIL (other
    threads of this process hold it, on a busy machine for long) is off the CPU too.
    So the GIL is measured then as well, and a function that waited while the GIL was
    free is I/O-bound, one that waited while it was busy is judged as CPU-bound."""
    per_item = max(per_item, 1e-9)
    detail = f"{_us(per_item)}/item vs {_us(cost)} to send"
    if share >= IO_BOUND and cost * PROCESS_GAIN > per_item:
        # the engine could not even send items as fast as threads run them
        return Decision("thread", f"cpu {share:.0%}, {detail}: processes would not gain")
    if gil_blocked is None:
        return None
    waited = f"another thread waited for it {gil_blocked:.0%} of the time"
    if gil_blocked <= GIL_FREE:
        if share < IO_BOUND:
            return Decision(
                "thread", f"cpu {share:.0%}, gil free: waits more than it computes (I/O-bound)"
            )
        return Decision("thread", f"cpu {share:.0%}, gil released ({waited})")
    if gil_blocked < GIL_HELD:
        return None  # too close to call
    if cost * PROCESS_GAIN > per_item:
        return Decision("thread", f"cpu {share:.0%}, {detail}: processes would not gain")
    n = min(workers, cpus or usable_cpus())
    thread_rate = 1.0 / per_item
    process_rate = min(n / (per_item + cost), 1.0 / cost) if cost > 0 else n / per_item
    if n >= 2 and process_rate >= PROCESS_GAIN * thread_rate:
        return Decision("process", f"cpu {share:.0%}, gil held ({waited}), {detail}")
    return Decision(
        "thread",
        f"cpu {share:.0%}, gil held ({waited}), but {detail}: processes would not gain"
        + ("" if n >= 2 else " (one CPU)"),
    )


def _us(seconds: float) -> str:
    if seconds == float("inf"):
        return "no way (unpicklable results)"
    us = seconds * 1e6
    if us >= 1000:
        return f"{us / 1000:.1f} ms"
    if us < 1:
        return f"{us:.2f} us"
    return f"{us:.1f} us" if us < 10 else f"{us:.0f} us"
