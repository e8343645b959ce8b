"""``conveyor gil``: the command runs and prints every row; its JSON parses; the
lessons follow the numbers.

Real timings on a shared machine are noise, so no test asserts a speed-up that was
measured: the two real runs (``--quick``, a second or so each) check the shape of
the output, and the lessons are tested with made-up measurements, including a
free-threaded interpreter with the GIL off (its detection mocked).
"""

from __future__ import annotations

import io
import json
import math
import platform
import subprocess
import sys
import sysconfig
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

from conveyor import _gilbench
from conveyor._cli import main
from conveyor._gilbench import GilState, Runner, Timing, choose_lesson

GIL_ON = GilState(free_threaded_build=False, enabled=True)
GIL_OFF = GilState(free_threaded_build=True, enabled=False)

ROWS = [
    ("cpu", "serial", 1),
    ("cpu", "threads", 2),
    ("cpu", "processes", 2),
    ("hash", "serial", 1),
    ("hash", "threads", 2),
    ("sleep", "serial", 1),
    ("sleep", "threads", _gilbench.SLEEP_THREADS),
]
ROW_FIELDS = {
    "workload",
    "label",
    "work",
    "units",
    "runner",
    "workers",
    "wall_seconds",
    "cpu_seconds",
    "speedup",
    "ideal_speedup",
    "outcome",
    "lesson",
}


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(main, list(args), prog_name="conveyor", catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def fake_rate(fn: object, units: int, probe: float) -> float:
    """Calibration without running anything: 1000 units a second."""
    return 1000.0


def fake_report(
    timings: list[list[Timing]], gil: GilState, *, cpus: int = 2, workers: int = 2
) -> _gilbench.Report:
    workloads = _gilbench.plan(workers, quick=True, rate=fake_rate)
    return _gilbench.analyze(
        workloads, timings, gil=gil, cpus=cpus, workers=workers, quick=True, seconds=1.0
    )


# made-up measurements: (serial, threads, processes), (serial, threads), (serial, threads)
TEXTBOOK = [
    [Timing(1.0, 1.0), Timing(1.02, 1.02), Timing(0.52, 1.03)],
    [Timing(1.0, 1.0), Timing(0.51, 1.01)],
    [Timing(0.26, 0.001), Timing(0.0045, 0.002)],
]
FREE_THREADED = [
    [Timing(1.0, 1.0), Timing(0.51, 1.01), Timing(0.52, 1.03)],
    [Timing(1.0, 1.0), Timing(0.51, 1.01)],
    [Timing(0.26, 0.001), Timing(0.0045, 0.002)],
]


# -- the command, for real ------------------------------------------------------------


def test_quick_run_prints_every_row(runner: CliRunner) -> None:
    code, out, err = invoke(runner, "gil", "--quick", "--workers", "2")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("conveyor gil: ")
    assert "GIL enabled" in lines[0] or "GIL disabled" in lines[0]
    assert "N = 2" in lines[0]
    assert lines[1].split()[:2] == ["workload", "runs"]
    rows = lines[3:10]
    expected = [
        ("pure-Python loop", "1 thread", "baseline"),
        ("pure-Python loop", "2 threads", "threads"),
        ("pure-Python loop", "2 processes", "processes"),
        ("sha256 of 1 MiB buffers", "1 thread", "baseline"),
        ("sha256 of 1 MiB buffers", "2 threads", "hashing"),
        ("sleeps of", "1 thread", "baseline"),
        ("sleeps of", "64 threads", "threads"),
    ]
    for row, (label, runs_on, lesson) in zip(rows, expected, strict=True):
        assert label in row, row
        assert f" {runs_on} " in row, row
        assert lesson in row, row
        assert row.count("x ") >= 2, row  # speed-up and ideal
    assert lines[10].startswith("wall: from the release of all workers")
    assert err == ""  # no status line: stderr is not a terminal


def test_json_parses_and_has_the_fields() -> None:
    # through `python -m conveyor`: measuring processes start under the real entry point
    proc = subprocess.run(
        [sys.executable, "-m", "conveyor", "gil", "--quick", "--json", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["workers"] == 2
    assert data["quick"] is True
    assert data["cpus"] == _gilbench.available_cpus()
    state = _gilbench.gil_state()
    assert data["free_threaded_build"] is state.free_threaded_build
    assert data["gil_enabled"] is state.enabled
    assert data["interpreter"].endswith(platform.python_version())
    assert 0 < data["serial_cpu_share"] <= 1
    assert data["seconds"] > 0
    rows = data["rows"]
    assert [(r["workload"], r["runner"], r["workers"]) for r in rows] == ROWS
    for r in rows:
        assert set(r) == ROW_FIELDS
        assert r["wall_seconds"] > 0
        assert r["cpu_seconds"] >= 0
        assert r["speedup"] > 0
        assert r["ideal_speedup"] >= 1
        assert r["outcome"] in ("baseline", "scales", "partial", "none", "slower")
        assert r["lesson"]
    baselines = [r for r in rows if r["runner"] == "serial"]
    assert all(r["speedup"] == 1.0 and r["outcome"] == "baseline" for r in baselines)
    assert rows[6]["ideal_speedup"] == _gilbench.SLEEP_TASKS


# -- bad options -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "0"], "Invalid value for '--workers': 0 is not in the range 2<=x<=1024"),
        (["--workers", "1"], "Invalid value for '--workers': 1 is not in the range 2<=x<=1024"),
        (["--workers", "many"], "Invalid value for '--workers': 'many' is not a valid integer"),
        (["--fast"], "No such option"),  # click 8.2: "No such option '--fast'."
        (["--items", "mod:items"], "--items goes with MODULE:FUNCTION"),
        (["no_such_module_here:fn"], "no module named 'no_such_module_here'"),
        (["a", "b"], "Got unexpected extra argument (b)"),
    ],
)
def test_a_bad_option_is_a_usage_error(runner: CliRunner, args: list[str], message: str) -> None:
    code, out, err = invoke(runner, "gil", *args)
    assert code == 2
    assert out == ""
    assert message in err
    assert "Usage: conveyor gil [OPTIONS]" in err


# -- the lessons follow the numbers ---------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "runner_kind", "wall", "cpu", "ideal", "gil", "outcome", "words"),
    [
        # a pure-Python loop on threads, GIL on: the textbook, or slower than one thread
        ("cpu", "threads", 1.02, 1.02, 2, GIL_ON, "none", "GIL lets one thread run Python"),
        ("cpu", "threads", 1.6, 1.6, 2, GIL_ON, "slower", "0.6x, slower: they take turns"),
        # ... and if it scaled anyway, it says so instead of reciting the textbook
        ("cpu", "threads", 0.55, 1.1, 2, GIL_ON, "scales", "1.8x with the GIL on, unexpected"),
        # free-threaded with the GIL off: threads run Python in parallel, or did not here
        ("cpu", "threads", 0.26, 1.02, 4, GIL_OFF, "scales", "~3.8x, the GIL is off here"),
        ("cpu", "threads", 0.98, 1.0, 2, GIL_OFF, "none", "no speed-up although the GIL is off"),
        # processes: ~Nx, or why not, from the CPU time
        ("cpu", "processes", 0.26, 1.03, 4, GIL_ON, "scales", "~3.8x, each has its own inter"),
        ("cpu", "processes", 0.7, 1.82, 2, GIL_ON, "partial", "work took 1.8x the serial CPU"),
        ("cpu", "processes", 0.7, 0.84, 2, GIL_ON, "partial", "its workers ran 60% of the time"),
        ("cpu", "processes", 1.0, 1.0, 2, GIL_ON, "none", "no speed-up measured: its work"),
        # hashing and sleeping release the GIL
        ("hash", "threads", 0.26, 1.03, 4, GIL_ON, "scales", "hashing releases the GIL: threads"),
        ("hash", "threads", 0.7, 1.4, 2, GIL_ON, "partial", "threads scale, 1.4x of 2x"),
        ("hash", "threads", 1.0, 1.0, 2, GIL_ON, "none", "hashing on threads: no speed-up"),
        ("sleep", "threads", 1 / 50, 0.0, 64, GIL_ON, "scales", "threads overlap waits (~50x)"),
        ("sleep", "threads", 1 / 20, 0.0, 64, GIL_ON, "partial", "overlap waits, 20x of 64x"),
        ("sleep", "threads", 1.0, 0.0, 64, GIL_ON, "none", "the waits did not overlap"),
        # one CPU: the ideal is 1x, and the lesson says why
        ("cpu", "processes", 1.0, 1.0, 1, GIL_ON, "none", "one CPU is available, so nothing"),
    ],
)
def test_the_lesson_follows_the_numbers(
    key: str,
    runner_kind: Any,
    wall: float,
    cpu: float,
    ideal: float,
    gil: GilState,
    outcome: str,
    words: str,
) -> None:
    base = Timing(wall=1.0, cpu=0.0 if key == "sleep" else 1.0)
    got, lesson = choose_lesson(key, runner_kind, base, Timing(wall, cpu), ideal, gil)
    assert got == outcome
    assert words in lesson


