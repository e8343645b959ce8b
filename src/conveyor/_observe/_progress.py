"""Live progress of a run on stderr: a thin view over ``run.stats()``.

Shape::

    LocalRun.stats() ──▶ sampler thread (every ``interval``) ──▶ Frame ──▶ view
                              │ keeps the last few snapshots            │
                              └─ recent rates: Δ items out / Δ clock    ├─ terminal: rich Live table
                                                                        └─ otherwise: one plain line

Everything shown comes from :class:`RunStats`; the reporter adds only what one
snapshot cannot give, the *recent* rate of each stage (items out over the last
second or so, or since the previous line), because the average since the start
hides a stage that has just stalled. Once the run is over the rate column shows
the average instead: "recent" means nothing after the end.

Rules the reporter keeps:

* It never slows or breaks the run: it only reads counters, from its own daemon
  thread, and an error while sampling or writing (a closed stderr, a broken pipe)
  ends the reporting, silently, not the run.
* ``stop()`` renders the final state once, returns within a bound (it joins the
  sampler thread with a timeout), may be called any number of times from any
  thread (a second caller waits until the first has rendered), and never raises.
* rich is imported only when the view is a terminal one: ``import conveyor`` and
  plain-line progress stay free of it.
* Time comes from an injectable ``clock`` and the pace from ``interval``, so that
  tests drive the reporter (``refresh()``) with a fake clock instead of sleeping.

The plain line's period is ``interval`` (default 2 s, or the environment variable
``CONVEYOR_PROGRESS_INTERVAL``); a terminal is redrawn four times a second.
"""

from __future__ import annotations

import collections
import contextlib
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TextIO, final

if TYPE_CHECKING:
    from collections.abc import Callable

    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    from ._stats import RunStats

__all__ = ["Frame", "ProgressReporter", "StageLine", "format_line", "start_progress"]

PLAIN_INTERVAL = 2.0
LIVE_INTERVAL = 0.25
INTERVAL_ENV = "CONVEYOR_PROGRESS_INTERVAL"
# how long stop() waits for the sampler thread, and for a render in progress
STOP_TIMEOUT = 2.0
PREFIX = "[conveyor]"


class StatsSource(Protocol):
    """What the reporter needs of a run (``LocalRun`` and ``Run`` both fit)."""

    def stats(self) -> RunStats: ...


# -- the model: one frame per sample --------------------------------------------


@dataclass(frozen=True)
class StageLine:
    """One stage as the progress view shows it."""

    name: str
    kind: str
    workers: int
    items_in: int
    items_out: int
    rate: float
    """Items out per second: recent while running, the average once the run is over."""
    failed: int
    queue_size: int
    queue_maxsize: int
    """0 when the stage has no input queue (the source)."""
    utilization: float
    is_source: bool
    decision: str = ""


@dataclass(frozen=True)
class Frame:
    """What one refresh shows."""

    name: str
    state: str
    elapsed: float
    stages: tuple[StageLine, ...]
    final: bool
    bottleneck: str | None


