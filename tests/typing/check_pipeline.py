"""Type-checked by mypy (see pyproject.toml), never run: the types users see."""

from __future__ import annotations

from typing import TYPE_CHECKING

import conveyor as cv

if TYPE_CHECKING:
    from typing_extensions import assert_type


def parse(line: str) -> int:
    return len(line)


class Scale:
    def setup(self) -> None:
        self.k = 2.0

    def process(self, item: int) -> float:
        return item * self.k


def words(line: str) -> list[str]:
    return line.split()


def check() -> None:
    lines = cv.Pipeline("t").source(["a b", "c"])
    counts = lines.map(parse, workers=2, kind="process")
    assert_type(counts, cv.Pipeline[int])
    scaled = counts.map(Scale)
    assert_type(scaled, cv.Pipeline[float])
    assert_type(counts.filter(lambda n: n > 1), cv.Pipeline[int])
    assert_type(lines.flat_map(words), cv.Pipeline[str])
    assert_type(list(scaled), list[float])
    run = scaled.run()
    assert_type(run, cv.Run[float])
    for x in run:
        assert_type(x, float)
    assert_type(run.stats(), cv.RunStats)
    assert_type(run.workers(), list[cv.WorkerStatus])
    assert_type(cv.current_worker().name, str)
    ch: cv.Channel[int] = cv.Channel(3)
    assert_type(ch.get(), int)
    assert_type(ch.get_many(4), list[int])
