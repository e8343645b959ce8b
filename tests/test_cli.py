"""The command line: ``conveyor run``, ``conveyor demo``, exit codes, signals.

In-process checks go through click's CliRunner (the ``runner`` fixture); a few run
``python -m conveyor`` for real, since exit codes, stderr and signals are what a
user sees. The signal tests wait until the pipeline has processed items (its
stage leaves a marker file) before they signal it; their timeouts only catch hangs.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from click.testing import CliRunner

import conveyor as cv
from conveyor import _demo
from conveyor._cli import main
from conveyor.testing import wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator

JOBS = """
import itertools, os, time
import conveyor as cv

def double(x):
    return 2 * x

def boom(x):
    if x == 3:
        raise ValueError(f"bad item {x}")
    return x

def slow(x):
    if x == 5:
        open("started", "w").close()  # the test waits for this before it signals
    time.sleep(0.005)
    return x

ok = cv.Pipeline("ok").source(range(5)).map(double, workers=2, kind="process")
fails = cv.Pipeline("fails").source(range(10)).map(boom, kind="process")
fails_in_thread = cv.Pipeline("fails").source(range(10)).map(boom)
endless = cv.Pipeline("endless").source(itertools.count()).map(slow, workers=2, kind="process")

def make():
    return ok.map(double, name="again")

def needs_args(n):
    return ok

def interrupted():
    raise KeyboardInterrupt

def not_a_pipeline():
    return [1, 2]

def bad_settings():
    return cv.Pipeline().source(range(3)).map(double, workers=0)

number = 3
"""

_names = itertools.count()


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A module of pipelines in the current directory, under a fresh name."""
    name = f"cli_jobs_{os.getpid()}_{next(_names)}"
    (tmp_path / f"{name}.py").write_text(JOBS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the command adds the cwd to it
    yield name
    sys.modules.pop(name, None)


def invoke(runner: CliRunner, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


# -- in-process -----------------------------------------------------------------------


def test_version(runner: CliRunner) -> None:
    code, out, _ = invoke(runner, "--version")
    assert code == 0
    assert out == f"conveyor, version {cv.__version__}\n"


def test_run_prints_outputs_with_print_and_stats_always(runner: CliRunner, jobs: str) -> None:
    code, out, err = invoke(runner, "run", f"{jobs}:ok", "--print")
    assert code == 0, err
    assert out.split() == ["0", "2", "4", "6", "8"]
    assert "run 'ok': finished in" in err
    assert "double" in err
    assert "[conveyor] " in err  # progress, plain: stderr is not a terminal here

    code, out, err = invoke(runner, "run", f"{jobs}:ok", "--no-progress")
    assert code == 0, err
    assert out == ""
    assert "run 'ok': finished in" in err
    assert "[conveyor] " not in err


def test_run_calls_a_factory(runner: CliRunner, jobs: str) -> None:
    code, out, err = invoke(runner, "run", f"{jobs}:make", "--print", "--no-progress")
    assert code == 0, err
    assert out.split() == ["0", "4", "8", "12", "16"]


@pytest.mark.parametrize("attr", ["fails", "fails_in_thread"])
def test_a_failed_run_exits_1_with_the_workers_traceback(
    runner: CliRunner, jobs: str, attr: str
) -> None:
    code, _, err = invoke(runner, "run", f"{jobs}:{attr}", "--grace", "1")
    assert code == 1
    assert "run 'fails': failed in" in err  # the stats table, however it ended
    assert f'{jobs}.py", line 10, in boom' in err  # the user's frame
    assert "ValueError: bad item 3" in err
    assert err.rstrip().endswith(
        "Error: stage 'boom' (worker boom-1) failed on item 3: ValueError: bad item 3"
    )
    assert "_workers" not in err  # conveyor's own frames are left out
    assert err.count("Traceback") == 1


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("nocolon", "expected MODULE:ATTR"),
        ("{jobs}:", "expected MODULE:ATTR"),
        ("no_such_module_here:x", "no module named 'no_such_module_here' in the current dir"),
        ("{jobs}:missing", "has no attribute 'missing'; its pipelines: endless, fails"),
        ("{jobs}:number", "is of type int, not a conveyor.Pipeline"),
        ("{jobs}:needs_args", "needs arguments"),
        ("{jobs}:not_a_pipeline", "returned an object of type list, not a conveyor.Pipeline"),
        ("{jobs}:bad_settings", "raised ValueError while building the pipeline"),
    ],
)
def test_usage_errors_exit_2_and_say_what_to_change(
    runner: CliRunner, jobs: str, target: str, message: str
) -> None:
    code, _, err = invoke(runner, "run", target.format(jobs=jobs))
    assert code == 2
    assert message in " ".join(err.split())
    assert "Usage: " in err


def test_a_module_that_fails_to_import_shows_its_own_traceback(
    runner: CliRunner, jobs: str
) -> None:
    Path(f"{jobs}_broken.py").write_text("import os\nx = 1 / 0\n")
    try:
        code, _, err = invoke(runner, "run", f"{jobs}_broken:p")
    finally:
        sys.modules.pop(f"{jobs}_broken", None)
    assert code == 2
    assert f'{jobs}_broken.py", line 2, in <module>' in err
    assert "ZeroDivisionError" in err
    assert "importlib" not in err
    assert f"importing '{jobs}_broken' raised ZeroDivisionError" in err


