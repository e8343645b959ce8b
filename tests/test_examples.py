"""Run every script of examples/seed/ and check the key facts of its output.

Each script runs in its own interpreter (fast mode: the notes' sleeps scaled down),
from the repository root, with warnings as errors. The timeout only catches hangs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "seed"
HANG_TIMEOUT = 60.0
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def run_example(script: str) -> list[str]:
    """Run one example in fast mode; return its stdout lines (colour codes removed)."""
    env = dict(os.environ, CONVEYOR_EXAMPLES_FAST="1", PYTHONIOENCODING="utf-8")
    proc = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / script)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        encoding="utf-8",
        timeout=HANG_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, f"{script} exited with {proc.returncode}:\n{proc.stderr}"
    assert proc.stderr == "", f"{script} wrote to stderr:\n{proc.stderr}"
    return ANSI.sub("", proc.stdout).splitlines()


def pid_is_gone(pid: int, timeout: float = 10.0) -> bool:
    """Whether process ``pid`` has ended (a zombie counts as ended) within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except (ProcessLookupError, FileNotFoundError):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def check_manager_counter(out: list[str]) -> None:
    assert out[0] == "before: {'num': 10}"
    assert "10 changes computed in worker processes, none in the main one: True" in out
    assert "after: {'num': 0}" in out
    # the notes' version: ten processes update one shared dict, no update lost
    assert "shared, before: {'num': 10}" in out
    assert "10 updates made in worker processes, none in the main one: True" in out
    assert out[-1] == "shared, after: {'num': 0}"


def check_queue_basics(out: list[str]) -> None:
    assert out[0] == "after three puts: <ProcessChannel 3/3> full: True"
    assert out[1:4] == ["first", "{'second': None}", "三"]
    assert out[4] == "after three gets: <ProcessChannel 0/3> empty: True"
    assert (
        "from child process (pid differs from ours: True): ['first', {'second': None}, '三']" in out
    )
    assert out[-1] == "child exit code: 0"


def check_queue_block_timeout(out: list[str]) -> None:
    def line(call: str) -> str:
        [found] = [x for x in out if x.startswith(call)]
        return found

    def waited(text: str) -> float:
        m = re.search(r"\[after ([0-9.]+)s\]", text)
        assert m, text
        return float(m.group(1))

    assert "raised queue.Full" in line("q.put('fourth', block=False)")
    full_timed = line("q.put('fourth', block=True, timeout=0.3)")
    assert "raised queue.Full" in full_timed
    assert waited(full_timed) >= 0.25
    assert [x.split()[-1] for x in out if x.startswith("q.get(block=False) ")][:3] == [
        "'first'",
        "'second'",
        "'third'",
    ]
    assert sum("raised queue.Empty" in x for x in out) == 3
    empty_timed = line("q.get(block=True, timeout=0.2)")
    assert "raised queue.Empty" in empty_timed
    assert waited(empty_timed) >= 0.15
    assert "[after" not in line("q.get(block=False, timeout=60)")  # no waiting
    assert "3 item(s) of this call were put" in line("q.put_many(")
    assert line("q.get_many(10)").endswith("-> ['a', 'b', 'c']")
    assert "raised conveyor.Closed" in line("q.put('after close')")
    assert line("q.get()  # what is left").endswith("-> 'last'")
    assert "raised conveyor.Closed" in line("q.get()  # closed and drained")
    assert "raised conveyor.Closed" in out[-1]
    assert sum("raised conveyor.Closed" in x for x in out) == 3


def check_producer_consumer(out: list[str]) -> None:
    foods = {"egon": "包子", "刘清政": "泔水", "杨军": "米饭"}
    made = [re.fullmatch(r"生产者者===》(\S+) 生产了 (\S+)", x) for x in out]
    eaten = [re.fullmatch(r"消费者===》(\S+) 吃了 (\S+)", x) for x in out]
    produced = [m.groups() for m in made if m]
    consumed = [m.groups() for m in eaten if m]
    every = {f"{food}{i}" for food in foods.values() for i in range(5)}
    assert sorted(item for _, item in produced) == sorted(every)
    assert all(item.startswith(foods[who]) for who, item in produced)
    assert Counter(item for _, item in consumed) == Counter(every)  # each eaten exactly once
    assert {who for who, _ in consumed} <= {"alex", "梁书东"}
    assert "run 'canteen' ended by itself: finished" in out
    assert "produced: 15, eaten: 15" in out
    counts = [re.fullmatch(r"(alex|梁书东) \(consumer-[12]\) ate (\d+) item\(s\)", x) for x in out]
    per_consumer = {m.group(1): int(m.group(2)) for m in counts if m}
    assert set(per_consumer) == {"alex", "梁书东"}
    assert sum(per_consumer.values()) == 15
    assert Counter(who for who, _ in consumed) == Counter(
        {who: n for who, n in per_consumer.items() if n}
    )


def check_thread_function(out: list[str]) -> None:
    where = "  (in worker task-1, a thread, not the MainThread)"
    assert sorted(out[:3]) == sorted(["egon is running", where, "主线程"])
    assert out.index("egon is running") < out.index(where)
    assert out[3:] == ["run finished"]


