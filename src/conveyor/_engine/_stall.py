"""The stall watchdog: ``run(stall_timeout=..., on_stall="raise" | "warn")``.

A run is stalled when nothing has moved for ``stall_timeout`` seconds while work is
pending. The watchdog is one thread per run that looks every ``stall_timeout / 4``
seconds; nothing on the items' path changes, it reads counters that exist anyway:

* **Progress** is a change in any of them: items put into and taken from each of the
  run's channels (the source yielding, a stage taking a batch or passing outputs on,
  the consumer taking outputs), items a worker finished, failed or retried, workers
  replaced, and the item a worker is on when its stage tracks items (``timeout=``).
* **Pending** means an item in a channel, a worker holding a batch (busy, or blocked
  passing its outputs on), or a worker in ``teardown()``. A run whose workers all
  wait for the source (which waits for its own input) is idle, not stalled; so is a
  producer function that has not yielded yet.
* **Starting** workers hold the clock: a worker process importing the stage's
  modules, a ``setup()`` loading a model, may take long and move no counter. The
  clock starts once every worker has started, so a ``setup()`` that never returns is
  not reported (``run.workers()`` shows it ``starting``).

So one item that runs for longer than ``stall_timeout`` while other workers move is
not a stall, but on the only busy worker it is: the watchdog cannot tell it from a
deadlock. ``stall_timeout`` is about the whole run; a long item wants a larger one,
and ``timeout=`` bounds items one by one.

On a stall the watchdog builds a report: every live worker's name, stage, kind,
pid and thread, state and for how long, the item it is on, what it waits for when
conveyor can tell (a channel of the run, the reorder window, a ``conveyor.sync``
lock), and its Python stack, from a worker process too (see ``_child``: it dumps its
stacks on a signal, with faulthandler). Then, with ``on_stall="raise"``, it prints
the report on stderr and fails the run with :class:`Stalled`, which stops it as any
error does (a worker process is killed, a stuck thread abandoned after ``grace``).
With ``"warn"`` it emits a :class:`StallWarning` once per episode (until something
moves again) and the run goes on; if the warnings filter makes that warning an
error, the run fails with :class:`Stalled` as with ``"raise"``.
"""

from __future__ import annotations

import sys
import threading
import time
import warnings
from typing import TYPE_CHECKING, Any

from .._errors import Stalled, StallWarning, item_repr
from .._observe._stats import StalledWorker

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .._channels._memory import MemoryChannel
    from .._workers._base import WorkerHandle
    from ._local import LocalRun

__all__ = ["ON_STALL", "StallWatch", "check_stall_options"]

ON_STALL = ("raise", "warn")
STACK_WAIT_S = 1.0
"""How long the report waits, at most, for the stacks of all worker processes."""
_MIN_INTERVAL = 0.005


def check_stall_options(stall_timeout: object, on_stall: object) -> float | None:
    """Validate ``run(stall_timeout=..., on_stall=...)``; the timeout as a float."""
    if on_stall not in ON_STALL:
        raise ValueError(
            f"on_stall must be 'raise' (stop the run with conveyor.Stalled) or 'warn' "
            f"(emit a conveyor.StallWarning and go on), got {on_stall!r}"
        )
    if stall_timeout is None:
        return None
    if (
        isinstance(stall_timeout, bool)
        or not isinstance(stall_timeout, (int, float))
        or not stall_timeout > 0
        or stall_timeout == float("inf")
    ):
        raise ValueError(
            "stall_timeout must be a number of seconds > 0 (how long nothing may move "
            f"while items are pending), or None to turn the watchdog off; got {stall_timeout!r}"
        )
    return float(stall_timeout)


