"""Ctrl-C, SIGTERM and kill -9 of the main process: nothing is left behind.

Each test runs a pipeline in a fresh interpreter, waits until its workers are busy
(the script says so), signals it, and checks that it exits within a few seconds
and that every worker process and the launcher are gone, not orphaned, not zombies.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conveyor.testing import wait_until

JOIN_S = 60

SCRIPT = """
import itertools, json, sys, time
import conveyor as cv
from conveyor._workers._zygote import Zygote
from conveyor.testing import wait_until

JOIN_S = 60

def slow(x):
    time.sleep(0.02)
    return x

mode = sys.argv[1]
p = (
    cv.Pipeline()
    .source(itertools.count())
    .map(slow, workers=2, kind="process", name="cpu")
    .map(slow, workers=4, kind="thread", name="io")
)
if mode == "sink":
    p = p.sink(lambda x: None, kind="process", name="out")
run = p.run()
def started():
    return run.stats()["io"].items_out > 10 and all(w.state != "starting" for w in run.workers())
wait_until(started)
pids = [w.pid for w in run.workers() if w.kind == "process"]
print(json.dumps({"workers": pids, "zygote": Zygote.get().process.pid}), flush=True)
if mode == "iterate":
    for x in run:
        pass
else:
    run.wait()
"""


def alive(pid: int) -> bool:
    """Running, or a zombie nobody reaped: either way not gone."""
    return os.path.exists(f"/proc/{pid}")


def shm_entries() -> set[str]:
    """/dev/shm entries that could be a segment left behind by these runs. The engine
    makes none with a name (its shared memory is a memfd); multiprocessing semaphores
    (sem.mp-*) belong to other programs on a shared machine and come and go."""
    return {e for e in os.listdir("/dev/shm") if not e.startswith("sem.mp-")}


def start(tmp_path: Path, mode: str) -> tuple[subprocess.Popen[str], list[int]]:
    script = tmp_path / "run_forever.py"
    script.write_text(textwrap.dedent(SCRIPT))
    proc = subprocess.Popen(
        [sys.executable, str(script), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"the script did not start: {err}")
    info = json.loads(line)
    pids = [*info["workers"], info["zygote"]]
    assert all(alive(p) for p in pids)
    return proc, pids


def assert_all_gone(pids: list[int]) -> None:
    wait_until(lambda: not any(alive(p) for p in pids), timeout=10, what=f"{pids} to exit")


@pytest.mark.parametrize("mode", ["iterate", "wait", "sink"])
@pytest.mark.parametrize(
    ("sig", "code"),
    [(signal.SIGINT, -signal.SIGINT), (signal.SIGTERM, 128 + signal.SIGTERM)],
    ids=["SIGINT", "SIGTERM"],
)
def test_signal_stops_everything(tmp_path: Path, mode: str, sig: int, code: int) -> None:
    shm_before = shm_entries()
    proc, pids = start(tmp_path, mode)
    t0 = time.monotonic()
    proc.send_signal(sig)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the script did not exit within 15 s of the signal")
    took = time.monotonic() - t0
    _, stderr = proc.communicate()
    assert proc.returncode == code, stderr
    assert took < 5, f"took {took:.1f}s to exit"
    assert_all_gone(pids)
    assert shm_entries() - shm_before == set()


def test_kill_9_of_the_main_process_takes_the_workers_down(tmp_path: Path) -> None:
    proc, pids = start(tmp_path, "iterate")
    proc.kill()
    proc.communicate(timeout=15)
    assert_all_gone(pids)


def test_launcher_exits_with_its_process_even_if_that_process_forked(tmp_path: Path) -> None:
    # a child made with os.fork() inherits the sockets; it must not keep the launcher alive
    script = tmp_path / "forks.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, sys, time, warnings
            import conveyor as cv
            from conveyor._workers._zygote import Zygote
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: we know
            list(cv.Pipeline().source(range(3)).map(abs, kind="process"))
            zygote = Zygote.get().process.pid
            child = os.fork()
            if child == 0:
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, 1)  # let the test read the parent's output to its end
                os.dup2(null, 2)
                time.sleep(60)
                os._exit(0)
            print(zygote, child, flush=True)
            """
        )
    )
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=JOIN_S, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    zygote, child = map(int, proc.stdout.split())
    try:
        assert_all_gone([zygote])
        assert alive(child)
    finally:
        os.kill(child, signal.SIGKILL)


SLOW_SCRIPT = """
import itertools, json, os, time
import conveyor as cv
from conveyor._workers._zygote import Zygote
from conveyor.testing import wait_until

def slow(x):
    time.sleep(30)
    return x

p = cv.Pipeline().source(itertools.count()).map(slow, workers=2, kind="process", name="slow")
run = p.run(grace=60)
wait_until(lambda: all(w.state == "busy" for w in run.workers() if w.stage == "slow"))
pids = [w.pid for w in run.workers() if w.kind == "process"]
print(json.dumps({"workers": pids, "zygote": Zygote.get().process.pid}), flush=True)
for x in run:
    pass
"""


def test_second_ctrl_c_stops_at_once(tmp_path: Path) -> None:
    script = tmp_path / "slow.py"
    script.write_text(textwrap.dedent(SLOW_SCRIPT))
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    info = json.loads(proc.stdout.readline())
    proc.send_signal(signal.SIGINT)  # first: finish the items in flight (30 s; grace 60 s)
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=1.0)  # it is waiting for them, as it should
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)  # second: now
    proc.wait(timeout=15)
    _, stderr = proc.communicate()
    assert time.monotonic() - t0 < 5
    assert proc.returncode == -signal.SIGINT, stderr
    assert_all_gone(info["workers"])
