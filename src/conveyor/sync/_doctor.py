"""``conveyor doctor script.py [args...]``: run any Python script with ``threading``'s
locks replaced by the checking ones, and say what was found.

While the script runs, ``threading.Lock``, ``RLock``, ``Condition``, ``Semaphore``,
``BoundedSemaphore`` and ``Event`` made by the script's own code (not by the standard
library, installed packages or conveyor, unless ``libraries=True``) are
``conveyor.sync``'s, and lock-order checking is on. At the end (or once every thread
left is stuck for good) the report lists the inversions with both orders and where
each lock was taken, the waits made while holding a lock, and the deadlocks with their
cycle and stacks.

A script whose threads all wait for locks that can never be let go (their owner
ended without releasing them, or they wait for each other) is reported as stuck with
every thread's stack and what it waits for, and the doctor exits instead of hanging;
``timeout`` bounds any other hang.
"""

from __future__ import annotations

import contextlib
import os
import runpy
import sys
import sysconfig
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from . import _locks, _order

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

__all__ = ["Diagnosis", "diagnose"]

PATCHED = ("Lock", "RLock", "Condition", "Semaphore", "BoundedSemaphore", "Event")
POLL_S = 0.05
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # conveyor/


@dataclass
class Diagnosis:
    """What one run of a script under the doctor found."""

    problems: list[_order.OrderProblem] = field(default_factory=list)
    exit_code: int = 0  # the script's own
    stuck: str | None = None  # the report of a hang, if it hung

    @property
    def healthy(self) -> bool:
        return not self.problems and self.stuck is None


def _library_dirs(libraries: bool) -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {paths["stdlib"], paths["platstdlib"], _PACKAGE}
    if not libraries:
        site = os.path.join(paths["stdlib"], "site-packages")
        dirs |= {paths["purelib"], paths["platlib"], site}
    return tuple(os.path.join(os.path.realpath(d), "") for d in dirs)


def _patches(
    libraries: bool, originals: dict[str, Callable[..., Any]]
) -> dict[str, Callable[..., Any]]:
    """Stand-ins for threading's names: the checking kind for the script's code, the
    original for code under ``skipped`` directories."""
    skipped = _library_dirs(libraries)
    mine: dict[str, bool] = {}  # file name -> the script's code? (realpath is not free)
    checking: dict[str, Callable[..., Any]] = {
        "Lock": lambda *a, **k: _locks.Lock(*a, **k),
        "RLock": lambda *a, **k: _locks.RLock(*a, **k),
        "Condition": _locks.Condition,
        "Semaphore": _locks.Semaphore,
        "BoundedSemaphore": _locks.BoundedSemaphore,
        "Event": _locks.Event,
    }

    def script_code() -> bool:
        filename = sys._getframe(2).f_code.co_filename  # the caller of the stand-in
        found = mine.get(filename)
        if found is None:
            inline = filename.startswith("<")  # <stdin>, <string>: the user's
            found = inline or not os.path.realpath(filename).startswith(skipped)
            mine[filename] = found
        return found

    def stand_in(name: str) -> Callable[..., Any]:
        original, ours = originals[name], checking[name]

        def make(*args: Any, **kwargs: Any) -> Any:
            return ours(*args, **kwargs) if script_code() else original(*args, **kwargs)

        make.__name__ = make.__qualname__ = name
        make.__doc__ = f"threading.{name}, checked by conveyor doctor in the script's code"
        return make

    return {name: stand_in(name) for name in PATCHED}


@contextlib.contextmanager
def _patched(libraries: bool) -> Iterator[None]:
    originals = {name: getattr(threading, name) for name in PATCHED}
    for name, fn in _patches(libraries, originals).items():
        setattr(threading, name, fn)
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(threading, name, original)


