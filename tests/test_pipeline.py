"""What a pipeline computes, on every worker kind."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

import conveyor as cv
from conveyor.testing import wait_worker_state
from tests.helpers import mark, marks_named


def double(x: int) -> int:
    return x * 2


def jitter(x: int) -> int:
    # uneven item costs, so that workers finish out of order
    time.sleep(0.0005 * ((x * 7) % 5))
    return x


def test_map_filter_flat_map(kind: str) -> None:
    p = (
        cv.Pipeline()
        .source(range(200))
        .map(double, workers=3, kind=kind)
        .filter(lambda x: x % 3 == 0, workers=2, kind=kind)
        .flat_map(lambda x: [x, -x], workers=2, kind=kind)
    )
    expected = [y for x in range(200) if (2 * x) % 3 == 0 for y in (2 * x, -2 * x)]
    assert list(p) == expected


def test_lambdas_and_closures(kind: str) -> None:
    offset = 1000

    def add_offset(x: int) -> int:
        return x + offset

    p = cv.Pipeline().source(range(50)).map(lambda x: x * 3, kind=kind).map(add_offset, kind=kind)
    assert list(p) == [x * 3 + offset for x in range(50)]


@pytest.mark.parametrize("workers", [1, 4])
def test_ordered_output_despite_uneven_items(kind: str, workers: int) -> None:
    p = cv.Pipeline().source(range(300)).map(jitter, workers=workers, kind=kind)
    assert list(p) == list(range(300))


def test_unordered_output_has_everything(kind: str) -> None:
    p = cv.Pipeline().source(range(300)).map(jitter, workers=4, kind=kind, ordered=False)
    assert sorted(p) == list(range(300))


def test_large_input_in_order(kind: str) -> None:
    n = 200_000
    out = list(cv.Pipeline().source(range(n)).map(double, workers=2, kind=kind))
    assert out == [2 * x for x in range(n)]


def test_flat_map_generator_streams(kind: str) -> None:
    def expand(n: int):  # type: ignore[no-untyped-def]
        yield from range(n)

    out = list(cv.Pipeline().source([3, 0, 2, 5]).flat_map(expand, workers=2, kind=kind))
    assert out == [0, 1, 2, 0, 1, 0, 1, 2, 3, 4]


def test_flat_map_of_a_huge_expansion_stays_bounded(kind: str) -> None:
    # one item expands to 300k outputs; the output must stream, not pile up
    def expand(n: int):  # type: ignore[no-untyped-def]
        yield from range(n)

    total = 0
    count = 0
    for x in cv.Pipeline().source([300_000]).flat_map(expand, kind=kind):
        total += x
        count += 1
    assert count == 300_000
    assert total == sum(range(300_000))


def test_sink_consumes_everything(kind: str, marks: Path) -> None:
    d = str(marks)
    run = (
        cv.Pipeline()
        .source(range(40))
        .sink(lambda x: mark(d, f"item-{x}"), workers=3, kind=kind)
        .run()
    )
    assert list(run) == []
    run.wait()
    assert len(marks_named(marks, "item-")) == 40
    assert run.stats()["sink"].items_out == 40


def test_source_producers_end_by_themselves(kind: str) -> None:
    def make(name: str, n: int):  # type: ignore[no-untyped-def]
        def produce():  # type: ignore[no-untyped-def]
            for i in range(n):
                yield f"{name}{i}"

        return produce

    p = cv.Pipeline().source(make("a", 5), make("b", 7), make("c", 3), kind=kind).map(str.upper)
    out = list(p)
    assert sorted(out) == sorted(
        [f"A{i}" for i in range(5)] + [f"B{i}" for i in range(7)] + [f"C{i}" for i in range(3)]
    )
    for name, n in (("A", 5), ("B", 7), ("C", 3)):  # each producer's items keep their order
        assert [x for x in out if x[0] == name] == [f"{name}{i}" for i in range(n)]


def test_producer_returning_a_list(kind: str) -> None:
    p = cv.Pipeline().source(lambda: [1, 2, 3], kind=kind).map(double)
    assert list(p) == [2, 4, 6]


def test_bare_source_passes_items_through() -> None:
    assert list(cv.Pipeline().source(iter("abc"))) == ["a", "b", "c"]


def test_empty_source(kind: str) -> None:
    assert list(cv.Pipeline().source([]).map(double, kind=kind, workers=2)) == []


def test_pipeline_is_reusable_and_immutable(kind: str) -> None:
    base = cv.Pipeline("p").source(range(5))
    a = base.map(double, kind=kind)
    b = base.map(lambda x: x + 1, kind=kind)
    assert list(a) == [0, 2, 4, 6, 8]
    assert list(b) == [1, 2, 3, 4, 5]
    assert list(a) == [0, 2, 4, 6, 8]  # runs again
    assert base.stages == ("source",)
    assert a.stages == ("source", "double")
    assert "double" in repr(a)


def test_stage_names_are_unique() -> None:
    p = cv.Pipeline().source([1]).map(double).map(double).map(lambda x: x).map(lambda x: x)
    assert p.stages == ("source", "double", "double_2", "map", "map_2")
    with pytest.raises(ValueError, match="already used"):
        p.map(double, name="double")


class Counter:
    """A stage class: one instance per worker, setup/teardown once each."""

    directory = ""

    def setup(self) -> None:
        self.me = cv.current_worker().name
        self.n = 0
        mark(self.directory, f"setup-{self.me}")

    def process(self, item: int) -> tuple[str, int]:
        self.n += 1
        return self.me, item

    def teardown(self) -> None:
        mark(self.directory, f"teardown-{self.me}-{self.n}")


def test_stage_class_setup_and_teardown_once_per_worker(kind: str, marks: Path) -> None:
    cls = type("Counter", (Counter,), {"directory": str(marks)})
    out = list(cv.Pipeline().source(range(100)).map(cls, workers=3, kind=kind, name="count"))
    assert [item for _, item in out] == list(range(100))
    setups = marks_named(marks, "setup-")
    assert setups == ["setup-count-1", "setup-count-2", "setup-count-3"]
    teardowns = marks_named(marks, "teardown-")
    assert len(teardowns) == 3
    assert sum(int(t.rsplit("-", 1)[1]) for t in teardowns) == 100


class Failing(Counter):
    def process(self, item: int) -> tuple[str, int]:
        if item == 7:
            raise ValueError("seven")
        return super().process(item)


def test_teardown_runs_after_process_raised(kind: str, marks: Path) -> None:
    cls = type("Failing", (Failing,), {"directory": str(marks)})
    with pytest.raises(cv.StageError, match="seven"):
        list(cv.Pipeline().source(range(20)).map(cls, workers=2, kind=kind, name="f"))
    assert len(marks_named(marks, "setup-")) == 2
    assert len(marks_named(marks, "teardown-")) == 2


class Scaler:
    def __init__(self) -> None:
        self.factor = 10

    def process(self, item: int) -> int:
        return item * self.factor


def test_stage_instance_is_copied_per_worker(kind: str) -> None:
    s = Scaler()
    s.factor = 3
    assert list(cv.Pipeline().source(range(5)).map(s, workers=2, kind=kind)) == [0, 3, 6, 9, 12]


def whoami(_: object) -> tuple[str, str, int, str, int]:
    w = cv.current_worker()
    return w.name, w.stage, w.index, w.kind, os.getpid()


def test_current_worker(kind: str) -> None:
    out = list(cv.Pipeline().source(range(40)).map(whoami, workers=2, kind=kind, name="parse"))
    names = {o[0] for o in out}
    assert names <= {"parse-1", "parse-2"}
    assert {o[1] for o in out} == {"parse"}
    assert {o[3] for o in out} == {kind}
    for name, _, index, _, _ in out:
        assert name == f"parse-{index}"
    pids = {o[4] for o in out}
    if kind == "thread":
        assert pids == {os.getpid()}
    else:
        assert os.getpid() not in pids


def test_current_worker_outside_a_worker() -> None:
    with pytest.raises(RuntimeError, match="outside a conveyor worker"):
        cv.current_worker()


def test_stats_count_items(kind: str) -> None:
    run = (
        cv.Pipeline("counts")
        .source(range(100))
        .map(double, workers=2, kind=kind)
        .filter(lambda x: x % 4 == 0, kind=kind, name="quarter")
        .run()
    )
    assert len(list(run)) == 50
    st = run.stats()
    assert st.state == "finished"
    assert [s.name for s in st] == ["source", "double", "quarter"]
    assert st["source"].items_out == 100
    assert (st["double"].items_in, st["double"].items_out, st["double"].failed) == (100, 100, 0)
    assert (st["quarter"].items_in, st["quarter"].items_out) == (100, 50)
    assert st["double"].kind == kind
    assert st["double"].workers == 2
    assert st["double"].busy_seconds >= 0
    assert "quarter" in st.render()


def test_workers_report(kind: str) -> None:
    run = cv.Pipeline().source(range(30)).map(double, workers=3, kind=kind, name="w").run()
    run.wait()
    ws = {w.name: w for w in run.workers()}
    assert set(ws) == {"source-1", "w-1", "w-2", "w-3"}
    assert sum(ws[f"w-{i}"].items_done for i in (1, 2, 3)) == 30
    for i in (1, 2, 3):
        w = ws[f"w-{i}"]
        assert (w.stage, w.index, w.kind, w.alive, w.state) == ("w", i, kind, False, "done")
        assert w.pid is not None
        assert w.thread_id is not None
        if kind == "process":
            assert w.pid != os.getpid()
        else:
            assert w.pid == os.getpid()


def test_workers_are_alive_while_running(kind: str, gate) -> None:  # type: ignore[no-untyped-def]
    def hold(x: int) -> int:
        gate.wait()
        return x

    run = cv.Pipeline().source(range(4)).map(hold, workers=2, kind=kind, name="hold").run()
    try:
        wait_worker_state(run, "hold-1", "busy")
        wait_worker_state(run, "hold-2", "busy")
        alive = {w.name: w.alive for w in run.workers()}
        assert alive["hold-1"]
        assert alive["hold-2"]
        assert run.state == "running"
        assert not run.done()
    finally:
        gate.open()
    assert list(run) == [0, 1, 2, 3]
    assert not any(w.alive for w in run.workers())
    assert run.done()


def test_run_as_context_manager(kind: str) -> None:
    with cv.Pipeline().source(range(10)).map(double, kind=kind).run() as run:
        got = list(run)
    assert got == [2 * x for x in range(10)]
    assert run.state == "finished"


def test_wait_drains_outputs_nobody_reads(kind: str) -> None:
    run = cv.Pipeline().source(range(5000)).map(double, workers=2, kind=kind).run()
    run.wait()
    assert run.stats()["double"].items_out == 5000


def test_wait_timeout(kind: str, gate) -> None:  # type: ignore[no-untyped-def]
    run = cv.Pipeline().source([1]).map(lambda x: gate.wait(), kind=kind).run()
    with pytest.raises(TimeoutError):
        run.wait(timeout=0.05)
    gate.open()
    run.wait()


def test_many_threads() -> None:
    seen: set[str] = set()
    lock = threading.Lock()

    def note(x: int) -> int:
        with lock:
            seen.add(cv.current_worker().name)
        time.sleep(0.001)
        return x

    out = list(cv.Pipeline().source(range(400)).map(note, workers=32))
    assert out == list(range(400))
    assert len(seen) > 1


def test_fixed_batch_size(kind: str) -> None:
    run = cv.Pipeline().source(range(100)).map(double, kind=kind, batch_size=7, name="b").run()
    assert list(run) == [2 * x for x in range(100)]
    stage = run._run._stages[0]  # white box: the engine kept the size it was given
    assert stage.batch_size() == 7
    assert run.stats()["b"].queue_maxsize >= 7


def test_batch_size_validation() -> None:
    p = cv.Pipeline().source([1])
    with pytest.raises(ValueError, match="batch_size must be"):
        p.map(double, batch_size=0)
    with pytest.raises(ValueError, match=r"batch_size \(8\) cannot be larger than maxsize \(4\)"):
        p.map(double, batch_size=8, maxsize=4)
