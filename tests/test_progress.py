"""Live progress: the plain line, the rich table, stop(), and progress=True for real.

Most tests drive a ProgressReporter by hand: a fake run whose counters the test
sets, a fake clock the test advances, and an interval so long that the sampler
thread never wakes on its own; ``refresh()`` is one tick. Tests of the thread
itself wait for the lines to appear, never for time to pass.
"""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import pytest
from rich.console import Console

import conveyor as cv
from conveyor._observe._progress import INTERVAL_ENV, ProgressReporter, start_progress
from conveyor.testing import wait_until

NEVER = 3600.0  # an interval the sampler thread never reaches in a test


@dataclass
class FakeStage:
    name: str
    kind: str = "thread"
    workers: int = 1
    items_in: int = 0
    items_out: int = 0
    failed: int = 0
    queue_size: int = 0
    queue_maxsize: int = 16
    busy_seconds: float = 0.0


@dataclass
class FakeRun:
    """Counters a test sets; stats() turns them into a RunStats."""

    stages: list[FakeStage]
    elapsed: float = 0.0
    state: str = "running"
    fail: bool = False
    calls: int = 0
    name: str = "fake"

    def __getitem__(self, name: str) -> FakeStage:
        return next(s for s in self.stages if s.name == name)

    def stats(self) -> cv.RunStats:
        self.calls += 1
        if self.fail:
            raise RuntimeError("stats broke")
        return cv.RunStats(
            self.name,
            self.state,
            self.elapsed,
            tuple(
                cv.StageStats(
                    s.name,
                    s.kind,
                    s.workers,
                    s.items_in,
                    s.items_out,
                    s.failed,
                    s.busy_seconds,
                    s.queue_size,
                    s.queue_maxsize,
                    self.elapsed,
                )
                for s in self.stages
            ),
        )


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def three_stages() -> FakeRun:
    return FakeRun(
        [
            FakeStage("source", queue_maxsize=0),
            FakeStage("parse", kind="process", workers=2, queue_maxsize=64),
            FakeStage("write"),
        ]
    )


def plain(run: FakeRun, interval: float = NEVER) -> tuple[ProgressReporter, io.StringIO, FakeClock]:
    out, clock = io.StringIO(), FakeClock()
    reporter = start_progress(run, stream=out, live=False, interval=interval, clock=clock)
    return reporter, out, clock


def lines(out: io.StringIO) -> list[str]:
    return out.getvalue().splitlines()


def test_plain_line_shows_counts_recent_rate_queue_workers_and_failures() -> None:
    run = three_stages()
    reporter, out, clock = plain(run)
    try:
        assert out.getvalue() == ""  # the start only takes the base sample
        run.elapsed = clock.now = 3.0
        run["source"].items_out = 1_300
        run["parse"].items_in, run["parse"].items_out, run["parse"].queue_size = 1_234, 1_200, 12
        run["write"].items_in, run["write"].items_out = 1_195, 1_185
        run["write"].queue_size, run["write"].failed = 3, 2
        assert reporter.refresh()
        assert lines(out) == [
            "[conveyor] 3.0s  source 1,300 out 433/s"
            " | parse x2 1,234 in 1,200 out 400/s q 12/64"
            " | write x1 1,195 in 1,185 out 395/s q 3/16 2 failed"
        ]
    finally:
        reporter.stop()


def test_rate_is_recent_not_the_average() -> None:
    run = FakeRun([FakeStage("work")])
    reporter, out, clock = plain(run, interval=2.0)
    try:
        for t, done in [(2.0, 1_000), (4.0, 1_000), (6.0, 1_100)]:
            run.elapsed = clock.now = t
            run["work"].items_in = run["work"].items_out = done
            reporter.refresh()
        # 500/s over the first period, then a stall, then 50/s; the average would
        # say 250/s and then 183/s
        assert [line.split(" out ")[1].split()[0] for line in lines(out)] == [
            "500/s",
            "0/s",
            "50/s",
        ]
    finally:
        reporter.stop()


def test_final_line_names_the_state_and_shows_the_average_rate() -> None:
    run = FakeRun([FakeStage("work")])
    reporter, out, clock = plain(run)
    run.elapsed = clock.now = 4.0
    run["work"].items_in = run["work"].items_out = 1_000
    run.state = "finished"
    reporter.stop()
    assert lines(out) == ["[conveyor] 4.0s finished  work x1 1,000 in 1,000 out 250/s q 0/16"]


def test_stop_is_idempotent_and_joins_the_thread() -> None:
    run = FakeRun([FakeStage("work")])
    reporter, out, _ = plain(run)
    thread = reporter._thread
    assert thread is not None
    assert thread.is_alive()
    reporter.stop()
    reporter.stop()
    assert not thread.is_alive()
    assert len(lines(out)) == 1  # one final line, not two
    assert not reporter.refresh()  # nothing is drawn after the end


