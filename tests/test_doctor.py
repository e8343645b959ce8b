"""``conveyor doctor script.py``: a script written with plain ``threading`` locks,
checked without changing a line of it. Each run is its own interpreter; the timeout
only catches hangs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HANG_TIMEOUT = 60.0

# The course's deadlock example, as the notes write it (threading locks, explicit
# acquire and release, a Thread subclass); SLEEP comes from the command line.
SEED = """\
from threading import Thread, Lock
import sys
import time

mutexA = Lock()
mutexB = Lock()
SLEEP = float(sys.argv[1]) if len(sys.argv) > 1 else 0.0


class MyThread(Thread):
    def run(self):
        self.func1()
        self.func2()

    def func1(self):
        mutexA.acquire()
        print('%s 拿到了A锁' % self.name)
        mutexB.acquire()
        print('%s 拿到了B锁' % self.name)
        mutexB.release()
        mutexA.release()

    def func2(self):
        mutexB.acquire()
        print('%s 拿到了B锁' % self.name)
        time.sleep(SLEEP)
        mutexA.acquire()
        print('%s 拿到了A锁' % self.name)
        mutexA.release()
        mutexB.release()


if __name__ == '__main__':
    for i in range(10):
        t = MyThread()
        t.start()
"""

SEED_SERIAL = SEED.replace(
    "        t.start()\n", "        t.start()\n        t.join()  # one at a time: never hangs\n"
)
SEED_RLOCK = SEED.replace(
    "from threading import Thread, Lock", "from threading import Thread, RLock"
)
SEED_RLOCK = SEED_RLOCK.replace("mutexA = Lock()\nmutexB = Lock()", "mutexA = mutexB = RLock()")


def doctor(
    tmp_path: Path, source: str, *args: str, options: tuple[str, ...] = ()
) -> tuple[int, str]:
    script = tmp_path / "script.py"
    script.write_text(source, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "conveyor", "doctor", *options, str(script), *args],
        cwd=tmp_path,
        capture_output=True,
        encoding="utf-8",
        timeout=HANG_TIMEOUT,
        check=False,
    )
    return proc.returncode, proc.stderr


def test_the_seed_deadlock_is_reported_when_it_completes(tmp_path: Path) -> None:
    """Threads one after the other: the program completes, never deadlocks, and the
    two opposite orders are reported with where each lock was taken."""
    code, err = doctor(tmp_path, SEED_SERIAL)
    assert code == 1, err
    assert "script.py: 1 problem found." in err
    assert "1. inversion: lock order inversion: mutexA (made at " in err
    assert "mutexB (made at " in err
    assert "script.py:16, then mutexB at " in err  # func1: A at line 16, B at line 18
    assert "script.py:24, then mutexA at " in err  # func2: B at line 24, A at line 27
    assert "deadlock: deadlock" not in err


def test_the_seed_deadlock_without_sleeps(tmp_path: Path) -> None:
    """Ten threads at once, no sleep: it may complete or deadlock; the inversion is
    reported either way, and the doctor never hangs."""
    code, err = doctor(tmp_path, SEED, "0")
    assert code == 1, err
    assert "inversion: lock order inversion: mutexA (made at " in err


def test_the_seed_deadlock_with_its_sleep_is_reported_not_hung(tmp_path: Path) -> None:
    """With the sleep it deadlocks: the thread that closes the cycle gets
    DeadlockError, dies holding B (explicit acquire, no with), and the others wait
    for ever for locks whose owner ended: reported as stuck, and the doctor exits."""
    code, err = doctor(tmp_path, SEED, "0.2")
    assert code == 1, err
    assert "conveyor._errors.DeadlockError: deadlock: thread Thread-" in err  # its traceback
    assert "inversion: lock order inversion: " in err
    assert "deadlock: deadlock: thread Thread-" in err
    assert "stuck: every thread left waits for a lock that can never be let go:" in err
    assert "held by a thread that ended without letting it go" in err
    assert 'script.py", line ' in err  # the stuck threads' stacks


@pytest.mark.parametrize("args", [(), ("0.05",)])
def test_the_rlock_fix_comes_out_clean(tmp_path: Path, args: tuple[str, ...]) -> None:
    code, err = doctor(tmp_path, SEED_RLOCK, *args)
    assert code == 0, err
    assert err.strip().endswith("script.py: no lock problem found.")


def test_a_wait_while_holding_a_lock(tmp_path: Path) -> None:
    source = textwrap.dedent(
        """\
        import threading

        lock = threading.Lock()
        cond = threading.Condition()
        ready = []

        def waiter():
            with lock, cond:
                cond.wait_for(lambda: ready)

        t = threading.Thread(target=waiter)
        t.start()
        with cond:
            ready.append(1)
            cond.notify()
        t.join()
        """
    )
    code, err = doctor(tmp_path, source)
    assert code == 1, err
    assert "1. wait while holding: condition wait while holding a lock: thread " in err
    assert "while holding lock (made at " in err


def test_the_script_s_exit_status_and_arguments_pass_through(tmp_path: Path) -> None:
    source = "import sys\nprint(sys.argv[1:], file=sys.stderr)\nsys.exit(int(sys.argv[1]))\n"
    code, err = doctor(tmp_path, source, "3", "--flag")
    assert code == 3
    assert "['3', '--flag']" in err
    assert "no lock problem found" in err


def test_a_script_that_raises(tmp_path: Path) -> None:
    code, err = doctor(tmp_path, "raise ValueError('boom')\n")
    assert code == 1
    assert "ValueError: boom" in err


def test_timeout_reports_a_thread_that_never_ends(tmp_path: Path) -> None:
    source = "import threading\nthreading.Thread(target=threading.Event().wait).start()\n"
    code, err = doctor(tmp_path, source, options=("--timeout", "0.5"))
    assert code == 1, err
    assert "stuck: still running at the timeout:" in err
    assert "waits for event created at " in err


def test_locks_of_the_standard_library_are_left_alone(tmp_path: Path) -> None:
    source = textwrap.dedent(
        """\
        import queue, threading
        q = queue.Queue()
        mine = threading.Lock()
        print(type(q.mutex).__module__, type(mine).__module__)
        """
    )
    script = tmp_path / "script.py"
    script.write_text(source)
    proc = subprocess.run(
        [sys.executable, "-m", "conveyor", "doctor", str(script)],
        capture_output=True,
        encoding="utf-8",
        timeout=HANG_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["_thread", "conveyor.sync._locks"]


def test_a_missing_script_is_a_usage_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "conveyor", "doctor", str(tmp_path / "nope.py")],
        capture_output=True,
        encoding="utf-8",
        timeout=HANG_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 2
    assert "no such file" in proc.stderr


def test_a_module_with_dash_m(tmp_path: Path) -> None:
    (tmp_path / "seedmod.py").write_text(SEED_SERIAL, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "conveyor", "doctor", "-m", "seedmod"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        encoding="utf-8",
        timeout=HANG_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert "seedmod: 1 problem found." in proc.stderr
    assert "inversion: lock order inversion: mutexA (made at " in proc.stderr
