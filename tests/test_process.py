"""What only process workers can get wrong: pickling, dead workers, the environment
they start in, and the start method."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import conveyor as cv
from tests.helpers import mark, marks_named

JOIN = 60


def test_unpicklable_item_fails_that_item() -> None:
    items: list[Any] = [1, 2, threading.Lock(), 4]
    with pytest.raises(cv.StageError, match="cannot be pickled to go to a worker process") as info:
        list(cv.Pipeline().source(items).map(lambda x: x, kind="process", name="p"))
    assert "lock" in (info.value.item or "")
    assert info.value.stage == "p"


def test_unpicklable_result_fails_that_item() -> None:
    def make(x: int) -> Any:
        return threading.Lock() if x == 3 else x

    with pytest.raises(cv.StageError, match="result cannot be pickled") as info:
        list(cv.Pipeline().source(range(6)).map(make, kind="process"))
    assert info.value.item == "3"


class Unloadable:
    """Pickles fine, fails to unpickle on the other side."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_refuse, ())


def _refuse() -> None:
    raise RuntimeError("cannot rebuild me here")


def test_item_that_fails_to_unpickle_in_the_worker() -> None:
    with pytest.raises(cv.StageError, match="cannot rebuild me here"):
        list(cv.Pipeline().source([1, Unloadable(), 3]).map(lambda x: x, kind="process"))


def test_worker_exit_is_reported() -> None:
    def die(x: int) -> int:
        if x == 5:
            os._exit(7)
        return x

    with pytest.raises(cv.WorkerCrashed, match="exit code 7") as info:
        list(cv.Pipeline().source(range(20)).map(die, kind="process", name="d"))
    err = info.value
    assert err.stage == "d"
    assert err.worker == "d-1"
    assert err.exitcode == 7
    # the batch it held started at or before item 5 and contained it
    assert err.item is not None
    assert int(err.item) <= 5 < int(err.item) + err.held


def test_worker_killed_by_a_signal_is_reported() -> None:
    def die(x: int) -> int:
        if x == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return x

    with pytest.raises(cv.WorkerCrashed, match="SIGKILL"):
        list(cv.Pipeline().source(range(10)).map(die, kind="process", workers=2))


def test_large_items() -> None:
    blobs = [bytes([i]) * (8 << 20) for i in range(4)]
    out = list(cv.Pipeline().source(blobs).map(lambda b: b[:1] + b[-1:], kind="process", workers=2))
    assert out == [bytes([i, i]) for i in range(4)]


def test_environment_cwd_and_sys_path_follow_the_main_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "helper_mod_xyz.py").write_text("def triple(x):\n    return 3 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("CONVEYOR_TEST_VAR", "hello")
    monkeypatch.chdir(tmp_path)
    import helper_mod_xyz  # type: ignore[import-not-found]

    def probe(x: int) -> tuple[int, str | None, str]:
        return helper_mod_xyz.triple(x), os.environ.get("CONVEYOR_TEST_VAR"), os.getcwd()

    out = list(cv.Pipeline().source([1, 2]).map(probe, kind="process"))
    assert out == [(3, "hello", str(tmp_path)), (6, "hello", str(tmp_path))]


def test_workers_do_not_inherit_locks_held_by_other_threads() -> None:
    # With fork, a lock held by another thread at fork time stays locked forever in
    # the child. Workers come from the zygote, so the engine's threads don't matter.
    logging_lock = logging._lock  # type: ignore[attr-defined]
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with logging_lock:
            held.set()
            release.wait(JOIN)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(JOIN)
    try:

        def log(x: int) -> int:
            logging.getLogger("conveyor-test").warning("item %s", x)  # takes logging._lock
            return x

        assert list(cv.Pipeline().source(range(3)).map(log, kind="process", workers=2)) == [0, 1, 2]
    finally:
        release.set()
        t.join(JOIN)


def run_script(
    code: str, tmp_path: Path, timeout: float = JOIN
) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
    )


def test_script_without_main_guard(tmp_path: Path) -> None:
    # spawn and forkserver re-import __main__ in every worker; conveyor's workers don't
    proc = run_script(
        """
        import conveyor as cv
        print("script body ran", flush=True)
        def square(x):
            return x * x
        out = list(cv.Pipeline().source(range(5)).map(square, kind="process", workers=2))
        print(out)
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["script body ran", "[0, 1, 4, 9, 16]"]


def test_worker_output_reaches_the_terminal(tmp_path: Path) -> None:
    proc = run_script(
        """
        import conveyor as cv
        def shout(x):
            print(f"worker says {x}")
            return x
        list(cv.Pipeline().source(range(3)).map(shout, kind="process"))
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.splitlines()) == [f"worker says {i}" for i in range(3)]


def test_no_shared_memory_left_behind() -> None:
    before = set(os.listdir("/dev/shm"))
    for _ in range(3):
        list(cv.Pipeline().source(range(1000)).map(lambda x: x, kind="process", workers=2))
    assert set(os.listdir("/dev/shm")) - before == set()


def test_items_and_producers_defined_in_the_script(tmp_path: Path) -> None:
    # the worker does not import the user's script: its classes and functions travel by value
    proc = run_script(
        """
        import dataclasses, functools
        import conveyor as cv

        @dataclasses.dataclass
        class Dish:
            name: str
            n: int

        def produce(name, n):
            for i in range(n):
                yield Dish(name, i)

        def cook(d):
            return Dish(d.name.upper(), d.n * 10)

        p = (
            cv.Pipeline()
            .source(functools.partial(produce, "rice", 2), functools.partial(produce, "tea", 2),
                    kind="process")
            .map(cook, kind="process", workers=2)
        )
        out = sorted(list(p), key=lambda d: (d.name, d.n))
        assert all(type(d) is Dish for d in out), [type(d) for d in out]
        print([(d.name, d.n) for d in out])
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[('RICE', 0), ('RICE', 10), ('TEA', 0), ('TEA', 10)]"


def test_each_producer_gets_its_own_worker(kind: str, marks: Path) -> None:
    # every producer waits until all three have started: they can only finish if
    # they run at the same time, each in its own worker
    d = str(marks)

    def producer(i: int):  # type: ignore[no-untyped-def]
        def produce():  # type: ignore[no-untyped-def]
            mark(d, f"started-{i}")
            deadline = time.monotonic() + 30
            while len(marks_named(d, "started-")) < 3:
                if time.monotonic() > deadline:
                    raise TimeoutError("producers were not run side by side")
                time.sleep(0.002)
            yield i

        return produce

    p = cv.Pipeline().source(producer(0), producer(1), producer(2), kind=kind)
    assert sorted(p) == [0, 1, 2]
