"""The stall watchdog: ``run(stall_timeout=..., on_stall=...)``.

Stuck stages are made stuck for real (locks taken in opposite orders, events never
set, a loop that never ends) and synchronised with events, never with sleeps. Runs
use a short ``stall_timeout`` and ``grace``; the bounds on waits only catch hangs.
Threads left stuck by a test stay stuck (daemon threads, as in real use).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from typing import Any

import pytest
from click.testing import CliRunner

import conveyor as cv
import conveyor.sync
from conveyor._cli import main
from conveyor.testing import wait_until

STALL = 0.3  # seconds of no progress that make a stall
GRACE = 0.1
HANG = 30.0  # only a hang takes this long


def line_of(fn: Any, marker: str) -> int:
    """The line number of the line of ``fn`` that contains ``marker``."""
    import inspect

    lines, first = inspect.getsourcelines(fn)
    for i, line in enumerate(lines):
        if marker in line:
            return first + i
    raise AssertionError(marker)


def stalled(run: cv.Run[Any]) -> cv.Stalled:
    t0 = time.monotonic()
    with pytest.raises(cv.Stalled) as info:
        run.wait(timeout=HANG)
    # stopped promptly: the stall is seen within 1.25 x stall_timeout, then grace
    assert time.monotonic() - t0 < HANG / 3
    return info.value


def worker(error: cv.Stalled | cv.StallWarning, name: str) -> cv.StalledWorker:
    found = [w for w in error.workers if w.name == name]
    assert found, [w.name for w in error.workers]
    return found[0]


# -- threads deadlocked on plain threading locks --------------------------------------


class AbBa:
    """Two items take two plain locks in opposite orders, each waiting until the other
    holds its first lock: a deadlock every time, without sleeping."""

    def __init__(self) -> None:
        self.a, self.b = threading.Lock(), threading.Lock()
        self.has_a, self.has_b = threading.Event(), threading.Event()

    def __call__(self, item: int) -> int:
        if item == 0:
            with self.a:
                self.has_a.set()
                self.has_b.wait(HANG)
                with self.b:  # second lock (a then b)
                    return item
        if item == 1:
            with self.b:
                self.has_b.set()
                self.has_a.wait(HANG)
                with self.a:  # second lock (b then a)
                    return item
        return item


def test_thread_deadlock_on_plain_locks_is_reported_and_stopped(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stage = AbBa()
    run = (
        cv.Pipeline("deadlock")
        .source(range(10))
        .map(stage, workers=2, kind="thread", batch_size=1, name="ab")
        .run(stall_timeout=STALL, grace=GRACE)
    )
    error = stalled(run)
    text = str(error)
    assert error.stall_timeout == STALL
    assert "run 'deadlock' stalled" in text
    for name, marker in (("ab-1", "(a then b)"), ("ab-2", "(b then a)")):
        w = worker(error, name)
        assert (w.stage, w.kind, w.state) == ("ab", "thread", "busy")
        assert w.thread_id is not None
        assert w.pid is not None
        assert w.item in ("0", "1")
        assert w.state_seconds >= STALL * 0.9
        line = line_of(AbBa.__call__, marker)
        assert f"line {line}, in __call__" in w.stack, w.stack
        assert marker in w.stack  # the source line itself
        assert f"line {line}, in __call__" in text
    # the report went to stderr when the stall was seen
    assert "run 'deadlock' stalled" in capsys.readouterr().err
    # the stuck threads cannot be killed: abandoned, and named so
    abandoned = {w.name for w in run.workers() if w.abandoned}
    assert {"ab-1", "ab-2"} <= abandoned
    assert run.state == "failed"


def test_a_stuck_thread_does_not_keep_the_program_from_exiting(tmp_path: Any) -> None:
    script = tmp_path / "stuck.py"
    script.write_text(
        textwrap.dedent(
            """
            import threading
            import conveyor as cv

            lock = threading.Lock()
            lock.acquire()

            def stuck(item):
                with lock:  # never released
                    return item

            run = cv.Pipeline().source(range(5)).map(stuck, kind="thread").run(
                stall_timeout=0.2, grace=0.1)
            try:
                run.wait()
            except cv.Stalled as exc:
                print("stalled:", exc.workers[-1].name)
            """
        )
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=HANG
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "stalled: stuck-1"
    assert "line 9, in stuck" in out.stderr  # the report, printed when seen


# -- process workers stuck for good ------------------------------------------------------


def wait_forever(item: int) -> int:
    threading.Event().wait()  # never set
    return item


def spin(item: int) -> int:
    n = 0
    while n >= 0:  # holds the GIL for ever, in Python code
        n += 1
    return item


@pytest.mark.parametrize(("fn", "marker"), [(wait_forever, "never set"), (spin, "n += 1")])
def test_process_worker_stuck_is_reported_with_its_stack(fn: Any, marker: str) -> None:
    run = (
        cv.Pipeline("stuck")
        .source(range(20))
        .map(fn, kind="process", name="p")
        .run(stall_timeout=STALL, grace=GRACE)
    )
    error = stalled(run)
    w = worker(error, "p-1")
    assert (w.kind, w.state) == ("process", "busy")
    assert w.pid is not None
    assert w.pid == w.thread_id
    assert w.item == "0"
    line = line_of(fn, marker)
    lines = (line - 1, line) if fn is spin else (line,)  # the loop: either of its lines
    assert any(f"line {n}, in {fn.__name__}" in w.stack for n in lines), w.stack
    assert __file__.rstrip("c") in w.stack
    assert run.state == "failed"
    assert not any(s.alive for s in run.workers() if s.kind == "process")


def test_process_stage_deadlocked_on_its_own_locks() -> None:
    def ab_ba(item: int) -> int:  # one process: two threads of its own, AB/BA
        a, b = threading.Lock(), threading.Lock()
        has_a, has_b = threading.Event(), threading.Event()

        def other() -> None:
            with b:
                has_b.set()
                has_a.wait()
                with a:
                    pass

        threading.Thread(target=other, daemon=True).start()
        with a:
            has_a.set()
            has_b.wait()
            with b:  # the worker's own thread waits here
                return item

    run = (
        cv.Pipeline()
        .source(range(3))
        .map(ab_ba, kind="process", name="p")
        .run(stall_timeout=STALL, grace=GRACE)
    )
    w = worker(stalled(run), "p-1")
    assert "in ab_ba" in w.stack, w.stack
    assert "in other" in w.stack, w.stack  # the stage's other thread too
    assert "with b:  # the worker's own thread waits here" in w.stack


# -- conveyor.sync locks ---------------------------------------------------------------


def test_sync_lock_deadlock_raises_stage_error_by_itself() -> None:
    a, b = conveyor.sync.Lock("a"), conveyor.sync.Lock("b")
    has_a, has_b = threading.Event(), threading.Event()

    def stage(item: int) -> int:
        first, second, mine, theirs = (a, b, has_a, has_b) if item == 0 else (b, a, has_b, has_a)
        if item in (0, 1):
            with first:
                mine.set()
                theirs.wait(HANG)
                with second:
                    return item
        return item

    run = (
        cv.Pipeline()
        .source(range(4))
        .map(stage, workers=2, kind="thread", batch_size=1)
        .run(stall_timeout=HANG)
    )
    with pytest.raises(cv.StageError) as info:
        run.wait(timeout=HANG)
    assert info.value.stage == "stage"
    assert isinstance(info.value.__cause__, cv.DeadlockError)


def test_report_names_the_sync_lock_a_worker_waits_for() -> None:
    lock = conveyor.sync.Lock("the-lock")
    taken, never = threading.Event(), threading.Event()

    def stage(item: int) -> int:
        if item == 0:
            with lock:
                taken.set()
                never.wait(HANG)  # holds the lock, waits for nothing that comes
        else:
            taken.wait(HANG)
            with lock:
                pass
        return item

    run = (
        cv.Pipeline()
        .source(range(2))
        .map(stage, workers=2, kind="thread", batch_size=1, ordered=False)
        .run(stall_timeout=STALL, grace=GRACE)
    )
    try:
        error = stalled(run)
    finally:
        never.set()
    waits = [w.waiting_for for w in error.workers if "the-lock" in w.waiting_for]
    assert len(waits) == 1, [w.waiting_for for w in error.workers]
    assert "held by stage-" in waits[0]


def test_report_names_the_sync_lock_a_worker_process_waits_for() -> None:
    def stage(item: int) -> int:  # in the worker process: a thread of its own holds it
        import threading

        from conveyor import sync

        lock, taken = sync.Lock("the-process-lock"), threading.Event()

        def hold() -> None:
            with lock:
                taken.set()
                threading.Event().wait()  # never let go

        threading.Thread(target=hold, name="holder", daemon=True).start()
        taken.wait()
        with lock:  # the worker's own thread waits here
            return item

    run = (
        cv.Pipeline()
        .source(range(2))
        .map(stage, kind="process", name="p")
        .run(stall_timeout=STALL, grace=GRACE)
    )
    w = worker(stalled(run), "p-1")
    assert "waits for the-process-lock, held by holder (taken at " in w.waiting_for, w.waiting_for


# -- channels ------------------------------------------------------------------------


def test_a_consumer_that_stops_reading_is_named() -> None:
    run = (
        cv.Pipeline("unread")
        .source(range(100_000))
        .map(str, kind="thread", name="fmt")
        .run(stall_timeout=STALL, grace=GRACE)
    )
    outputs = iter(run)
    assert next(outputs) == "0"
    # the consumer stops taking outputs: the run fills up, then stops
    assert run._run.done.wait(HANG)
    with pytest.raises(cv.Stalled) as info:
        list(outputs)
    text = str(info.value)
    assert "the run's output" in text
    assert "(full)" in text
    fmt = worker(info.value, "fmt-1")
    assert fmt.state == "blocked"
    assert "room in the run's output" in fmt.waiting_for
    assert "nothing takes the run's outputs" in fmt.waiting_for


def test_a_stuck_stage_shows_the_channels_around_it() -> None:
    release = threading.Event()

    def stuck(item: int) -> int:
        if item == 0:
            release.wait(HANG)
        return item

    run = (
        cv.Pipeline()
        .source(range(1000))
        .map(stuck, kind="thread", name="first", batch_size=1)
        .map(str, kind="thread", name="second")
        .run(stall_timeout=STALL, grace=GRACE)
    )
    try:
        error = stalled(run)
    finally:
        release.set()
    assert worker(error, "first-1").waiting_for == ""  # in the stage's code: see the stack
    assert "in stuck" in worker(error, "first-1").stack
    assert worker(error, "second-1").waiting_for.startswith(
        "input: the input of stage 'second', 0/"
    )
    assert "room in the input of stage 'first'" in worker(error, "source-1").waiting_for


def test_asyncio_worker_stack_is_its_await_chain() -> None:
    async def stuck(item: int) -> int:
        await asyncio.Event().wait()  # never set
        return item

    run = (
        cv.Pipeline()
        .source(range(3))
        .map(stuck, kind="asyncio", name="a")
        .run(stall_timeout=STALL, grace=GRACE)
    )
    w = worker(stalled(run), "a-1")
    assert w.kind == "asyncio"
    assert f"line {line_of(stuck, 'never set')}, in stuck" in w.stack, w.stack


# -- warn -----------------------------------------------------------------------------


def test_warn_reports_once_and_the_run_goes_on() -> None:
    release = threading.Event()

    def slow_first(item: int) -> int:
        if item == 0:
            release.wait(HANG)
        return item * 2

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        run = (
            cv.Pipeline()
            .source(range(50))
            .map(slow_first, kind="thread", name="s")
            .run(stall_timeout=STALL, on_stall="warn")
        )
        wait_until(lambda: len(record), HANG, "a StallWarning")  # from the watchdog thread
        release.set()
        assert list(run) == [i * 2 for i in range(50)]
    assert [r.category for r in record] == [cv.StallWarning]  # once per episode
    warning = record[0].message
    assert isinstance(warning, cv.StallWarning)
    assert "in slow_first" in worker(warning, "s-1").stack
    assert "The run goes on" in str(warning)
    assert run.state == "finished"


def test_warn_made_an_error_by_the_warnings_filter_stops_the_run() -> None:
    never = threading.Event()

    def stuck(item: int) -> int:
        never.wait(HANG)
        return item

    with warnings.catch_warnings():
        warnings.simplefilter("error", cv.StallWarning)
        run = (
            cv.Pipeline()
            .source(range(3))
            .map(stuck, kind="thread")
            .run(stall_timeout=STALL, on_stall="warn", grace=GRACE)
        )
        try:
            error = stalled(run)
        finally:
            never.set()
    assert isinstance(error.__cause__, cv.StallWarning)


# -- what is not a stall -----------------------------------------------------------------


def test_slow_but_progressing_stage_is_never_reported() -> None:
    other_done = threading.Event()
    n = 40

    def stage(item: int) -> int:
        if item == 0:  # runs for longer than stall_timeout while the others progress
            assert other_done.wait(HANG)
        else:
            time.sleep(STALL / 10)  # the work: slow items, one at a time
            if item == n - 1:
                other_done.set()
        return item

    run = (
        cv.Pipeline()
        .source(range(n))
        .map(stage, workers=2, kind="thread", batch_size=1, ordered=False)
        .run(stall_timeout=STALL)
    )
    assert sorted(run) == list(range(n))
    assert run.state == "finished"


def test_a_source_that_waits_is_idle_not_stalled() -> None:
    def source() -> Any:
        yield 1
        time.sleep(STALL * 2)  # the source's own wait (a slow feed)
        yield 2

    run = cv.Pipeline().source(source()).map(str, kind="thread").run(stall_timeout=STALL)
    assert list(run) == ["1", "2"]


def test_off_by_default() -> None:
    run = cv.Pipeline().source(range(3)).map(str).run()
    assert run._run.stall_timeout is None
    assert list(run) == ["0", "1", "2"]


# -- validation -------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -1, 0.0, float("nan"), float("inf"), "5", True])
def test_bad_stall_timeout(value: Any) -> None:
    with pytest.raises(ValueError, match="stall_timeout must be a number of seconds > 0"):
        cv.Pipeline().source(range(3)).map(str).run(stall_timeout=value)


@pytest.mark.parametrize("value", ["ignore", None, "RAISE"])
def test_bad_on_stall(value: Any) -> None:
    with pytest.raises(ValueError, match="on_stall must be 'raise'"):
        cv.Pipeline().source(range(3)).map(str).run(stall_timeout=1, on_stall=value)


def test_stalled_pickles() -> None:
    import pickle

    error = cv.Stalled("report", ("w",), 2.0)
    again = pickle.loads(pickle.dumps(error))
    assert (str(again), again.workers, again.stall_timeout) == ("report", ("w",), 2.0)
    assert isinstance(again, cv.PipelineError)


# -- command line -----------------------------------------------------------------------


def test_cli_stall_timeout(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "stall_jobs.py").write_text(
        textwrap.dedent(
            """
            import threading
            import conveyor as cv

            def stuck(item):
                threading.Event().wait()

            pipeline = cv.Pipeline("cli").source(range(3)).map(stuck, kind="process")
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    runner = CliRunner()
    args = ["run", "stall_jobs:pipeline", "--no-progress", "--grace", "0.1"]
    try:
        result = runner.invoke(main, [*args, "--stall-timeout", "0"], catch_exceptions=False)
        assert result.exit_code == 2
        result = runner.invoke(main, [*args, "--stall-timeout", "0.3"], catch_exceptions=False)
    finally:
        sys.modules.pop("stall_jobs", None)
    assert result.exit_code == 1, result.stderr
    assert "run 'cli' stalled" in result.stderr
    assert "in stuck" in result.stderr
    assert result.stderr.count("run 'cli' stalled") == 2  # the report, then the error line
    assert "(the report is above)" in result.stderr
