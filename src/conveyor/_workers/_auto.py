"""kind="auto" while a stage's kind is being measured (see ``conveyor._gil``).

Every worker of an auto stage starts as an :class:`AutoWorker`. The first one runs
the stage on a thread, measured by the stage's :class:`_Choice`; if the function
turns out CPU-bound, a canary thread measures whether it holds the GIL. The other
workers wait, so that the measured thread has the GIL to itself, but only while the
function looks CPU-bound: once its CPU share says it mostly waits, they start as
thread workers while the GIL is checked (threads are then all but certain, and an
I/O stage on one worker would hold the pipeline back). Once the choice is made, the
thread workers either go on (the choice is threads) or finish their batch, tear down
and hand their slot to a worker of the chosen kind; workers still waiting start as
that kind. The items run while measuring are real ones: taken from the stage's
input, processed once, their outputs passed on in order like any other.

If measuring ends before a choice (the input ran out, the run stopped, the probing
item timed out), the stage stays on threads.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, cast

from .._gil import (
    GIL_HELD,
    IO_BOUND,
    PROCESS_GAIN,
    Decision,
    decide,
    gil_wait_sample,
    schedstat,
    send_cost,
)
from ._base import StageFeed, ThreadHandle, WorkerHandle, WorkerKind, WorkerSlot
from ._thread import ThreadKind, ThreadWorker

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["AutoKind"]

SERIAL_S = 0.02  # seconds of the function running on one thread before deciding
POLL_S = 0.005  # how often the watcher looks at the probing thread
CANARY_S = 0.025  # seconds of canary looks while the function runs
CANARY_LOOKS = 4  # and at least this many
CANARY_GIVE_UP_S = 1.0  # the function runs too rarely to measure the GIL: threads
MEASURE_GIVE_UP_S = 1.0  # its input comes too slowly to measure it at all: threads
_WAIT_S = 0.05  # how often a waiting worker looks at the run's stop flag
# GIL measurements: a held GIL is conclusive at once (nothing makes a canary wait
# long for a free GIL), a free one must be seen every time (under load, a look can
# get in while the GIL's holder waits for a CPU)
ATTEMPTS = 3


class _InputTooSlow(Exception):
    """The probing thread ran the function too little to measure it."""


class _Choice:
    """One stage's measurement and decision.

    The probing thread worker calls :meth:`before` and :meth:`after` around each of
    its batches (the probe hooks). A watcher thread, started with the first batch,
    measures the probing thread from outside (its CPU and run-queue clocks in
    ``/proc``), only while it runs the function, so that neither a first item that
    never ends nor one that blocks holds the decision up; then it is the GIL canary.
    """

    def __init__(self, feed: StageFeed, decided: Callable[[StageFeed, Decision], None]) -> None:
        self.feed = feed
        self._on_decided = decided
        self.decision: Decision | None = None
        self.done = threading.Event()
        self.mostly_waits = threading.Event()  # the other workers may start as threads
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None
        self._prober = 0  # the probing thread's native id
        self._busy_s = 0.0  # seconds of batches that ended
        self._running_since = 0.0  # perf_counter() at the start of the running batch, or 0
        self._items_done = 0
        # the batches that ended, by the probing thread's own clocks (seconds)
        self._wall_done = 0.0
        self._cpu_done = 0.0
        self._queued_done = 0.0
        self._started = threading.Event()  # set while the probing thread runs a batch
        self._items: list[Any] = []  # a few items and results, to price sending them
        self._results: list[Any] = []

    # -- the probe hooks ---------------------------------------------------------------

    def go_on(self) -> bool:
        decision = self.decision
        return decision is None or decision.kind == "thread"

    def before(self) -> object:
        if self._watcher is None:
            self._prober = threading.get_native_id()
            self._watcher = threading.Thread(
                target=self._watch, name=f"{self.feed.name}-measure", daemon=True
            )
            self._watcher.start()
        t0 = time.perf_counter()
        self._running_since = t0
        self._started.set()
        return t0, time.thread_time(), schedstat()[1]

    def after(self, token: object, items: list[Any], results: list[Any] | None) -> None:
        t0, c0, q0 = cast("tuple[float, float, int]", token)
        wall = time.perf_counter() - t0
        self._busy_s += wall
        self._running_since = 0.0
        self._started.clear()
        if results is None:
            return
        self._items_done += len(items)
        self._cpu_done += time.thread_time() - c0
        self._queued_done += max(0, schedstat()[1] - q0) / 1e9
        self._wall_done += wall
        if len(self._items) < 8:
            self._items.extend(items[:8])
            self._results.extend(results[:8])

    def _busy_until(self, now: float) -> float:
        since = self._running_since
        return self._busy_s + (now - since if since else 0.0)

    # -- the watcher -----------------------------------------------------------------------

    def _watch(self) -> None:
        try:
            decision = self._measure()
        except BaseException as exc:  # a bug of ours: never let it pass silently
            self.feed.fail(exc)
            decision = Decision("thread", "the measurement failed")
        if decision is not None:
            self._decide(decision)

    def _measure(self) -> Decision | None:
        try:
            share = self._cpu_share()
        except _InputTooSlow as slow:
            return Decision("thread", str(slow))
        if share is None:
            return None  # the run stopped, or the probing worker left
        workers, cost = self.feed.spec.workers, self._cost()
        if share < IO_BOUND:
            self.mostly_waits.set()
        elif self._per_item() > PROCESS_GAIN * cost:
            # processes are likely: start their launcher while the GIL is measured
            from ._zygote import Zygote

            Zygote.get()
        decision = decide(share, self._per_item(), None, workers, cost)
        if decision is not None:
            return decision
        free: list[Decision] = []
        for _ in range(ATTEMPTS):
            blocked = self._gil_blocked()
            if blocked is None:
                return Decision("thread", f"cpu {share:.0%}, ran too rarely to measure the GIL")
            decision = decide(share, self._per_item(), blocked, workers, cost)
            if blocked >= GIL_HELD:
                assert decision is not None
                return decision  # conclusive
            if decision is not None:  # free (between the two: too close to call)
                free.append(decision)
        if len(free) == ATTEMPTS:
            return free[-1]
        return Decision("thread", f"cpu {share:.0%}, gil too close to call")

    def _stopped(self) -> bool:
        return self.decision is not None or self.feed.stop[0]

    def _cpu_share(self) -> float | None:
        """The share of its running time (wall time minus waits for a CPU) the probing
        thread spent on a CPU, over SERIAL_S seconds of it running the function: from
        the batches it finished, or, while a batch takes long, from the outside."""
        busy = cpu = queued = 0.0
        give_up = time.perf_counter() + MEASURE_GIVE_UP_S
        while busy < SERIAL_S:
            if self._stopped():
                return None
            if self._wall_done >= SERIAL_S:
                running = max(self._wall_done - self._queued_done, 1e-9)
                return min(1.0, self._cpu_done / running)
            if time.perf_counter() > give_up:
                raise _InputTooSlow(
                    f"its input came too slowly to measure it (it ran {busy * 1000:.0f} ms "
                    f"of {MEASURE_GIVE_UP_S:.0f} s)"
                )
            t0 = time.perf_counter()
            b0 = self._busy_until(t0)
            c0, q0 = schedstat(self._prober)
            time.sleep(POLL_S)
            t1 = time.perf_counter()
            c1, q1 = schedstat(self._prober)
            ran = self._busy_until(t1) - b0
            if ran >= 0.5 * (t1 - t0):  # the function ran (tiny items: most of the time)
                busy += t1 - t0
                cpu += (c1 - c0) / 1e9
                queued += (q1 - q0) / 1e9
        return min(1.0, cpu / max(busy - queued, 1e-9))

    def _per_item(self) -> float:
        if self._items_done:
            return self._cpu_done / self._items_done
        return SERIAL_S  # no item has finished yet: at least this much

    def _gil_blocked(self) -> float | None:
        """The share of its time this thread (the canary) waited for the GIL, over the
        looks it took while the probing thread ran the function; None if too few."""
        waited = measured = 0.0
        looks = 0
        give_up = time.perf_counter() + CANARY_GIVE_UP_S
        while measured < CANARY_S or looks < CANARY_LOOKS:
            if self._stopped() or time.perf_counter() > give_up:
                return waited / measured if looks >= CANARY_LOOKS else None
            if not self._running_since:  # between batches, or waiting for input
                self._started.wait(POLL_S)
                continue
            t0 = time.perf_counter()
            busy0 = self._busy_until(t0)
            look = gil_wait_sample(self._prober)
            t1 = time.perf_counter()
            if look is not None and self._busy_until(t1) - busy0 >= 0.9 * (t1 - t0):
                looks += 1
                waited += look[0]
                measured += look[1]
        return waited / measured

    # -- deciding ------------------------------------------------------------------------

    def _cost(self) -> float:
        return send_cost(self._items, self._results)

    def _decide(self, decision: Decision) -> None:
        with self._lock:
            if self.decision is not None:
                return
            self.decision = decision
            self._on_decided(self.feed, decision)
        self.done.set()

    def conclude(self, why: str) -> None:
        """Measuring ended without a choice: threads."""
        self._decide(Decision("thread", why))


class _Follower:
    """The probe hooks of the stage's other thread workers: go on until the choice
    says otherwise; nothing to measure."""

    def __init__(self, choice: _Choice) -> None:
        self.go_on = choice.go_on

    def before(self) -> object:
        return None

    def after(self, token: object, items: list[Any], results: list[Any] | None) -> None:
        pass


class AutoWorker(ThreadHandle):
    def __init__(self, feed: StageFeed, slot: WorkerSlot, choice: _Choice, kind: AutoKind) -> None:
        self.feed = feed
        self.slot = slot
        self.choice = choice
        self.kind = kind
        self.inner: WorkerHandle | None = None
        self.thread = threading.Thread(target=self._run, name=slot.name, daemon=True)

    def _run(self) -> None:
        choice, slot = self.choice, self.slot
        try:
            measured = slot.index == 1
            if not measured and not self._wait_for(choice):
                self.feed.worker_done()  # the run stopped before the choice
                return
            if choice.decision is not None and choice.decision.kind != "thread":
                self._become(choice.decision)
                return
            worker = ThreadWorker(
                self.feed,
                slot,
                self.kind.threads(),
                None,
                probe=choice if measured else _Follower(choice),
            )
            self.inner = worker
            worker.run_here()
            if not worker.handed_over:  # it went on as a thread worker to the end
                if measured:
                    choice.conclude("the input ended (or the run stopped) while measuring")
                return
            self._become(choice.decision)
        except BaseException as exc:  # a bug of ours: never let it pass silently
            self.feed.fail(exc)

    def _wait_for(self, choice: _Choice) -> bool:
        """Wait until the choice is made or this worker may start as a thread; False
        if the run stopped first."""
        stop = self.feed.stop
        while not (choice.done.is_set() or choice.mostly_waits.is_set()):
            if stop[0]:
                return False
            choice.done.wait(_WAIT_S)
        return True

    def _become(self, decision: Decision | None) -> None:
        kind = decision.kind if decision is not None else "thread"
        self.slot.kind = kind
        inner = self.kind.of(kind).worker(self.feed, self.slot)
        self.inner = inner
        if isinstance(inner, ThreadWorker):
            inner.run_here()
            return
        inner.start()
        inner.join()

    def kill(self) -> None:
        inner = self.inner
        if inner is None or isinstance(inner, ThreadWorker):  # it runs in our thread
            super().kill()
        else:
            inner.kill()

    def ask_stack(self) -> None:
        inner = self.inner
        if inner is not None and not isinstance(inner, ThreadWorker):
            inner.ask_stack()

    def stack(self, deadline: float) -> str:
        inner = self.inner
        if inner is not None and not isinstance(inner, ThreadWorker):
            return inner.stack(deadline)
        return super().stack(deadline)  # the stage runs in this thread

    def thread_ident(self) -> int | None:
        inner = self.inner
        if inner is not None and not isinstance(inner, ThreadWorker):
            return inner.thread_ident()
        return super().thread_ident()

    def holding(self) -> tuple[Sequence[Any], int] | None:
        inner = self.inner
        return inner.holding() if inner is not None else None

    def check_timeout(self, now: float, timeout: float) -> None:
        inner = self.inner
        if inner is None:
            return
        inner.check_timeout(now, timeout)
        if self.slot.abandoned and self.slot.index == 1:
            self.choice.conclude("its item timed out while measuring")


class AutoKind(WorkerKind):
    """Workers of the stages whose kind is measured; ``of(kind)`` gives the run's
    worker kind that a stage turns into, ``decided(feed, decision)`` tells the engine."""

    kind = "auto"

    def __init__(
        self,
        stop: list[bool],
        adopt: Callable[[WorkerHandle], None] | None,
        of: Callable[[str], WorkerKind],
        decided: Callable[[StageFeed, Decision], None],
    ) -> None:
        super().__init__(stop, adopt)
        self.of = of
        self._decided = decided
        self._choices: dict[str, _Choice] = {}
        self._lock = threading.Lock()

    def threads(self) -> ThreadKind:
        kind = self.of("thread")
        assert isinstance(kind, ThreadKind)
        return kind

    def worker(self, feed: StageFeed, slot: WorkerSlot) -> WorkerHandle:
        with self._lock:
            choice = self._choices.get(feed.name)
            if choice is None:
                choice = self._choices[feed.name] = _Choice(feed, self._decided)
        return AutoWorker(feed, slot, choice, self)


backend_class = AutoKind
