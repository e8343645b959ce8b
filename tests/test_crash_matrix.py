"""The crash matrix: for the stage's function, an item and a result, a failure while
pickling, while unpickling on the other side, and while running, each as an
exception, an ``os._exit`` and a segfault, on every worker kind where it applies.

Whatever happens, the run ends, and every item is in the output or in
``run.failures`` (or, for a function that cannot even start, the run fails with an
error that says so).
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

import pytest

import conveyor as cv

HOWS = ["exception", "exit", "segfault"]
ITEMS = list(range(8))
BAD = 5


def blow(how: str) -> None:
    if how == "exception":
        raise RuntimeError("boom")
    if how == "exit":
        os._exit(17)
    ctypes.string_at(0)


class Bomb:
    """Blows up when pickled (``when="pickle"``) or when unpickled (``when="unpickle"``)."""

    def __init__(self, when: str, how: str, value: Any = None) -> None:
        self.when, self.how, self.value = when, how, value

    def __reduce__(self) -> tuple[Any, ...]:
        if self.when == "pickle":
            blow(self.how)
        return (_unpickle_bomb, (self.how,))

    def __call__(self, x: Any) -> Any:  # a bomb can stand in for a stage function
        return x


def _unpickle_bomb(how: str) -> Any:
    blow(how)


def expect_item_failure(run: cv.Run[Any], how: str) -> cv.Failure:
    out = list(run)
    assert out == [x for x in ITEMS if x != BAD]
    (f,) = run.failures
    if how == "exception":
        assert not isinstance(f.error, cv.WorkerCrashed)
    else:
        assert isinstance(f.error, cv.WorkerCrashed)
        assert f.error.exitcode == (17 if how == "exit" else -11)
    return f


# -- the item ------------------------------------------------------------------------


def test_item_fails_to_pickle_here() -> None:
    # only an exception can happen here (anything else would kill this process)
    items: list[Any] = [Bomb("pickle", "exception") if x == BAD else x for x in ITEMS]
    run = cv.Pipeline().source(items).map(lambda x: x, kind="process", on_error="skip").run()
    f = expect_item_failure(run, "exception")
    assert f.item is items[BAD]
    assert "cannot be pickled" in str(f.error)


@pytest.mark.parametrize("how", HOWS)
def test_item_fails_to_unpickle_in_the_worker(how: str) -> None:
    items: list[Any] = [Bomb("unpickle", how) if x == BAD else x for x in ITEMS]
    run = cv.Pipeline().source(items).map(lambda x: x, kind="process", on_error="skip").run()
    f = expect_item_failure(run, how)
    assert f.item is items[BAD]


@pytest.mark.parametrize("kind", ["thread", "process"])
@pytest.mark.parametrize("how", HOWS)
def test_item_fails_while_running(kind: str, how: str) -> None:
    if kind == "thread" and how != "exception":
        pytest.skip("os._exit or a segfault in a thread takes the whole process down")

    def work(x: int) -> int:
        if x == BAD:
            blow(how)
        return x

    run = cv.Pipeline().source(ITEMS).map(work, kind=kind, on_error="skip").run()
    expect_item_failure(run, how)


# -- the result --------------------------------------------------------------------------


@pytest.mark.parametrize("how", HOWS)
def test_result_fails_to_pickle_in_the_worker(how: str) -> None:
    def work(x: int) -> Any:
        return Bomb("pickle", how) if x == BAD else x

    run = cv.Pipeline().source(ITEMS).map(work, kind="process", on_error="skip").run()
    f = expect_item_failure(run, how)
    assert f.item == BAD


def test_result_fails_to_unpickle_here() -> None:
    def work(x: int) -> Any:
        return Bomb("unpickle", "exception") if x == BAD else x

    run = cv.Pipeline().source(ITEMS).map(work, kind="process", on_error="skip").run()
    f = expect_item_failure(run, "exception")
    assert "cannot be unpickled in the main process" in str(f.error)


# -- the function ----------------------------------------------------------------------


def test_function_fails_to_pickle_here() -> None:
    with pytest.raises(TypeError, match="cannot be sent to a worker process"):
        cv.Pipeline().source(ITEMS).map(Bomb("pickle", "exception"), kind="process")


@pytest.mark.parametrize("how", HOWS)
def test_function_fails_to_unpickle_in_the_worker(how: str) -> None:
    p = cv.Pipeline().source(ITEMS).map(Bomb("unpickle", how), kind="process", on_error="skip")
    expected = cv.StageError if how == "exception" else cv.WorkerCrashed
    with pytest.raises(expected) as info:
        list(p)
    if how != "exception":
        assert "while starting" in str(info.value)