def test_the_baselines_say_what_they_are() -> None:
    base = Timing(1.0, 1.0)
    for key in ("cpu", "hash", "sleep"):
        got, lesson = choose_lesson(key, "serial", base, base, 1.0, GIL_ON)
        assert got == "baseline"
        assert lesson.startswith("baseline: one thread")


@pytest.mark.parametrize(
    ("speedup", "ideal", "expected"),
    [
        (1.0, 2, "none"),
        (1.24, 2, "none"),
        (1.3, 2, "partial"),
        (1.5, 2, "scales"),
        (0.8, 2, "slower"),
        (4.0, 8, "partial"),
        (4.5, 8, "scales"),
        (32.5, 64, "scales"),
    ],
)
def test_outcome_thresholds(speedup: float, ideal: float, expected: str) -> None:
    assert _gilbench.outcome(speedup, ideal) == expected


def test_textbook_numbers_give_the_textbook_lessons() -> None:
    report = fake_report(TEXTBOOK, GIL_ON)
    lessons = [r.lesson for r in report.rows]
    assert "GIL lets one thread run Python at a time" in lessons[1]
    assert "processes: ~1.9x, each has its own interpreter and GIL" == lessons[2]
    assert "hashing releases the GIL: threads scale" in lessons[4]
    assert "sleeping releases the GIL: threads overlap waits" in lessons[6]
    assert [r.speedup for r in report.rows][:3] == pytest.approx([1.0, 1 / 1.02, 1 / 0.52])
    assert report.header().startswith("conveyor gil: ")
    assert "GIL enabled (standard build); 2 CPUs available, N = 2" in report.header()