def test_a_factory_with_bad_settings_shows_the_users_line(runner: CliRunner, jobs: str) -> None:
    code, _, err = invoke(runner, "run", f"{jobs}:bad_settings")
    assert code == 2
    assert f'{jobs}.py", line 37, in bad_settings' in err
    assert "ValueError: workers must be >= 1, got 0" in err
    assert "_stage.py" not in err
    assert "_cli.py" not in err


def test_ctrl_c_maps_to_130(runner: CliRunner, jobs: str) -> None:
    code, _, err = invoke(runner, "run", f"{jobs}:interrupted")
    assert code == 130
    assert "Aborted: interrupted (SIGINT)" in err


def test_demo_keeps_its_reports_with_keep(runner: CliRunner, tmp_path: Path) -> None:
    base = tmp_path / "work"
    args = ["demo", "--files", "6", "--size-kb", "8", "--workers", "2", "--no-progress"]
    code, out, err = invoke(runner, *args, "--dir", str(base), "--keep")
    assert code == 0, err
    assert "analyzed 6 of 6 log files" in out
    assert "run 'demo': finished" in err
    (root,) = base.iterdir()
    reports = sorted((root / "reports").glob("*.json"))
    assert len(reports) == 6
    for report in reports:
        body = json.loads(report.read_text())
        log = root / "logs" / body["file"]
        assert body["crc32"] == f"{zlib.crc32(log.read_bytes()):08x}"

    code, out, err = invoke(runner, *args, "--dir", str(base))
    assert code == 0, err
    assert list(base.iterdir()) == [root]  # the second run's directory is gone


def test_demo_pipeline_in_process(tmp_path: Path) -> None:
    data = _demo.generate(tmp_path / "logs", files=5, size_kb=4, seed=7)
    (tmp_path / "out").mkdir()
    reports = list(_demo.build_pipeline(data.paths, tmp_path / "out", workers=2))
    assert [r.name for r in reports] == [p.name for p in data.paths]  # input order
    assert sum(r.lines for r in reports) == data.lines
    assert all(r.bad_lines == 0 for r in reports)
    for r, path in zip(reports, data.paths, strict=True):
        assert r.crc32 == f"{zlib.crc32(path.read_bytes()):08x}"
        assert Path(r.report_path).is_file()


# -- for real: python -m conveyor -------------------------------------------------------


def conveyor(cwd: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conveyor", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def jobs_dir(tmp_path: Path) -> Path:
    (tmp_path / "jobs.py").write_text(textwrap.dedent(JOBS))
    return tmp_path


def test_python_m_conveyor_exit_codes(jobs_dir: Path) -> None:
    ok = conveyor(jobs_dir, "run", "jobs:ok", "--print")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.split() == ["0", "2", "4", "6", "8"]
    assert "run 'ok': finished in" in ok.stderr

    failed = conveyor(jobs_dir, "run", "jobs:fails")
    assert failed.returncode == 1, failed.stderr
    assert "Error: stage 'boom' (worker boom-1) failed on item 3: ValueError: bad item 3" in (
        failed.stderr
    )
    assert 'jobs.py", line 10, in boom' in failed.stderr
    assert failed.stderr.count("Traceback") == 1
    assert "_cli.py" not in failed.stderr

    usage = conveyor(jobs_dir, "run", "jobs:nothing")
    assert usage.returncode == 2
    assert "has no attribute 'nothing'" in usage.stderr


def test_demo_for_real(tmp_path: Path) -> None:
    proc = conveyor(tmp_path, "demo", "--files", "8", "--size-kb", "16", "--dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "analyzed 8 of 8 log files" in proc.stdout
    assert "run 'demo': finished in" in proc.stderr
    for stage in ("read", "analyze", "write"):
        assert f"\n{stage} " in proc.stderr
    assert list(tmp_path.iterdir()) == []  # cleaned up


@pytest.mark.parametrize(
    ("sig", "code", "message"),
    [
        (signal.SIGINT, 130, "Aborted: interrupted (SIGINT)"),
        (signal.SIGTERM, 143, "Aborted: terminated (SIGTERM)"),
    ],
    ids=["SIGINT", "SIGTERM"],
)
def test_a_signal_stops_an_endless_run(
    jobs_dir: Path, sig: signal.Signals, code: int, message: str
) -> None:
    if sig == signal.SIGINT and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        pytest.skip("SIGINT is ignored here (a background job?), and the child would inherit it")
    proc = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "run", "jobs:endless", "--grace", "1"],
        cwd=jobs_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(
            lambda: (jobs_dir / "started").exists() or proc.poll() is not None,
            timeout=60,
            what="the endless pipeline to process items",
        )
        assert proc.poll() is None, proc.communicate()[1]
        t0 = time.monotonic()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == code, err
    # a healthy exit takes well under a second; the bound catches a hang or a
    # fallback timeout, with room for a machine shared with other test runs
    assert took < 10, f"took {took:.1f}s to exit:\n{err}"
    assert "run 'endless': cancelled in" in err
    assert err.rstrip().endswith(message)


def test_run_lists_the_failed_items(tmp_path: Path) -> None:
    (tmp_path / "skipper.py").write_text(
        "import conveyor as cv\n"
        "def check(x):\n"
        "    if x % 4 == 0:\n"
        "        raise ValueError(f'bad {x}')\n"
        "    return x\n"
        "pipeline = cv.Pipeline().source(range(10)).map(check, on_error='skip')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "conveyor", "run", "skipper:pipeline", "--no-progress"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "3 item(s) failed:" in proc.stderr
    assert "item=0" in proc.stderr
    assert "ValueError('bad 8')" in proc.stderr