def diagnose(
    argv: Sequence[str],
    *,
    module: bool = False,
    timeout: float | None = None,
    ignore: Sequence[str] = (),
    libraries: bool = False,
    out: TextIO | None = None,
) -> Diagnosis:
    """Run ``argv[0]`` (a script path, or a module name with ``module=True``) with
    ``argv`` as ``sys.argv``, in this process, checked; print the report to ``out``
    (stderr by default) and return it."""
    out = out or sys.stderr
    diagnosis = Diagnosis()
    target = argv[0]
    saved_argv, saved_path0 = sys.argv[:], sys.path[0] if sys.path else None
    sys.argv = list(argv)
    if not module:
        script_dir = os.path.dirname(os.path.abspath(target))
        if sys.path:
            sys.path[0] = script_dir
        else:
            sys.path.append(script_dir)
    deadline = None if timeout is None else time.monotonic() + timeout
    main = threading.current_thread()
    try:
        with _order.checking_order(on_problem="record", ignore=ignore) as report:
            with _patched(libraries):
                try:
                    if module:
                        runpy.run_module(target, run_name="__main__", alter_sys=True)
                    else:
                        runpy.run_path(target, run_name="__main__")
                except SystemExit as exc:
                    diagnosis.exit_code = _exit_code(exc.code)
                except BaseException:  # what the script raised: shown as Python would
                    traceback.print_exc(file=out)
                    diagnosis.exit_code = 1
                diagnosis.stuck = _join_threads(main, deadline)
            diagnosis.problems = list(report.problems)
    finally:
        sys.argv = saved_argv
        if saved_path0 is not None and sys.path:
            sys.path[0] = saved_path0
    _print(diagnosis, target, out)
    return diagnosis


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _join_threads(main: threading.Thread, deadline: float | None) -> str | None:
    """Wait for the script's other non-daemon threads, as the interpreter would at
    exit; the report of a hang if they are stuck for good, or past the deadline."""
    while True:
        left = [t for t in threading.enumerate() if t is not main and not t.daemon]
        if not left:
            return None
        stuck = _stuck(left)
        if stuck:
            return "every thread left waits for a lock that can never be let go:\n" + stuck
        if deadline is not None and time.monotonic() >= deadline:
            return "still running at the timeout:\n" + _threads_report(left)
        left[0].join(POLL_S)


def _stuck(threads: list[threading.Thread]) -> str | None:
    """The report, if every thread in ``threads`` waits (untimed) for a checked lock
    whose chain of owners ends in a thread that has ended, or goes round."""
    alive = {t.ident for t in threading.enumerate()}
    with _locks._graph:
        waiting = dict(_locks._waiting)
    for t in threads:
        ident = t.ident
        seen: set[int] = set()
        while True:
            if ident is None or ident in seen:
                break  # a cycle: stuck
            seen.add(ident)
            lock = waiting.get(ident)
            if lock is None:
                return None  # this one runs (or waits on something else)
            owner = lock.owner
            if owner is None:
                return None  # free: it is about to get it
            if owner not in alive:
                break  # held by a thread that ended: never let go
            ident = owner
    return _threads_report(threads)


def _threads_report(threads: list[threading.Thread]) -> str:
    frames = sys._current_frames()
    parts = []
    for t in threads:
        waits = _locks.blocked_on(t.ident or 0)
        stack = _order.stack_text(frames.get(t.ident or 0))
        parts.append(
            f"thread {t.name} waits for {waits or 'something outside conveyor.sync'}\n{stack}"
        )
    return "\n\n".join(parts)


def _print(diagnosis: Diagnosis, target: str, out: TextIO) -> None:
    print(file=out)
    if diagnosis.healthy:
        print(f"conveyor doctor: {target}: no lock problem found.", file=out)
        return
    count = len(diagnosis.problems) + (diagnosis.stuck is not None)
    print(f"conveyor doctor: {target}: {count} problem{'s' if count > 1 else ''} found.", file=out)
    for i, problem in enumerate(diagnosis.problems, 1):
        print(f"\n{i}. {problem.kind}: {problem.message}", file=out)
    if diagnosis.stuck is not None:
        print(f"\n{count}. stuck: {diagnosis.stuck}", file=out)