def mock_gil_detection(
    monkeypatch: pytest.MonkeyPatch, config: int | None, is_enabled: bool | None
) -> None:
    """``Py_GIL_DISABLED`` as ``config``; ``sys._is_gil_enabled()`` returning
    ``is_enabled``, or absent (before 3.13) when None."""
    real = sysconfig.get_config_var

    def get_config_var(name: str) -> Any:
        return config if name == "Py_GIL_DISABLED" else real(name)

    monkeypatch.setattr(sysconfig, "get_config_var", get_config_var)
    if is_enabled is None:
        monkeypatch.delattr(sys, "_is_gil_enabled", raising=False)
    else:
        monkeypatch.setattr(sys, "_is_gil_enabled", lambda: is_enabled, raising=False)


@pytest.mark.parametrize(
    ("config", "is_enabled", "expected"),
    [
        (None, None, GilState(free_threaded_build=False, enabled=True)),
        (0, None, GilState(free_threaded_build=False, enabled=True)),
        (1, False, GilState(free_threaded_build=True, enabled=False)),
        (1, True, GilState(free_threaded_build=True, enabled=True)),
    ],
    ids=["no-config-var", "standard", "free-threaded-gil-off", "free-threaded-gil-on-again"],
)
def test_gil_detection(
    monkeypatch: pytest.MonkeyPatch, config: int | None, is_enabled: bool | None, expected: GilState
) -> None:
    mock_gil_detection(monkeypatch, config, is_enabled)
    assert _gilbench.gil_state() == expected