class StallWatch:
    """One run's stall watchdog (see the module docstring)."""

    def __init__(self, run: LocalRun, timeout: float, on_stall: str) -> None:
        self.run = run
        self.timeout = timeout
        self.on_stall = on_stall
        self.interval = max(_MIN_INTERVAL, timeout / 4)
        self.clock = time.monotonic  # an attribute, so that tests can replace it
        self.episodes = 0
        self._sources = {rt.name for rt in run._stages if rt.spec.op == "produce"}
        if run._source is not None:
            self._sources.add(run._source.slot.stage)
        self.thread = threading.Thread(
            target=self._watch, name=f"conveyor-{run.name}-stall-watchdog", daemon=True
        )

    def start(self) -> None:
        self.thread.start()

    # -- watching -----------------------------------------------------------------

    def _watch(self) -> None:
        run = self.run
        last = self._progress()
        since = self.clock()
        reported = False
        while not run.done.wait(self.interval):
            if run.control.stopping or run.finished_ok:
                return
            now, seen = self.clock(), self._progress()
            if seen != last:
                last, since, reported = seen, now, False
                continue
            if not self._pending() or self._starting():
                since = now  # idle (waiting for the source), or starting: not a stall
                continue
            if reported or now - since < self.timeout:
                continue
            reported = True
            self.episodes += 1
            if not self._stalled(now - since):
                return

    def _progress(self) -> tuple[int, float]:
        """Counters that move whenever anything in the run moves."""
        moved = 0
        for ch in self.run._channels:
            st = ch.stats()
            moved += st.put_count + st.get_count
        started = 0.0
        for h in self.run.handles():
            s = h.slot
            moved += s.items_in + s.items_out + s.items_done + s.failed + s.retried + s.restarts
            started += s.item_started
        return moved, started

    def _pending(self) -> bool:
        if any(ch.qsize() for ch in self.run._channels):
            return True
        for h in self.run.handles():
            s = h.slot
            if not s.alive or s.abandoned:
                continue
            state = s.effective_state
            if s.stage in self._sources:
                if state == "blocked":
                    return True
            elif state in ("busy", "blocked", "stopping"):
                return True
        return False

    def _starting(self) -> bool:
        """A worker is starting (a worker process imports the stage's modules, setup()
        loads a model): it may take long and moves no counter, so the clock waits."""
        return any(
            h.slot.state == "starting" and h.slot.alive and not h.slot.abandoned
            for h in self.run.handles()
        )

    # -- a stall ------------------------------------------------------------------

    def _stalled(self, quiet: float) -> bool:
        """Report a stall; False once the run has been failed (the watch is over)."""
        text, workers = build_report(self.run, quiet, self.timeout, self.on_stall)
        if self.on_stall == "warn":
            try:
                warnings.warn(StallWarning(text, workers, self.timeout), stacklevel=1)
                return True
            except Warning as exc:  # the warnings filter makes it an error
                error = Stalled(text, workers, self.timeout)
                error.__cause__ = exc
                self.run.control.fail(error)
                return False
        try:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()
        except Exception:
            pass  # a closed stderr must not keep the run from stopping
        self.run.control.fail(Stalled(text, workers, self.timeout))
        return False


# -- the report -------------------------------------------------------------------


def _channel_labels(run: LocalRun) -> dict[int, str]:
    labels: dict[int, str] = {}
    for rt in run._stages:
        if rt.inbox is not None and rt.spec.op != "produce":
            labels[id(rt.inbox)] = f"the input of stage {rt.name!r}"
    if run.output is not None:
        labels[id(run.output)] = "the run's output"
    return labels


def _fill(ch: MemoryChannel[Any]) -> str:
    size, maxsize = ch.qsize(), ch.maxsize
    full = " (full)" if size >= maxsize else " (empty)" if size == 0 else ""
    return f"{size}/{maxsize}{full}"


def _item(holding: tuple[Sequence[Any], int] | None) -> str | None:
    if holding is None:
        return None
    items, index = holding
    n = len(items)
    if n == 0:
        return None
    if 0 <= index < n:
        where = f" (item {index + 1} of a batch of {n})" if n > 1 else ""
        return item_repr(items[index]) + where
    if n == 1:
        return item_repr(items[0])
    return f"one of a batch of {n} items starting with {item_repr(items[0])}"