class _Rates:
    """Recent items-out rate per stage, over a sliding window of samples."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._samples: collections.deque[tuple[float, dict[str, int]]] = collections.deque()

    def add(self, t: float, stats: RunStats) -> dict[str, float]:
        samples = self._samples
        samples.append((t, {s.name: s.items_out for s in stats.stages}))
        # keep the newest sample that is about a window old as the base; the 10%
        # slack keeps "since the previous line" when samples come once a window
        while len(samples) > 2 and t - samples[1][0] >= 0.9 * self.window:
            samples.popleft()
        if len(samples) < 2:
            return {}
        t0, before = samples[0]
        dt = t - t0
        if dt <= 0:
            return {}
        now = samples[-1][1]
        return {name: max(0, out - before.get(name, 0)) / dt for name, out in now.items()}


def make_frame(stats: RunStats, recent: dict[str, float], final: bool) -> Frame:
    over = final or stats.state != "running"
    lines = []
    for i, s in enumerate(stats.stages):
        rate = s.rate if over else recent.get(s.name, s.rate)
        lines.append(
            StageLine(
                name=s.name,
                kind=s.kind,
                workers=s.workers,
                items_in=s.items_in,
                items_out=s.items_out,
                rate=rate,
                failed=s.failed,
                queue_size=s.queue_size,
                queue_maxsize=s.queue_maxsize,
                utilization=s.utilization,
                is_source=i == 0 and s.queue_maxsize == 0,  # only the source has no input
                decision=s.decision,
            )
        )
    return Frame(
        stats.name, stats.state, stats.elapsed_seconds, tuple(lines), final, stats.bottleneck
    )


# -- the plain view: one line per period ------------------------------------------


def format_line(frame: Frame) -> str:
    """``[conveyor] 3.0s  parse x2 1,234 in 1,200 out 400/s q 12/64 | write ...``

    The run's state is named when it is not ``running``; ``failed`` appears for a
    stage only when some of its items failed.
    """
    parts = []
    for s in frame.stages:
        text = s.name
        if not s.is_source:
            text += f" x{s.workers} {s.items_in:,} in"
        text += f" {s.items_out:,} out {s.rate:,.0f}/s"
        if s.queue_maxsize:
            text += f" q {s.queue_size}/{s.queue_maxsize}"
        if s.failed:
            text += f" {s.failed:,} failed"
        if s.decision:
            text += f" [{s.decision}]"
        parts.append(text)
    state = "" if frame.state == "running" and not frame.final else f" {frame.state}"
    return f"{PREFIX} {frame.elapsed:.1f}s{state}  " + " | ".join(parts)


class _PlainView:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def show(self, frame: Frame) -> None:
        self.stream.write(format_line(frame) + "\n")
        self.stream.flush()

    def close(self, frame: Frame | None) -> None:
        if frame is not None:
            self.show(frame)


# -- the terminal view: a rich table, redrawn in place -------------------------------


def build_table(frame: Frame) -> Table:
    """The rich table for one frame (rich is imported here, not before)."""
    from rich.table import Table
    from rich.text import Text

    title = f"conveyor · {frame.name} · {frame.state} · {frame.elapsed:.1f}s"
    table = Table(title=title, title_justify="left", expand=False)
    table.add_column("stage", no_wrap=True)
    table.add_column("kind")
    table.add_column("workers", justify="right")
    table.add_column("in", justify="right")
    table.add_column("out", justify="right")
    table.add_column("out/s", justify="right")
    table.add_column("queue", justify="right")
    table.add_column("busy", justify="right")
    table.add_column("failed", justify="right")
    for s in frame.stages:
        if s.queue_maxsize:
            fill = s.queue_size / s.queue_maxsize
            style = "red" if fill >= 0.9 else "yellow" if fill >= 0.5 else "green"
            queue = Text(f"{s.queue_size}/{s.queue_maxsize}", style=style)
        else:
            queue = Text("-", style="dim")
        name = Text(s.name, style="bold" if s.name == frame.bottleneck else "")
        table.add_row(
            name,
            s.kind,
            str(s.workers),
            "-" if s.is_source else f"{s.items_in:,}",
            f"{s.items_out:,}",
            f"{s.rate:,.0f}",
            queue,
            "-" if s.is_source else f"{s.utilization:.0%}",
            Text(f"{s.failed:,}", style="red" if s.failed else "dim"),
        )
    caption = [f"kind of {s.name}: {s.decision}" for s in frame.stages if s.decision]
    if frame.bottleneck is not None:
        caption.insert(0, f"busiest stage: {frame.bottleneck}")
    if caption:
        table.caption = "\n".join(caption)
        table.caption_justify = "left"
    return table


class _LiveView:
    def __init__(self, console: Console, redirect_stdout: bool) -> None:
        from rich.live import Live

        # no refresh thread of rich's own: the sampler thread redraws
        self.live: Live = Live(
            console=console,
            auto_refresh=False,
            transient=False,
            redirect_stdout=redirect_stdout,
            redirect_stderr=True,
        )
        self.started = False

    def show(self, frame: Frame) -> None:
        if self.started:
            self.live.update(build_table(frame), refresh=True)
        else:
            self.live.update(build_table(frame))
            self.started = True
            self.live.start(refresh=True)

    def close(self, frame: Frame | None) -> None:
        if frame is not None:
            self.live.update(build_table(frame))
            if not self.started:
                self.started = True
                self.live.start()
        if self.started:
            self.live.stop()  # draws the last table once more and leaves it on screen


# -- the reporter --------------------------------------------------------------------


@final
class ProgressReporter:
    """Samples a run's stats on a daemon thread and shows them through a view.

    ``start_progress()`` makes and starts one; tests may make one with a fake
    ``source`` and ``clock`` and call ``refresh()`` themselves instead of ``start()``.
    """

    def __init__(
        self,
        source: StatsSource,
        view: _PlainView | _LiveView,
        *,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
        rate_window: float | None = None,
        stop_timeout: float = STOP_TIMEOUT,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
        self._source = source
        self._view = view
        self.interval = interval
        self._clock = clock
        self._rates = _Rates(rate_window if rate_window is not None else max(interval, 1.0))
        self._stop_timeout = stop_timeout
        self._wake = threading.Event()
        self._render_lock = threading.Lock()  # one render at a time (thread vs. stop())
        self._stop_lock = threading.Lock()
        self._stopped = False
        self._broken = False
        self._thread: threading.Thread | None = None

    def start(self, show_now: bool = False) -> None:
        """Take a first sample (the base for rates) and start the sampler thread."""
        self._sample(show=show_now, final=False)
        self._thread = threading.Thread(target=self._loop, name="conveyor-progress", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._wake.wait(self.interval):
            if not self.refresh():
                return

    def refresh(self) -> bool:
        """Sample the stats and show them; False once reporting has ended."""
        return self._sample(show=True, final=False)

    def _sample(self, show: bool, final: bool) -> bool:
        if self._broken or (self._stopped and not final):
            return False
        if not self._render_lock.acquire(timeout=self._stop_timeout):
            return False  # a render is stuck (a blocked stderr); don't pile up behind it
        try:
            stats = self._source.stats()
            frame = make_frame(stats, self._rates.add(self._clock(), stats), final)
            if final:
                self._view.close(frame)
            elif show:
                self._view.show(frame)
            return True
        except Exception:
            # a closed stream, a broken pipe: stop reporting, leave the run alone
            self._broken = True
            return False
        finally:
            self._render_lock.release()

    def stop(self) -> None:
        """Render the final state and end the thread. Idempotent; never raises."""
        if not self._stop_lock.acquire(timeout=2 * self._stop_timeout):
            return
        try:
            if self._stopped:
                return
            self._stopped = True
            self._wake.set()
            thread = self._thread
            if thread is not None and thread is not threading.current_thread():
                thread.join(self._stop_timeout)
            if not self._broken:
                self._sample(show=True, final=True)
            if self._broken:
                # whatever broke, a live display must still give the terminal back
                # (cursor, and sys.stdout / sys.stderr it redirected)
                with contextlib.suppress(Exception):
                    self._view.close(None)
        except Exception:
            pass
        finally:
            self._stop_lock.release()

    @property
    def stopped(self) -> bool:
        return self._stopped


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def _default_interval(live: bool) -> float:
    text = os.environ.get(INTERVAL_ENV)
    if text:
        try:
            value = float(text)
        except ValueError:
            value = 0.0
        if value > 0:
            return value
    return LIVE_INTERVAL if live else PLAIN_INTERVAL


def start_progress(
    run: StatsSource,
    *,
    stream: TextIO | None = None,
    live: bool | None = None,
    interval: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    console: Console | None = None,
) -> ProgressReporter:
    """Show ``run``'s progress on ``stream`` (stderr) until ``stop()`` is called.

    ``live`` chooses the view: a rich table redrawn in place (the default when the
    stream is a terminal) or one plain line per ``interval`` seconds. ``console``
    replaces the rich console (tests render into a ``StringIO``).
    """
    out = stream if stream is not None else sys.stderr
    if live is None:
        live = console is not None or _is_terminal(out)
    if interval is None:
        interval = _default_interval(live)
    view: _PlainView | _LiveView
    if live:
        if console is None:
            from rich.console import Console

            console = Console(file=out)
        # while the table is on screen, what the program prints to a stdout on the
        # same terminal goes above it instead of through it
        view = _LiveView(console, redirect_stdout=_is_terminal(sys.stdout))
    else:
        view = _PlainView(out)
    reporter = ProgressReporter(run, view, interval=interval, clock=clock)
    reporter.start(show_now=live)
    return reporter