def test_free_threaded_with_the_gil_off(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    """Threads that scale on a free-threaded build are reported as such, and the
    header names the interpreter state that was measured."""
    mock_gil_detection(monkeypatch, 1, False)
    report = fake_report(FREE_THREADED, _gilbench.gil_state())
    assert report.rows[1].outcome == "scales"
    assert "threads run Python in parallel" in report.rows[1].lesson
    assert "GIL disabled (free-threaded build)" in report.header()

    monkeypatch.setattr(_gilbench, "run_benchmark", lambda *a, **k: report)
    code, out, err = invoke(runner, "gil", "--quick")
    assert code == 0, err
    assert out.startswith("conveyor gil: ")
    assert "GIL disabled (free-threaded build)" in out.splitlines()[0]
    assert "~2.0x, the GIL is off here: threads run Python in parallel" in out

    code, out, err = invoke(runner, "gil", "--json")
    data = json.loads(out)
    assert data["free_threaded_build"] is True
    assert data["gil_enabled"] is False
    assert data["rows"][1]["outcome"] == "scales"


def test_the_gil_turned_back_on_in_a_free_threaded_build() -> None:
    state = GilState(free_threaded_build=True, enabled=True)
    report = fake_report(TEXTBOOK, state)
    assert "GIL enabled (free-threaded build, with the GIL turned back on)" in report.header()
    assert "GIL lets one thread run Python at a time" in report.rows[1].lesson


def test_a_contended_machine_is_flagged() -> None:
    timings = [list(row) for row in TEXTBOOK]
    timings[0][0] = Timing(1.0, 0.6)  # the serial loop got 60% of a CPU
    report = fake_report(timings, GIL_ON)
    assert report.serial_cpu_share == pytest.approx(0.6)
    assert "got only 60% of a CPU" in report.footer()
    assert "60% of a CPU" not in fake_report(TEXTBOOK, GIL_ON).footer()


# -- the pieces -----------------------------------------------------------------------------


def test_work_is_split_evenly_and_the_ideal_is_bounded_by_the_cpus() -> None:
    w = _gilbench.Workload(
        key="cpu",
        label="x",
        work="x",
        fn=_gilbench.spin,
        units=10,
        cpu_bound=True,
        runners=(Runner("threads", 3),),
    )
    assert w.shares(Runner("threads", 3)) == [4, 3, 3]
    assert w.shares(Runner("threads", 20)) == [1] * 10
    assert w.ideal(Runner("threads", 3), cpus=8) == pytest.approx(2.5)
    assert w.ideal(Runner("processes", 8), cpus=2) == 2.0
    sleep = _gilbench.plan(2, quick=True, rate=fake_rate)[2]
    assert sleep.ideal(Runner("threads", 64), cpus=2) == 64.0


def test_plan_sizes_the_work_from_the_rate() -> None:
    cpu, hashing, sleep = _gilbench.plan(4, quick=False, rate=fake_rate)
    assert cpu.units == round(1000 * _gilbench.SERIAL_SECONDS / 4) * 4
    assert hashing.units == cpu.units
    assert [r.label() for r in cpu.runners] == ["4 threads", "4 processes"]
    assert sleep.units == _gilbench.SLEEP_TASKS
    assert _gilbench.Runner("serial", 1).label() == "1 thread"


def test_the_rich_table_has_every_row() -> None:
    report = fake_report(TEXTBOOK, GIL_ON)
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(_gilbench.build_table(report))
    text = out.getvalue()
    assert "conveyor gil: " in text
    for r in report.rows:
        assert r.runs_on in text
        assert r.lesson in text
    assert text.count("pure-Python loop") == 1  # a label heads its group of rows


def test_runners_report_the_work_and_its_failures() -> None:
    t = _gilbench.run_threads(_gilbench.spin, [1000, 1000])
    assert t.wall > 0
    assert t.cpu > 0
    with pytest.raises(ValueError, match="negative"):
        _gilbench.run_threads(math.factorial, [-1])
    with pytest.raises(
        RuntimeError, match=r"measuring process 0 exited \(code 1\) before it was ready"
    ):
        _gilbench.run_processes(math.factorial, [1], warmup=-1)


# -- classifying a function ------------------------------------------------------------------

USER_MODULE = """
import hashlib
import time


def cpu(x):
    s = 0
    for i in range(20000):
        s += i * i
    return s & 1


def hashing(x):
    return hashlib.sha256(b"x" * (1 << 20)).digest()


def sleepy(x):
    time.sleep(0.002)


def lines():
    return ["a b c"] * 100_000


def split(line):
    return line.split()


not_a_function = 3
"""


@pytest.fixture
def user_module(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "gil_user_module.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    return "gil_user_module"


@pytest.mark.parametrize(
    ("function", "says"),
    [
        ("cpu", "-> process: cpu"),
        ("hashing", "-> thread: cpu"),
        ("sleepy", "-> thread: cpu"),
    ],
)
def test_classifies_a_function_as_auto_would(
    runner: CliRunner, user_module: str, function: str, says: str
) -> None:
    code, out, err = invoke(runner, "gil", f"{user_module}:{function}", "--workers", "2")
    assert code == 0, err
    assert out.startswith(f"{user_module}:{function} on 2 workers ")
    assert says in out


def test_classifies_on_the_items_given(runner: CliRunner, user_module: str) -> None:
    args = ["gil", f"{user_module}:split", "--items", f"{user_module}:lines"]
    code, out, err = invoke(runner, *args)
    assert code == 0, err
    assert "-> thread: " in out


def test_classifying_something_that_is_not_a_function(runner: CliRunner, user_module: str) -> None:
    code, _, err = invoke(runner, "gil", f"{user_module}:not_a_function")
    assert code == 2
    assert "not a function" in err