def _sync_wait(ident: int | None) -> str:
    """The conveyor.sync lock the thread waits for, if conveyor.sync is in use."""
    sync = sys.modules.get("conveyor.sync")
    if ident is None or sync is None:
        return ""
    try:
        what = sync.blocked_on(ident)
    except Exception:
        return ""
    return what or ""


def _waiting_for(run: LocalRun, h: WorkerHandle, labels: dict[int, str]) -> str:
    s = h.slot
    lock = _sync_wait(h.thread_ident()) or h.sync_waits()
    if lock:
        return lock
    state = s.effective_state
    if run._source is not None and h is run._source:
        out = run._source.out
        if state == "blocked":
            return f"room in {labels.get(id(out), 'its output')}, {_fill(out)}"
        return ""
    rt = next((r for r in run._stages if r.name == s.stage), None)
    if rt is None:
        return ""
    if state == "idle" and rt.inbox is not None and rt.spec.op != "produce":
        return f"input: {labels.get(id(rt.inbox), 'its input')}, {_fill(rt.inbox)}"
    if state == "blocked":
        outbox = rt.outbox
        if outbox is not None and outbox.qsize() >= outbox.maxsize:
            label = labels.get(id(outbox), "its output")
            nobody = ": nothing takes the run's outputs" if outbox is run.output else ""
            return f"room in {label}, {_fill(outbox)}{nobody}"
        return (
            "its turn to pass outputs on: an earlier batch of the stage, still being "
            "processed, goes first (ordered=True)"
        )
    return ""


def build_report(
    run: LocalRun, quiet: float, timeout: float, on_stall: str
) -> tuple[str, list[StalledWorker]]:
    """The stall report as text and as one record per live worker."""
    handles = [h for h in run.handles() if h.slot.alive and not h.slot.abandoned]
    for h in handles:
        try:
            h.ask_stack()
        except Exception:
            pass
    deadline = time.monotonic() + STACK_WAIT_S
    labels = _channel_labels(run)
    now = time.monotonic()
    records: list[StalledWorker] = []
    for h in handles:
        s = h.slot
        try:
            stack = h.stack(deadline)
        except Exception as exc:
            stack = f"  (no stack: {type(exc).__name__}: {exc})\n"
        records.append(
            StalledWorker(
                name=s.name,
                stage=s.stage,
                kind=s.kind,
                pid=s.pid,
                thread_id=s.thread_id,
                state=s.effective_state,
                state_seconds=s.seconds_in_state(now),
                item=_item(h.holding()),
                waiting_for=_waiting_for(run, h, labels),
                stack=stack,
            )
        )
    lines = [
        f"conveyor: run {run.name!r} stalled: nothing moved for {quiet:.1f}s "
        f"(stall_timeout={timeout:g}) while items were pending.",
    ]
    channels = [(labels[id(ch)], ch) for ch in run._channels if id(ch) in labels]
    if channels:
        lines.append("Channels: " + "; ".join(f"{lb} {_fill(ch)}" for lb, ch in channels))
    lines.append("Workers:")
    for w in records:
        where = f"pid {w.pid}" if w.kind == "process" else f"pid {w.pid}, thread {w.thread_id}"
        on = f" on {w.item}" if w.item is not None else ""
        lines.append(
            f"  {w.name} (stage {w.stage!r}, {w.kind}, {where}): "
            f"{w.state} for {w.state_seconds:.1f}s{on}"
        )
        if w.waiting_for:
            lines.append(f"    waiting for {w.waiting_for}")
        if w.stack:
            lines.append("    stack (most recent call last):")
            lines.append(_indent(w.stack, "    ").rstrip("\n"))
    if on_stall == "raise":
        lines.append(
            "The run is stopped (conveyor.Stalled): worker processes are killed, threads "
            "still stuck after grace are abandoned. If one item may take this long, "
            "raise stall_timeout; on_stall='warn' reports without stopping."
        )
    else:
        lines.append("The run goes on (on_stall='warn').")
    return "\n".join(lines), records


def _indent(text: str, prefix: str) -> str:
    return "".join(prefix + line for line in text.splitlines(keepends=True))
