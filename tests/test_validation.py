"""Invalid settings fail before anything starts, with a message that says what to change."""

from __future__ import annotations

import functools
import threading
from typing import Any

import pytest

import conveyor as cv


def ident(x: Any) -> Any:
    return x


@pytest.fixture
def src() -> cv.Pipeline[int]:
    return cv.Pipeline().source(range(3))


@pytest.mark.parametrize("op", ["map", "filter", "flat_map", "sink"])
def test_workers_must_be_positive(src: cv.Pipeline[int], op: str) -> None:
    with pytest.raises(ValueError, match=r"workers must be >= 1, got 0 \(stage 'ident'\)"):
        getattr(src, op)(ident, workers=0)
    with pytest.raises(TypeError, match="workers must be an int"):
        getattr(src, op)(ident, workers=2.5)


def test_maxsize_must_be_positive(src: cv.Pipeline[int]) -> None:
    with pytest.raises(ValueError, match=r"maxsize must be >= 1.*got -1"):
        src.map(ident, maxsize=-1)
    with pytest.raises(ValueError, match="maxsize must be >= 1"):
        src.map(ident, maxsize=0)
    with pytest.raises(TypeError, match="maxsize must be None"):
        src.map(ident, maxsize="10")  # type: ignore[arg-type]


def test_kind_must_be_known(src: cv.Pipeline[int]) -> None:
    with pytest.raises(ValueError, match="kind must be one of 'auto', 'thread', 'process'"):
        src.map(ident, kind="fiber")


def test_stage_must_be_callable(src: cv.Pipeline[int]) -> None:
    with pytest.raises(TypeError, match="not callable"):
        src.map(42)  # type: ignore[call-overload]


def test_generator_function_where_a_function_is_needed(src: cv.Pipeline[int]) -> None:
    def gen(x: int):  # type: ignore[no-untyped-def]
        yield x

    with pytest.raises(TypeError, match=r"generator function; use \.flat_map"):
        src.map(gen)
    with pytest.raises(TypeError, match="generator function"):
        src.filter(gen)
    src.flat_map(gen)  # fine there


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_async_function_needs_the_asyncio_kind(src: cv.Pipeline[int], kind: str) -> None:
    async def fetch(x: int) -> int:
        return x

    with pytest.raises(TypeError, match=r"async function .* use kind='asyncio'"):
        src.map(fetch, kind=kind)
    with pytest.raises(TypeError, match="async function"):
        src.map(functools.partial(fetch), kind=kind)


def test_asyncio_kind_needs_an_async_function(src: cv.Pipeline[int]) -> None:
    with pytest.raises(TypeError, match=r"runs async functions .* use kind='thread'"):
        src.map(lambda x: x, kind="asyncio")


def test_async_generator_is_refused(src: cv.Pipeline[int]) -> None:
    async def agen(x: int) -> Any:
        yield x

    with pytest.raises(TypeError, match="async generator"):
        src.map(agen, kind="asyncio")


def test_stage_class_needs_process(src: cv.Pipeline[int]) -> None:
    class NoProcess:
        def setup(self) -> None:
            pass

    with pytest.raises(TypeError, match=r"no process\(self, item\) method"):
        src.map(NoProcess)  # type: ignore[arg-type]


def test_stage_class_needs_a_no_argument_constructor(src: cv.Pipeline[int]) -> None:
    class NeedsArg:
        def __init__(self, url: str) -> None:
            self.url = url

        def process(self, item: int) -> int:
            return item

    with pytest.raises(TypeError, match="constructible with no arguments"):
        src.map(NeedsArg)


def test_unpicklable_process_stage(src: cv.Pipeline[int]) -> None:
    lock = threading.Lock()

    def locked(x: int) -> int:
        with lock:
            return x

    with pytest.raises(TypeError, match=r"cannot be sent to a worker process.*lock") as info:
        src.map(locked, kind="process", name="locked")
    assert "stage 'locked'" in str(info.value)
    assert "kind='thread'" in str(info.value)
    src.map(locked, kind="thread")  # fine on threads


def test_unpicklable_producer(src: cv.Pipeline[int]) -> None:
    lock = threading.Lock()

    def produce():  # type: ignore[no-untyped-def]
        with lock:
            yield 1

    with pytest.raises(TypeError, match="cannot be sent to a worker process"):
        cv.Pipeline().source(produce, kind="process")


def test_source_rules() -> None:
    with pytest.raises(TypeError, match="iterable or producer"):
        cv.Pipeline().source(42)
    with pytest.raises(TypeError, match="needs an iterable"):
        cv.Pipeline().source()
    with pytest.raises(ValueError, match="already has a source"):
        cv.Pipeline().source([1]).source([2])
    with pytest.raises(ValueError, match="kind applies to producer functions"):
        cv.Pipeline().source([1], kind="process")
    with pytest.raises(ValueError, match="add a source before"):
        cv.Pipeline().map(ident)


def test_nothing_after_a_sink(src: cv.Pipeline[int]) -> None:
    with pytest.raises(ValueError, match="ends with sink"):
        src.sink(ident).map(ident)


def test_empty_pipeline_cannot_run() -> None:
    with pytest.raises(ValueError, match="empty pipeline"):
        cv.Pipeline().run()


def test_bad_grace(src: cv.Pipeline[int]) -> None:
    with pytest.raises(ValueError, match="grace"):
        src.run(grace=-1)


def test_bad_option_types(src: cv.Pipeline[int]) -> None:
    with pytest.raises(TypeError, match="ordered must be True or False"):
        src.map(ident, ordered="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="name must be"):
        src.map(ident, name="")


def test_nothing_starts_when_validation_fails(src: cv.Pipeline[int]) -> None:
    before = threading.active_count()
    with pytest.raises(ValueError, match="workers"):
        src.map(ident).map(ident, workers=0)
    assert threading.active_count() == before


def test_classes_used_as_functions(kind: str) -> None:
    assert list(cv.Pipeline().source(["1", "2"]).map(int, kind=kind)) == [1, 2]
    assert list(cv.Pipeline().source([1, 2]).map(str, kind=kind).map(str.upper)) == ["1", "2"]
