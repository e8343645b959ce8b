"""conveyor.shared: atomic across threads and processes, crash-proof, bounded, leak-free.

Concurrency tests wait for state (a shared counter a child sets), never for time.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import multiprocessing
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest

import conveyor as cv
from conveyor import _shared
from conveyor.shared import CapacityError, Counter, Dict

TIMEOUT = 30.0  # only reached if something hangs


def wait_until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)


def spawn() -> Any:
    return multiprocessing.get_context("spawn")


def join(proc: Any) -> None:
    proc.join(TIMEOUT)
    assert proc.exitcode is not None, "child did not finish"


# -- Counter ---------------------------------------------------------------------------


def test_counter_basics() -> None:
    c = Counter(10)
    assert c.value == 10
    assert c.add() == 11
    assert c.add(-5) == 6
    c.value = 100
    assert c.value == 100
    assert c.update(lambda v: v * 2) == 200
    assert repr(c) == "<shared.Counter 200>"
    f = Counter(0.5)
    assert f.add(1) == 1.5
    assert f.add(0.25) == 1.75
    assert isinstance(f.value, float)


def test_counter_bad_input() -> None:
    with pytest.raises(TypeError, match=r"int or a float.*shared\.Dict"):
        Counter("0")  # type: ignore[call-overload]
    c = Counter(0)
    with pytest.raises(TypeError, match=r"Counter\(0\.0\)"):
        c.add(0.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="takes ints"):
        c.value = "x"  # type: ignore[assignment]
    c.value = 2**63 - 1
    with pytest.raises(OverflowError, match=r"64-bit int.*unchanged"):
        c.add(1)
    assert c.value == 2**63 - 1
    with pytest.raises(TypeError, match="takes ints"):
        c.update(lambda v: None)  # type: ignore[arg-type,return-value]
    assert c.value == 2**63 - 1


def test_counter_threads_lose_nothing() -> None:
    c = Counter(0)
    per_thread = 5000

    def work() -> None:
        for _ in range(per_thread):
            c.add(1)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert c.value == 8 * per_thread


def _add_many(c: Counter[int], d: Dict[str, int], n: int) -> None:
    for _ in range(n):
        c.add(1)
        d.update("num", lambda v: v - 1)


def test_processes_lose_nothing() -> None:
    c = Counter(0)
    d = Dict({"num": 0})
    procs = [spawn().Process(target=_add_many, args=(c, d, 2000)) for _ in range(4)]
    for p in procs:
        p.start()
    _add_many(c, d, 2000)  # the parent contends too
    for p in procs:
        join(p)
        assert p.exitcode == 0
    assert c.value == 5 * 2000
    assert d["num"] == -5 * 2000


# -- Dict ------------------------------------------------------------------------------


def test_dict_basics() -> None:
    d: Dict[Any, Any] = Dict({"num": 10})
    assert d["num"] == 10
    d["list"] = [1, 2, 3]
    d[("a", 1)] = {"x": None}
    assert len(d) == 3
    assert "list" in d
    assert "nope" not in d
    assert d.get("nope") is None
    assert d.get("nope", 5) == 5
    assert d.update("num", lambda v: v - 1) == 9
    assert d.update("new", lambda v: v + 1, default=0) == 1
    assert sorted(map(str, d.keys())) == sorted(map(str, ["num", "list", ("a", 1), "new"]))
    assert d.to_dict() == {"num": 9, "list": [1, 2, 3], ("a", 1): {"x": None}, "new": 1}
    assert dict(d.items()) == d.to_dict()
    assert sorted(map(str, d.values())) == sorted(map(str, d.to_dict().values()))
    assert set(d) == set(d.keys())
    del d["list"]
    assert "list" not in d
    assert d.pop("new") == 1
    assert d.pop("new", "gone") == "gone"
    with pytest.raises(KeyError):
        d.pop("new")
    with pytest.raises(KeyError):
        del d["list"]
    with pytest.raises(KeyError):
        d["list"]
    assert repr(d) == "<shared.Dict {'num': 9, ('a', 1): {'x': None}}>"
    d.clear()
    assert len(d) == 0
    assert d.to_dict() == {}
    d["again"] = 1
    assert d.to_dict() == {"again": 1}


def test_dict_keys_compare_by_value() -> None:
    d: Dict[Any, Any] = Dict()
    d[1] = "one"
    assert d[1.0] == "one"
    assert d[True] == "one"
    d[-0.0] = "zero"
    assert d[0] == "zero"
    big = 2**100
    d[big] = "big"
    d[1.5] = "float"
    d[b"raw"] = "bytes"
    d[None] = "none"
    d["\udcff surrogate"] = "str"
    a, b = "a" * 10, "".join(["a"] * 10)  # equal strings, distinct objects
    d[(a, a)] = "tuple"
    assert d[(b, b)] == "tuple"
    assert d[(a, b)] == "tuple"
    assert set(d.keys()) == {1, 0, big, 1.5, b"raw", None, "\udcff surrogate", (a, a)}
    with pytest.raises(TypeError, match=r"key must be str, bytes, int.*got list"):
        d[[1]] = 1  # type: ignore[index]
    with pytest.raises(TypeError, match=r"key must be.*got frozenset"):
        frozenset() in d  # noqa: B015


def test_dict_update_rules() -> None:
    d: Dict[str, int] = Dict({"num": 1})
    with pytest.raises(KeyError, match="missing"):
        d.update("missing", lambda v: v + 1)
    with pytest.raises(TypeError, match=r"with d\.locked\(\)"):
        d.update({"num": 2})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be callable"):
        d.update("num", 3)  # type: ignore[arg-type]

    def boom(v: int) -> int:
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        d.update("num", boom)
    assert d.to_dict() == {"num": 1}
    # fn may use the dict itself: this thread holds its lock already
    assert d.update("num", lambda v: v + d.get("other", 10)) == 11  # type: ignore[operator]
    with d.locked():
        d["a"] = d["num"] + 1
        d.update("a", lambda v: v * 2)
        assert len(d) == 2
    assert d.to_dict() == {"num": 11, "a": 24}


def test_locked_excludes_other_threads() -> None:
    d: Dict[str, int] = Dict({"n": 0})
    entered = threading.Event()
    done: list[int] = []

    def other() -> None:
        entered.set()
        done.append(d.update("n", lambda v: v + 1))

    with d.locked():
        t = threading.Thread(target=other)
        t.start()
        entered.wait(TIMEOUT)
        t.join(0.05)  # bounded look: the other thread must still be waiting
        assert t.is_alive()
        d["n"] = 100
    t.join(TIMEOUT)
    assert done == [101]


def test_dict_threads_lose_nothing() -> None:
    d: Dict[str, int] = Dict()

    def work(i: int) -> None:
        for _ in range(1000):
            d.update("total", lambda v: v + 1, default=0)
            d.update(f"own-{i}", lambda v: v + 1, default=0)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert d["total"] == 8000
    assert all(d[f"own-{i}"] == 1000 for i in range(8))


# -- capacity ----------------------------------------------------------------------


def test_capacity_errors_change_nothing() -> None:
    d: Dict[str, Any] = Dict(capacity=4096)
    d["a"] = 1
    with pytest.raises(CapacityError, match=r"capacity of 4096 bytes.*capacity="):
        d["big"] = b"x" * 5000
    with pytest.raises(CapacityError, match=r"capacity="):
        d.update("a", lambda v: b"x" * 5000)
    i = 0
    with pytest.raises(CapacityError, match=r"is full.*larger capacity="):
        while True:
            d[f"k{i}"] = b"y" * 100
            i += 1
    assert i > 10
    assert len(d) == i + 1
    assert d["a"] == 1
    assert all(d[f"k{j}"] == b"y" * 100 for j in range(i))
    assert f"k{i}" not in d
    del d["k0"]
    d[f"k{i}"] = b"y" * 100  # room again
    assert len(d) == i + 1


def test_many_small_keys_fill_it_up() -> None:
    d: Dict[int, None] = Dict(capacity=256)  # 24 bytes a key: 10 keys
    with pytest.raises(CapacityError, match=r"its 10 other keys take 240 of its 256 bytes"):
        for i in range(100):
            d[i] = None
    assert sorted(d.keys()) == list(range(10))


def test_bad_capacity() -> None:
    with pytest.raises(TypeError, match="capacity must be an int"):
        Dict(capacity="1M")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="capacity must be between 256"):
        Dict(capacity=10)


def test_compaction_keeps_everything() -> None:
    d: Dict[int, Any] = Dict(capacity=8192)
    expect: dict[int, Any] = {}
    for step in range(20000):
        k = step % 37
        if step % 7 == 0 and k in expect:
            del d[k]
            del expect[k]
        else:
            v = (step, "x" * (step % 60))
            d[k] = v
            expect[k] = v
    assert d.to_dict() == expect
    assert len(d) == len(expect)


# -- handles ----------------------------------------------------------------------------


def _stage_closure(d: Dict[str, int], c: Counter[int]) -> Any:
    def stage(x: int) -> int:
        d.update("sum", lambda v: v + x, default=0)
        return c.add(1)

    return stage


def _partial_stage(c: Counter[int], x: int) -> int:
    return c.add(x)


def _stage_class(shared: Dict[str, int]) -> type:
    class Stage:
        d = shared  # a class attribute: sent with the class

        def setup(self) -> None:
            self.mine = self.d  # an instance attribute, in the worker

        def process(self, x: int) -> int:
            self.mine.update("n", lambda v: v + 1, default=0)
            return os.getpid()

    return Stage


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_pipeline_stages_share_state(kind: str) -> None:
    d: Dict[str, int] = Dict()
    c = Counter(0)
    outs = list(cv.Pipeline().source(range(300)).map(_stage_closure(d, c), workers=3, kind=kind))
    assert sorted(outs) == list(range(1, 301))
    assert d["sum"] == sum(range(300))
    total = sum(
        cv.Pipeline()
        .source(range(100))
        .map(functools.partial(_partial_stage, c), workers=2, kind=kind)
    )
    assert c.value == 300 + sum(range(100))
    assert total > 0
    pids = set(cv.Pipeline().source(range(100)).map(_stage_class(d), workers=2, kind=kind))
    assert d["n"] == 100
    assert (os.getpid() in pids) == (kind == "thread")


def test_handles_in_one_process_share_a_mapping() -> None:
    d: Dict[str, int] = Dict({"n": 1})
    copy = pickle.loads(pickle.dumps(d))
    assert copy._segment is d._segment
    with d.locked():
        copy["n"] = 2  # the same lock, held by this thread: no self-deadlock
    assert d["n"] == 2


def _make_and_send(conn: Any) -> None:
    conn.send_bytes(pickle.dumps(Dict({"n": 1})))
    conn.recv()


def test_handle_from_a_process_that_is_gone() -> None:
    parent, child = multiprocessing.Pipe()
    p = spawn().Process(target=_make_and_send, args=(child,))
    p.start()
    data = parent.recv_bytes()
    parent.send(None)
    join(p)
    with pytest.raises(RuntimeError, match=r"shared Dict is gone: process \d+.*Keep the object"):
        pickle.loads(data)


def test_no_fd_leak() -> None:
    gc.collect()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(200):
        d = Dict({"a": 1}, capacity=1024)
        Counter(1).add()
        pickle.loads(pickle.dumps(d))
    del d
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) <= before + 2


# -- crashes -----------------------------------------------------------------------------


def _value(n: int) -> tuple[int, str, str]:
    text = "v" * (n % 300)
    return n, text, hashlib.sha1(f"{n}{text}".encode()).hexdigest()


def _check_value(v: tuple[int, str, str]) -> int:
    n, text, digest = v
    assert text == "v" * (n % 300)
    assert digest == hashlib.sha1(f"{n}{text}".encode()).hexdigest()
    return n


def _hold_lock(d: Dict[str, Any], c: Counter[int], flag: Counter[int], where: str) -> None:
    """Take the lock and stop at ``where``, after telling the parent through ``flag``."""
    if where == "counter":
        c.update(lambda v: (flag.add(1), time.sleep(3600), v)[2])
    elif where == "fn":
        d.update("v", lambda v: (flag.add(1), time.sleep(3600), v)[2])
    else:
        real = _shared._REC

        class Stop:
            def pack_into(self, *args: Any) -> None:
                real.pack_into(*args)  # the record's header is written, its body is not
                flag.add(1)
                time.sleep(3600)

            def unpack_from(self, *args: Any) -> Any:
                return real.unpack_from(*args)

        _shared._REC = Stop()  # type: ignore[assignment]
        d["v"] = _value(10_000)


@pytest.mark.parametrize("where", ["fn", "record", "counter"])
def test_kill_while_holding_the_lock(where: str) -> None:
    d: Dict[str, Any] = Dict({"v": _value(1)})
    c = Counter(7)
    flag = Counter(0)
    p = spawn().Process(target=_hold_lock, args=(d, c, flag, where))
    p.start()
    wait_until(lambda: flag.value == 1, "the child to hold the lock")
    os.kill(p.pid, signal.SIGKILL)
    join(p)
    assert _check_value(d["v"]) == 1  # the old value, whole
    assert len(d) == 1
    assert c.value == 7
    assert c.add() == 8
    d.update("v", lambda v: _value(v[0] + 1))
    assert _check_value(d["v"]) == 2
    repaired = (d if where != "counter" else c)._segment.ctl[_shared._REPAIRS]
    assert repaired == 1


def test_cut_short_commit_is_recounted() -> None:
    # as a KeyboardInterrupt between the commit and the counts would leave it
    d: Dict[int, int] = Dict({1: 1, 2: 2})
    ctl = d._segment.ctl
    ctl[_shared._D_OP] = 1
    ctl[_shared._D_COUNT + ctl[_shared._D_ACTIVE]] = 5
    assert len(d) == 2
    assert ctl[_shared._D_OP] == 0


def _hammer(d: Dict[str, Any], c: Counter[int], progress: Counter[int]) -> None:
    while True:
        d.update("v", lambda v: _value(v[0] + 1))
        d[f"k{progress.value % 50}"] = _value(progress.value)
        c.add(1)
        progress.add(1)


def test_kill_at_random_moments() -> None:
    d: Dict[str, Any] = Dict({"v": _value(0)}, capacity=32768)  # compactions happen
    c = Counter(0)
    for round_ in range(6):
        progress = Counter(0)
        procs = [spawn().Process(target=_hammer, args=(d, c, progress)) for _ in range(2)]
        for p in procs:
            p.start()
        target = 200 + 97 * round_
        wait_until(lambda: progress.value >= target, "the children to make progress")  # noqa: B023
        for p in procs:
            os.kill(p.pid, signal.SIGKILL)
        for p in procs:
            join(p)
        n = _check_value(d["v"])
        for key, value in d.items():
            if key != "v":
                _check_value(value)
        # each child did update v, then other work: v counts updates, c lags by at most 2
        assert n - 2 <= c.value <= n
        c.value = n
    assert len(d) <= 51


# -- cleanup ------------------------------------------------------------------------------

SCRIPT = """
import os, sys, conveyor as cv
d = cv.shared.Dict({"n": 0})
c = cv.shared.Counter(0)
def work(x):
    d.update("n", lambda v: v + 1)
    return c.add(1)
assert len(list(cv.Pipeline().source(range(50)).map(work, workers=2, kind="process"))) == 50
print(d["n"], c.value, flush=True)
if sys.argv[1] == "crash":
    os.kill(os.getpid(), 9)
"""


def _shm_names() -> set[str]:
    # multiprocessing's semaphores and the process channel's big-item files
    # (conveyor-<pid>-<hex>) belong to other programs and tests running at the same time
    return {
        e
        for e in os.listdir("/dev/shm")
        if not e.startswith("sem.mp-") and not re.fullmatch(r"conveyor-\d+-[0-9a-f]+", e)
    }


@pytest.mark.parametrize("end", ["exit", "crash"])
def test_nothing_left_in_dev_shm(tmp_path: Any, end: str) -> None:
    script = tmp_path / "shared_run.py"
    script.write_text(textwrap.dedent(SCRIPT))
    before = _shm_names()
    out = subprocess.run(
        [sys.executable, str(script), end], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert out.stdout.split() == ["50", "50"], out.stderr
    assert out.returncode == (0 if end == "exit" else -9)
    assert _shm_names() - before == set()