def check_thread_class(out: list[str]) -> None:
    worker_lines = [x for x in out if x.startswith("MyThread-1")]
    assert worker_lines == [
        "MyThread-1 setup (once per worker)",
        "MyThread-1 is running (egon)",
        "MyThread-1 is running (alex)",
        "MyThread-1 teardown after 2 item(s)",
    ]
    assert "主线程" in out
    assert out[-1] == "run finished"


def check_pid(out: list[str]) -> None:
    main_pid = int(out[0].removeprefix("主线程 "))
    running = dict(
        (m.group(2), int(m.group(1)))
        for m in (re.fullmatch(r"(\d+) is running  \((\w+) worker\)", x) for x in out)
        if m
    )
    assert running["thread"] == main_pid
    assert running["process"] != main_pid
    assert "thread worker: same pid as the main thread: True" in out
    assert "process worker: same pid as the main thread: False" in out
    assert "  thread worker task-1: pid is main's: True" in out
    assert "  process worker task-1: pid is main's: False" in out


def check_shared_memory(out: list[str]) -> None:
    assert out == [
        "主线程 0",
        "the process worker set its x to 0; the main program still has x = 1000",
    ]


def check_thread_attributes(out: list[str]) -> None:
    names = ["线程-1", "线程-2", "线程-3"]
    assert sorted(x for x in out if x.endswith(" is running")) == [f"{n} is running" for n in names]
    assert "is_alive(线程-1): True" in out
    assert "active workers: 3" in out
    start = out.index("enumerate:")
    assert out[start + 1 : start + 4] == [
        f"  {n}: kind=thread alive=True state=busy in main pid=True" for n in names
    ]
    assert "主线程 MainThread" in out
    assert "current_worker() in the main thread: RuntimeError (not a worker)" in out
    assert out[-2:] == [
        "after wait(): is_alive(线程-1): False",
        "items done: [('线程-1', 1), ('线程-2', 1), ('线程-3', 1)]",
    ]


def check_daemon_thread(out: list[str]) -> None:
    [pid_line] = [x for x in out if x.startswith("background worker process pid=")]
    assert out == [
        "heartbeat 1",
        "heartbeat 2",
        "heartbeat 3",
        "cancel(): run 'heartbeat' was cancelled",
        pid_line,
        "第一个线程-1 is running",
        "主线程",
        "at exit: background run 'daemon-process' is cancelled",
        "  worker quiet_task-1 (process): alive=False abandoned=False",
        "at exit: background run 'daemon' is cancelled",
        "  worker 第一个线程-1 (thread): alive=True abandoned=True",
    ]
    # The background worker process did not outlive the script.
    assert pid_is_gone(int(pid_line.split("=")[1]))


def check_daemon_two_threads(out: list[str]) -> None:
    assert out[:4] == ["123", "456", "main-------", "end456"]  # the notes' output
    assert out[4:] == ["(foo is still running; conveyor cancels it at exit, end123 never comes)"]


def check_mutex(out: list[str]) -> None:
    assert out[0] == "主 0"
    assert out[1].startswith("with the lock: x = 0,")
    m = re.match(r"without the lock: x = (\d+),", out[2])
    assert m, out[2]
    assert int(m.group(1)) > 0  # lost updates
    assert out[3].startswith("without shared state: x = 0,")


def check_deadlock_rlock(out: list[str]) -> None:
    m = re.match(r"two locks, with the sleep: (\d+) deadlock\(s\) reported, none hung", out[0])
    assert m, out[0]
    assert int(m.group(1)) >= 1
    assert out[1].startswith("first report: deadlock: thread run-")
    assert "holds mutex" in out[1]
    assert "and waits for mutex" in out[1]
    assert out[2] == "two locks, without the sleep: 1 lock order inversion(s) found"
    assert out[3] in (
        "first finding: lock order inversion: mutexA then mutexB, mutexB then mutexA",
        "first finding: lock order inversion: mutexB then mutexA, mutexA then mutexB",
    )
    assert out[4] == "one RLock: 0 failure(s), 0 problem(s) found"


CHECKS: dict[str, Callable[[list[str]], None]] = {
    "01_manager_counter.py": check_manager_counter,
    "02_queue_basics.py": check_queue_basics,
    "03_queue_block_timeout.py": check_queue_block_timeout,
    "04_producer_consumer.py": check_producer_consumer,
    "05_thread_function.py": check_thread_function,
    "06_thread_class.py": check_thread_class,
    "07_pid.py": check_pid,
    "08_shared_memory.py": check_shared_memory,
    "09_thread_attributes.py": check_thread_attributes,
    "10_daemon_thread.py": check_daemon_thread,
    "11_daemon_two_threads.py": check_daemon_two_threads,
    "12_mutex.py": check_mutex,
    "13_deadlock_rlock.py": check_deadlock_rlock,
}


@pytest.mark.parametrize("script", sorted(CHECKS))
def test_example(script: str) -> None:
    CHECKS[script](run_example(script))


def test_every_example_is_checked() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(CHECKS)