def test_stop_from_many_threads_draws_one_final_line() -> None:
    import threading

    run = FakeRun([FakeStage("work")])
    reporter, out, _ = plain(run)
    stoppers = [threading.Thread(target=reporter.stop) for _ in range(8)]
    for t in stoppers:
        t.start()
    for t in stoppers:
        t.join(10)
    assert len(lines(out)) == 1


def test_errors_end_the_reporting_quietly() -> None:
    run = FakeRun([FakeStage("work")])
    reporter, out, _ = plain(run)
    run.fail = True
    assert not reporter.refresh()
    reporter.stop()  # does not raise, draws nothing more
    assert out.getvalue() == ""

    closed = io.StringIO()
    reporter = start_progress(FakeRun([FakeStage("work")]), stream=closed, live=False)
    closed.close()
    assert not reporter.refresh()
    reporter.stop()


def test_the_sampler_thread_prints_a_line_per_interval() -> None:
    run = FakeRun([FakeStage("work")])
    out = io.StringIO()
    reporter = start_progress(run, stream=out, live=False, interval=0.005)
    try:
        wait_until(lambda: len(lines(out)) >= 3, timeout=30, what="three progress lines")
    finally:
        reporter.stop()
    assert all(line.startswith("[conveyor] ") for line in lines(out))
    assert lines(out)[-1].startswith("[conveyor] 0.0s running  ")  # the final one


def test_interval_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(INTERVAL_ENV, "0.5")
    reporter = start_progress(FakeRun([FakeStage("work")]), stream=io.StringIO(), live=False)
    reporter.stop()
    assert reporter.interval == 0.5
    monkeypatch.setenv(INTERVAL_ENV, "soon")
    reporter = start_progress(FakeRun([FakeStage("work")]), stream=io.StringIO(), live=False)
    reporter.stop()
    assert reporter.interval == 2.0


def test_a_non_terminal_stream_gets_plain_lines() -> None:
    out = io.StringIO()
    reporter = start_progress(FakeRun([FakeStage("work")]), stream=out, interval=NEVER)
    reporter.stop()
    assert out.getvalue().startswith("[conveyor] ")


def test_rich_table_renders_to_a_terminal_console() -> None:
    run = three_stages()
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120, color_system="truecolor")
    stderr_before = sys.stderr
    clock = FakeClock()
    reporter = start_progress(run, console=console, interval=NEVER, clock=clock)
    run.elapsed = clock.now = 2.0
    run["source"].items_out = 500
    run["parse"].items_in, run["parse"].items_out, run["parse"].queue_size = 480, 470, 60
    run["write"].failed = 4
    assert reporter.refresh()
    run.state = "failed"
    reporter.stop()
    reporter.stop()
    text = buf.getvalue()
    for word in ("conveyor · fake · running · 2.0s", "conveyor · fake · failed", "parse"):
        assert word in text
    assert "60/64" in text
    assert "480" in text
    assert "235" in text
    assert sys.stderr is stderr_before  # the live display gave stderr back


def test_rich_table_after_errors_stops_quietly() -> None:
    run = FakeRun([FakeStage("work")])
    console = Console(file=io.StringIO(), force_terminal=True)
    stderr_before = sys.stderr
    reporter = start_progress(run, console=console, interval=NEVER)
    assert sys.stderr is not stderr_before  # the live display prints stderr above itself
    run.fail = True
    assert not reporter.refresh()
    reporter.stop()
    assert sys.stderr is stderr_before  # given back, though the display broke


# -- for real -------------------------------------------------------------------------


def slow_double(x: int) -> int:
    import time

    time.sleep(0.001)
    return 2 * x


def test_progress_true_end_to_end(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setenv(INTERVAL_ENV, "0.01")
    run = (
        cv.Pipeline(name="e2e")
        .source(range(300))
        .map(slow_double, workers=2, kind=kind, name="double")
        .run(progress=True)
    )
    assert sum(run) == 2 * sum(range(300))
    # the run's reaper stops the reporter once the workers are done
    wait_until(lambda: "finished" in err.getvalue(), what="the final progress line")
    final = lines(err)[-1]
    assert final.startswith("[conveyor] ")
    assert " finished  " in final
    assert "double x2 300 in 300 out" in final


def boom(x: int) -> int:
    if x == 7:
        raise ValueError("seven")
    return x


def test_progress_of_a_failed_run(monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    run = cv.Pipeline().source(range(20)).map(boom).run(progress=True)
    with pytest.raises(cv.StageError, match="seven"):
        run.wait()
    wait_until(lambda: " failed  " in err.getvalue(), what="the final progress line")
    assert "1 failed" in lines(err)[-1]


def test_import_conveyor_loads_neither_rich_nor_click() -> None:
    code = textwrap.dedent(
        """
        import sys
        import conveyor as cv
        assert "rich" not in sys.modules and "click" not in sys.modules
        run = cv.Pipeline().source(range(10)).map(abs).run(progress=True)  # stderr: a pipe
        run.wait()
        assert "rich" not in sys.modules, "plain progress imported rich"
        print("ok")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "ok\n"
